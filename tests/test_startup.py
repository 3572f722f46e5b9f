"""Start-up cost (timings: benchmarks/import_time.py): ``import torch_isda`` imports nothing
heavy until a name is used, the core does not import ``torch._dynamo``, and ``isda --help``
imports neither torch nor the training harness."""

from __future__ import annotations

import subprocess
import sys

from torch_isda.cli import program as cli


def _imported(code: str, modules) -> list:
    probe = f"{code}\nimport sys\nprint([m for m in {list(modules)!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return eval(proc.stdout.strip().splitlines()[-1])


def test_import_does_not_load_dynamo():
    assert _imported("import torch_isda\nfrom torch_isda import ISDALoss, SegmentationISDALoss, attach",
                     ["torch._dynamo"]) == []
    assert _imported("import torch_isda", ["torch"]) == []  # names load on first use


def test_public_names_load_on_first_use():
    import torch_isda

    for name in torch_isda.__all__:
        assert getattr(torch_isda, name) is not None
    assert torch_isda.ISDALoss.__module__ == "torch_isda.loss"
    assert torch_isda.functional.augment_logits is not None
    assert set(torch_isda.__all__) <= set(dir(torch_isda))
    try:
        torch_isda.no_such_name
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("no AttributeError")


def test_isda_help_imports_no_command_module():
    code = ("import contextlib, io\nfrom torch_isda.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass")
    heavy = ["torch", "torch._dynamo", "torch_isda.train", "torch_isda.visualize", "torch_isda.analysis",
             "torch_isda.cli.list", "torch_isda.cli.export", "torch_isda.cli.gan"]
    assert _imported(code, heavy) == []


def test_lazy_help_lists_what_the_modules_say():
    """The one-line summaries shown without importing equal each module's own help line."""
    assert cli.build_parser(only="").format_help() == cli.build_parser().format_help()
    assert set(cli.SUMMARIES) == {name for name, _ in cli.COMMANDS}


def test_chosen_command():
    assert cli.chosen_command(["--debug", "train", "--epochs", "1"]) == "train"
    assert cli.chosen_command(["--help"]) == "" and cli.chosen_command([]) == ""
    assert cli.chosen_command(["nonsense", "train"]) == ""
