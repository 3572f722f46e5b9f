"""Figures and text of short comparisons: ``curves.png`` of 1- and 2-epoch runs shows every
point, the compare log says which time is which, and "1 epoch" is singular."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("matplotlib")

from torch_isda.cli import main  # noqa: E402
from torch_isda.train import TrainConfig  # noqa: E402
from torch_isda.train import tables as tables_module  # noqa: E402
from torch_isda.train.tables import MethodSummary, plot_curves, render_table  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """The axes of the figures plot_curves saves: (xlim, ylim, [(xdata, ydata, marker)])."""
    seen = []
    real = tables_module.save_figure

    def capture(fig, path):
        ax = fig.axes[0]
        lines = [(list(line.get_xdata()), list(line.get_ydata()), line.get_marker())
                 for line in ax.get_lines()]
        seen.append((ax.get_xlim(), ax.get_ylim(), lines))
        return real(fig, path)

    monkeypatch.setattr(tables_module, "save_figure", capture)
    return seen


def _methods(curves_per_method):
    return [MethodSummary(loss, [0, 1], [c[-1] for c in curves], [min(c) for c in curves], 10,
                          curves=curves) for loss, curves in curves_per_method.items()]


def test_one_epoch_curves_show_a_marker_in_view(tmp_path, drawn):
    methods = _methods({"ce": [[40.0], [42.0]], "isda": [[38.0], [39.0]]})
    plot_curves(tmp_path / "curves.png", methods, TrainConfig(epochs=1))
    (xlim, ylim, lines), = drawn
    assert xlim[0] < 1 < xlim[1] and xlim[1] - xlim[0] >= 0.9
    data = [line for line in lines if line[0] == [1]]
    assert len(data) == 2 and all(marker not in (None, "None", "") for _, _, marker in data)
    assert ylim[0] <= 38.0 and ylim[1] >= 42.0


def test_two_epoch_curves_keep_the_first_epoch_in_view(tmp_path, drawn):
    methods = _methods({"ce": [[77.0, 60.0], [75.0, 62.0]], "isda": [[74.0, 58.0], [76.0, 57.0]]})
    plot_curves(tmp_path / "curves.png", methods, TrainConfig(epochs=2))
    (xlim, ylim, lines), = drawn
    assert xlim[0] < 1 and xlim[1] > 2
    tops = [max(y) for x, y, _ in lines if x == [1, 2]]
    assert tops and ylim[1] >= max(tops) >= 76.0


def test_long_curves_still_zoom_past_the_first_epochs(tmp_path, drawn):
    curve = [90.0] + [30.0 - i for i in range(19)]
    plot_curves(tmp_path / "curves.png", _methods({"ce": [curve, curve]}), TrainConfig(epochs=20))
    (_, ylim, lines), = drawn
    assert ylim[1] < 40 and all(marker in (None, "None", "") for *_, marker in lines)


def test_table_text_says_1_epoch():
    methods = _methods({"ce": [[40.0], [42.0]], "isda": [[38.0], [39.0]]})
    text = render_table(methods, TrainConfig(epochs=1))
    assert "1 epoch," in text and "1 epochs" not in text and "last 1 epochs" not in text
    assert "2 epochs," in render_table(methods, TrainConfig(epochs=2))


def test_compare_log_says_which_time_is_which(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--losses", "ce", "--seeds", "1", "--epochs", "1",
                 "--model-kwargs", "width=4", "--out", "cmp"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "cmp" / "ce" / "seed0" / "result.json").read_text())
    match = re.search(r"trained in ([\d.]+)s wall \(([\d.]+)s in epochs\)", printed)
    assert match, printed
    assert float(match.group(2)) == pytest.approx(result["train_seconds"], abs=0.051)
    assert float(match.group(1)) >= float(match.group(2))
    assert "1 epochs" not in printed and "1 epochs" not in (tmp_path / "cmp" / "table.md").read_text()
    assert main(["compare", "--losses", "ce", "--seeds", "1", "--epochs", "1",
                 "--model-kwargs", "width=4", "--out", "cmp"]) == 0
    again = capsys.readouterr().out
    assert re.search(r"reused in [\d.]+s", again) and "wall" not in again.split("reused in")[1][:20]
