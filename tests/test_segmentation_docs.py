"""The tiny segmentation setting of docs/segmentation.md learns more than the background."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from torch_isda.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "segmentation.md"


def test_documented_tiny_setting_predicts_every_class(tmp_path, capsys):
    line = next(l for l in DOC.read_text().splitlines()
                if l.startswith("isda compare --dataset synthetic_segmentation")
                and "color_prior=1" in l)
    argv = shlex.split(line)[1:]
    out = tmp_path / "tiny"
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "single class" not in captured.err and "Warning" not in captured.out
    for loss in ("ce", "isda"):
        result = json.loads((out / loss / "seed0" / "result.json").read_text())
        assert result["predicted_classes"] >= 3  # more than the background and one shape
        assert result["miou_single"] > 30.0  # well above the ~20% of background-only
