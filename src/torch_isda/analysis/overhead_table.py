"""The markdown of ``isda bench overhead`` laid out like the paper's tables.

* Table 3 (CIFAR, full covariance): one row per network, CIFAR-10 and CIFAR-100 side by
  side, each with ISDA's extra FLOPs, the relative extra cost and the wall-time overhead;
  the paper's values follow ours in brackets.
* Table 1 (ImageNet, diagonal covariance): the same columns for the ImageNet networks.
* Other models (e.g. ``digits_cnn`` on digits), then the measured training steps (batch,
  CE and ISDA step times, the paired spread) of the timed rows only.

Columns whose every cell is empty ("-") are left out. ``rows`` are the dicts built by
:func:`torch_isda.analysis.overhead.run_overhead` (``case``, the theoretical counts, and
``timing`` for timed rows); ``paper(case)`` gives ``(extra MACs, relative %, wall %)``;
the formatting functions are passed in by :mod:`torch_isda.analysis.overhead`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

__all__ = ["drop_empty_columns", "render_overhead_markdown"]

EMPTY = "-"


def drop_empty_columns(headers: list[str], rows: list[list[str]], keep: int = 1
                       ) -> tuple[list[str], list[list[str]]]:
    """Remove the columns (after the first ``keep``) whose every cell is :data:`EMPTY`."""
    cols = [j for j in range(len(headers))
            if j < keep or any(str(r[j]) != EMPTY for r in rows)]
    return [headers[j] for j in cols], [[r[j] for j in cols] for r in rows]


def _markdown(headers: list[str], rows: list[list[str]]) -> list[str]:
    headers, rows = drop_empty_columns(headers, rows)
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]


def _with_paper(ours: str, paper: Optional[str]) -> str:
    if paper is None:
        return ours
    return f"{ours} ({paper})" if ours != EMPTY else f"{EMPTY} ({paper})"


def render_overhead_markdown(rows: Sequence[dict[str, Any]], caption: str, notes: str,
                             paper: Callable[[Any], tuple], fmt_m: Callable[[float], str],
                             fmt_count: Callable[[float], str],
                             fmt_seconds: Callable[[float], str],
                             spread: Callable[[dict], tuple[float, float]]) -> str:
    """The whole ``overhead.md`` (see the module docstring); ``spread(timing)`` gives the
    quartiles of the paired step-time ratios."""

    def cells(r: dict[str, Any]) -> list[str]:
        return _paper_cells(r, paper, fmt_m)

    cifar: dict[str, dict[int, dict[str, Any]]] = {}
    imagenet, other = [], []
    for r in rows:
        case = r["case"]
        if case.dataset in ("cifar10", "cifar100"):
            cifar.setdefault(case.model, {})[case.num_classes] = r
        elif case.dataset == "imagenet":
            imagenet.append(r)
        else:
            other.append(r)
    lines = [caption, ""]
    if cifar:
        lines += _cifar_table(cifar, cells, fmt_count)
    if imagenet:
        headers = ["Network", "A", "Standard FLOPs", "ISDA extra FLOPs", "relative",
                   "wall time"]
        body = [[r["case"].model, str(r["num_features"]), fmt_count(r["forward_macs"]),
                 *cells(r)] for r in imagenet]
        lines += ["**Table 1 (ImageNet, 224×224, 1000 classes, diagonal covariance)**", "",
                  *_markdown(headers, body), ""]
    if other:
        headers = ["Network", "dataset", "input", "C", "A", "Standard FLOPs",
                   "ISDA extra FLOPs", "relative", "wall time"]
        body = [[r["case"].model, r["case"].dataset, "×".join(map(str, r["case"].input_size)),
                 str(r["case"].num_classes), str(r["num_features"]),
                 fmt_count(r["forward_macs"]), *cells(r)] for r in other]
        lines += ["**Other models (not in the paper)**", "", *_markdown(headers, body), ""]
    timed = [r for r in rows if r.get("timing")]
    if timed:
        lines += _timing_table(timed, fmt_seconds, spread)
    if notes:
        lines += [notes]
    return "\n".join(lines).rstrip("\n") + "\n"


def _paper_cells(r: dict[str, Any], paper: Callable[[Any], tuple],
                 fmt_m: Callable[[float], str]) -> list[str]:
    """Extra FLOPs, relative and wall-time overhead of a row, each with the paper's value."""
    p_extra, p_rel, p_wall = paper(r["case"])
    t = r.get("timing")
    wall = EMPTY if t is None else f"{100 * t['overhead']:+.1f}%"
    return [_with_paper(fmt_m(r["extra_total"]), None if p_extra is None else fmt_m(p_extra)),
            _with_paper(f"{100 * r['relative']:.2f}%",
                        None if p_rel is None else f"{p_rel:.2f}%"),
            _with_paper(wall, None if p_wall is None else f"{p_wall:.2f}%")]


def _cifar_table(cifar: dict[str, dict[int, dict[str, Any]]],
                 cells: Callable[[dict[str, Any]], list[str]],
                 fmt_count: Callable[[float], str]) -> list[str]:
    """Table 3's layout: one row per network, CIFAR-10 and CIFAR-100 side by side."""
    headers = ["Network", "A", "Standard FLOPs"]
    for c in (10, 100):
        headers += [f"CIFAR-{c}: ISDA extra FLOPs", f"CIFAR-{c}: relative",
                    f"CIFAR-{c}: wall time"]
    body = []
    for model, by_c in cifar.items():
        first = next(iter(by_c.values()))
        row = [model, str(first["num_features"]), fmt_count(first["forward_macs"])]
        for c in (10, 100):
            row += cells(by_c[c]) if c in by_c else [EMPTY] * 3
        body.append(row)
    return ["**Table 3 (CIFAR, full covariance)**", "", *_markdown(headers, body), ""]


def _timing_table(timed: list[dict[str, Any]], fmt_seconds: Callable[[float], str],
                  spread: Callable[[dict], tuple[float, float]]) -> list[str]:
    """The measured CE and ISDA training steps."""
    headers = ["Network", "dataset", "C", "batch", "CE step", "ISDA step",
               "wall-time overhead", "paired IQR"]
    body = []
    for r in timed:
        t, (q25, q75) = r["timing"], spread(r["timing"])
        body.append([r["case"].model, r["case"].dataset, str(r["case"].num_classes),
                     str(t["batch_size"]), fmt_seconds(t["ce_seconds"]),
                     fmt_seconds(t["isda_seconds"]), f"{100 * t['overhead']:+.1f}%",
                     f"[{100 * q25:+.1f}%, {100 * q75:+.1f}%]"])
    return ["**Measured training steps**", "", *_markdown(headers, body), ""]
