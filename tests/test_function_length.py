"""No function over 60 lines in src/ (the project's quality bar), checked here for every
package outside ``train/`` and outside the core's top-level modules (both being reworked
by other issues; drop them from ``NOT_YET`` once they comply)."""

from __future__ import annotations

import ast
from pathlib import Path

import torch_isda

LIMIT = 60
ROOT = Path(torch_isda.__file__).parent
#: Parts still being reworked elsewhere: the harness's train/ and the core's top-level modules.
NOT_YET = ("train",)


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LIMIT]


def test_no_function_over_60_lines_outside_train_and_the_core():
    checked = [p for p in sorted(ROOT.rglob("*.py"))
               if p.parent != ROOT and p.relative_to(ROOT).parts[0] not in NOT_YET]
    assert len(checked) > 50  # the sub-packages were found
    long = [entry for p in checked for entry in _long_functions(p)]
    assert long == []
