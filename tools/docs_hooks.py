"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks: [tools/docs_hooks.py]``).

* ``index.md`` is the repository's ``README.md`` (``docs/index.md`` is a placeholder), with
  its ``docs/...`` links rewritten to the site's pages, so the README stays the one source
  of the landing page;
* links from a page to a repository file outside ``docs/`` (``src/...``, ``benchmarks/...``)
  have no page on the site: they become the file's path in code font instead of a dead link
  (links to missing files are left alone, so ``mkdocs build --strict`` still reports them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


def _root(config: Any) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _rewrite_links(markdown: str, page_dir: Path, docs_dir: Path, root: Path,
                   docs_prefix: bool) -> str:
    def fix(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        if docs_prefix and path.startswith("docs/"):
            return f"[{text}]({path[len('docs/'):]}{'#' + anchor if anchor else ''})"
        resolved = (page_dir / path).resolve()
        inside_docs = docs_dir == resolved or docs_dir in resolved.parents
        if inside_docs or not resolved.exists() or root not in resolved.parents:
            return match.group(0)
        rel = resolved.relative_to(root).as_posix()
        plain = text.strip("`")
        return f"`{rel}`" if plain in (rel, path, os.path.basename(rel)) else f"{text} (`{rel}`)"

    out, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(fix, line))
    return "".join(out)


def on_page_read_source(page: Any, config: Any) -> str | None:
    if page.file.src_uri != "index.md":
        return None
    readme = _root(config) / "README.md"
    return readme.read_text(encoding="utf-8")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    root = _root(config)
    docs_dir = Path(config["docs_dir"]).resolve()
    if page.file.src_uri == "index.md":  # README.md, relative to the repository root
        return _rewrite_links(markdown, root, docs_dir, root, docs_prefix=True)
    page_dir = (docs_dir / page.file.src_uri).parent
    return _rewrite_links(markdown, page_dir, docs_dir, root, docs_prefix=False)
