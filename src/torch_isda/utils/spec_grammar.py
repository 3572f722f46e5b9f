"""The grammar of ``'+'``-joined specs such as ``"isda(lambda0=0.75)+dropout"`` (criteria,
``--loss``) and ``"crop(padding=1)+cutout(size=4)"`` (augmentations, ``--augment``)::

    spec  := term ('+' term)*
    term  := name | name '(' [item (',' item)*] ')'
    item  := key '=' value
    name  := [A-Za-z_][A-Za-z0-9_]*

Separators inside brackets (``()``, ``[]``, ``{}``) do not split, so a value may be a
tuple or a list: ``a(b=(1, 2))``. Turning a value's text into a Python value is left to
the caller (criteria and augmentations accept different values).
"""

from __future__ import annotations

import re
from typing import Optional

__all__ = ["TERM_PATTERN", "key_value_items", "match_term", "split_top_level"]

#: One term: group 1 is the name, group 2 the text between its parentheses (``None``
#: without parentheses).
TERM_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)


def split_top_level(text: str, sep: str, what: str = "criterion spec") -> list[str]:
    """``text`` split at the ``sep`` outside brackets; ``ValueError`` ("unbalanced
    parentheses in <what> ...") if the brackets do not balance."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced parentheses in {what} {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in {what} {text!r}")
    parts.append("".join(current))
    return parts


def match_term(raw: str) -> Optional[tuple[str, Optional[str]]]:
    """``(name, argument text or None)`` of one term, or ``None`` if it is not a term."""
    match = TERM_PATTERN.match(raw)
    return (match.group(1), match.group(2)) if match else None


def key_value_items(arg_text: str, spec: str, what: str, spec_what: str = "criterion spec"
                    ) -> list[tuple[str, str]]:
    """The ``(key, value text)`` pairs of a term's argument text, both stripped (empty
    items are skipped). ``ValueError``: "<what> must be key=value; got ... in <spec>" for an
    item without ``=``, "unbalanced parentheses in <spec_what> ..." (:func:`split_top_level`)."""
    items = []
    for item in split_top_level(arg_text, ",", spec_what):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"{what} must be key=value; got {item.strip()!r} in {spec!r}")
        key, value = item.split("=", 1)
        items.append((key.strip(), value.strip()))
    return items
