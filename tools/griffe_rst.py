"""Griffe extension for the documentation site: the package's docstrings are written in
Google style with a few reStructuredText habits; this turns those into Markdown before
mkdocstrings renders them.

* roles: ``:class:`~torch_isda.ISDALoss``` -> ```ISDALoss``` (``~`` keeps the last
  component; ``:meth:`title <target>``` keeps the title);
* literal blocks: a paragraph ending in ``::`` ends in ``:`` (the indented block after
  it is already a Markdown code block);
* simple tables (``=====  =====`` borders) -> Markdown tables (continuation lines, whose
  first column is empty, are joined to the row above).

Used by ``mkdocs.yml`` (``extensions: [tools/griffe_rst.py]``); :func:`rst_to_markdown`
is plain text in, text out (tested in ``tests/test_docs.py``).
"""

from __future__ import annotations

import re
from typing import Any

try:
    import griffe
except ImportError:  # pragma: no cover - only the mkdocs build imports the extension
    griffe = None

__all__ = ["RstToMarkdown", "rst_to_markdown"]

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const|ref|term):"
                   r"`([^`]+)`")
_BORDER = re.compile(r"^(\s*)(=+)((?: +=+)+)\s*$")


def _role(match: re.Match) -> str:
    text = match.group(1).strip()
    title = re.match(r"^(.*?)\s*<([^>]+)>$", text)
    if title and title.group(1):
        return f"`{title.group(1)}`"
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return f"`{text}`"


def _columns(border: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", border)]


def _cells(line: str, columns: list[tuple[int, int]]) -> list[str]:
    cells = []
    for i, (start, _end) in enumerate(columns):
        stop = columns[i + 1][0] if i + 1 < len(columns) else len(line)
        cells.append(line[start:stop].strip())
    return cells


def _convert_tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _BORDER.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        # a table: border, header row(s), border, body rows, border
        columns = _columns(lines[i])
        borders = [i]
        j = i + 1
        while j < len(lines) and len(borders) < 3:
            if _BORDER.match(lines[j]):
                borders.append(j)
            elif not lines[j].strip():
                break
            j += 1
        if len(borders) == 2:  # a table without header: border, rows, border
            header_rows, body = [], lines[borders[0] + 1:borders[1]]
        elif len(borders) == 3:
            header_rows = lines[borders[0] + 1:borders[1]]
            body = lines[borders[1] + 1:borders[2]]
        else:  # not a table after all
            out.append(lines[i])
            i += 1
            continue
        rows: list[list[str]] = []
        for line in body:
            cells = _cells(line, columns)
            if rows and not cells[0]:
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
            else:
                rows.append(cells)
        header = [" ".join(parts).strip() for parts in
                  zip(*(_cells(h, columns) for h in header_rows))] or ["" for _ in columns]
        indent = match.group(1)
        if out and out[-1].strip():
            out.append("")
        out.append(indent + "| " + " | ".join(c.replace("|", "\\|") for c in header) + " |")
        out.append(indent + "|" + "|".join("---" for _ in columns) + "|")
        for row in rows:
            out.append(indent + "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        out.append("")
        i = borders[-1] + 1
    return out


def rst_to_markdown(text: str) -> str:
    """Convert the reST habits of this package's docstrings to Markdown."""
    lines = [_ROLE.sub(_role, line) for line in _convert_tables(text.splitlines())]
    fixed = []
    for k, line in enumerate(lines):
        nxt = lines[k + 1] if k + 1 < len(lines) else ""
        if line.rstrip().endswith("::") and not nxt.strip():
            stripped = line.rstrip()[:-2].rstrip()
            line = stripped + ":" if stripped.strip() else ""
        fixed.append(line)
    return "\n".join(fixed)


if griffe is not None:

    class RstToMarkdown(griffe.Extension):
        """Rewrite every docstring with :func:`rst_to_markdown`."""

        def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
            if getattr(obj, "docstring", None) is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value)
