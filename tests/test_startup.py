"""Start-up cost: ``import torch_isda`` does not import ``torch._dynamo``; ``isda --help``
imports neither the training harness nor dynamo (timings: benchmarks/import_time.py)."""

from __future__ import annotations

import subprocess
import sys

from torch_isda import cli


def _imported(code: str, modules) -> list:
    probe = f"{code}\nimport sys\nprint([m for m in {list(modules)!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return eval(proc.stdout.strip().splitlines()[-1])


def test_import_does_not_load_dynamo():
    assert _imported("import torch_isda\nfrom torch_isda import ISDALoss, SegmentationISDALoss, attach",
                     ["torch._dynamo"]) == []


def test_isda_help_imports_no_command_module():
    code = ("import contextlib, io\nfrom torch_isda.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass")
    heavy = ["torch._dynamo", "torch_isda.train", "torch_isda.visualize", "torch_isda.analysis",
             "torch_isda.command_list", "torch_isda.command_export"]
    assert _imported(code, heavy) == []


def test_lazy_help_lists_what_the_modules_say():
    """The one-line summaries shown without importing equal each module's own help line."""
    assert cli.build_parser(only="").format_help() == cli.build_parser().format_help()
    assert set(cli.SUMMARIES) == {name for name, _ in cli.COMMANDS}


def test_chosen_command():
    assert cli.chosen_command(["--debug", "train", "--epochs", "1"]) == "train"
    assert cli.chosen_command(["--help"]) == "" and cli.chosen_command([]) == ""
    assert cli.chosen_command(["nonsense", "train"]) == ""
