"""No function over 60 lines in src/ (the project's quality bar, issue 25 item 6)."""

from __future__ import annotations

import ast
from pathlib import Path

import torch_isda

LIMIT = 60
ROOT = Path(torch_isda.__file__).parent


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LIMIT]


def test_no_function_over_60_lines():
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 100  # the package was found
    long = [entry for p in files for entry in _long_functions(p)]
    assert long == []
