"""The layout of issue 25: old import paths of moved modules still work, with a
DeprecationWarning, and give the module at its new path; the public face is unchanged."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import torch_isda
from torch_isda.moved_modules import MOVED_MODULES


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_path_warns_and_is_the_new_module(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED_MODULES[old]}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED_MODULES[old])
    assert module.__name__ == MOVED_MODULES[old]


def test_from_import_of_an_old_path(recwarn):
    sys.modules.pop("torch_isda.sync_batchnorm", None)
    from torch_isda.sync_batchnorm import convert_sync_batchnorm
    from torch_isda.train.sync_batchnorm import convert_sync_batchnorm as new

    assert convert_sync_batchnorm is new
    assert any(issubclass(w.category, DeprecationWarning) for w in recwarn)


def test_unknown_names_still_fail():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("torch_isda.no_such_module")


def test_public_face_unchanged():
    for name in ("ISDALoss", "attach", "functional", "SegmentationISDALoss", "CovarianceEstimator"):
        assert hasattr(torch_isda, name)
    semi = importlib.import_module("torch_isda.semi")
    assert semi.VAT.__module__.startswith("torch_isda.semi.")
    assert importlib.import_module("torch_isda.integrations").__name__ == "torch_isda.integrations"


def test_top_level_modules_are_the_core():
    """The modules at the top of the package import only each other (and torch): the
    command line and the harness live in sub-packages (moved_modules only names them)."""
    import ast
    from pathlib import Path

    top = Path(torch_isda.__file__).parent
    modules = {p.stem for p in top.glob("*.py")}
    for path in top.glob("*.py"):
        if path.name == "moved_modules.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, (path.name, node.module)
                target = (node.module or "").split(".")[0]
                names = [target] if target else [a.name for a in node.names]
                assert all(n in modules for n in names), (path.name, node.module, names)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert not (mod or "").startswith("torch_isda."), (path.name, mod)


def test_python_m_torch_isda_cli_version():
    proc = subprocess.run([sys.executable, "-m", "torch_isda.cli", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "torch-isda" in proc.stdout, proc.stderr
