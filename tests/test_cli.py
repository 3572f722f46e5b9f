"""The ``isda`` command: version, subcommand registry, error messages."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from torch_isda import __version__
from torch_isda.cli import program as cli


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "train" in err and "compare" in err


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "cifar11"], "Unknown dataset 'cifar11'. Did you mean 'cifar10'?"),
    (["--model", "resnet33"], "Available models:"),
    (["--loss", "isda+nope"], "Unknown criterion 'nope'"),
    (["--loss", "ce+isda"], "2 primary losses"),
    (["--device", "cuda:7"], "CUDA is not available"),
])
def test_clear_errors(argv, message, tmp_path, capsys):
    if "--device" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA present")
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isda train: error:") and message in err


def test_missing_data_files_propagate(tmp_path, capsys):
    assert cli.main(["train", "--dataset", "cifar10", "--model", "resnet20", "--epochs", "1",
                     "--data-dir", str(tmp_path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cifar" in err.lower() and str(tmp_path) in err
    assert not (tmp_path / "r").exists()  # no empty run directory after a data error


def test_subcommand_extension_point(monkeypatch, capsys):
    calls = []
    mod = types.ModuleType("fake_isda_cmd")

    def add_parser(subparsers):
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--name", default="world")
        return p

    mod.add_parser = add_parser
    mod.run = lambda args: calls.append(args.name) or 0
    monkeypatch.setitem(sys.modules, "fake_isda_cmd", mod)
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, ("hello", "fake_isda_cmd"),
                                          ("broken", "no_such_module_for_isda")])
    assert cli.main(["hello", "--name", "isda"]) == 0 and calls == ["isda"]
    assert cli.main(["broken"]) == 2
    assert "unavailable" in capsys.readouterr().err


def test_python_m_torch_isda_train_help():
    proc = subprocess.run([sys.executable, "-m", "torch_isda.train", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: isda train" in proc.stdout and "--lambda0" in proc.stdout


def test_core_import_does_not_import_the_harness():
    code = ("import sys, torch_isda; "
            "bad = [m for m in ('torch_isda.train', 'torch_isda.cli', 'matplotlib') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
