"""``isda list [models|datasets|criteria|augmentations|presets|semi]``: what the commands accept.

Each entry is printed with a one-line description and its options (the keyword arguments
a spec such as ``isda(lambda0=0.75)`` or ``--model-kwargs`` may set). Without a category
every category is listed.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["CATEGORIES", "add_parser", "entries", "run"]

#: Parameters that are not user options (filled by the harness).
_HIDDEN = {"self", "num_features", "num_classes", "config", "model", "num_samples", "root",
           "download", "generator", "args", "kwargs", "in_channels", "class_counts"}


def _first_line(obj: Any) -> str:
    """The first sentence-paragraph of ``obj``'s docstring, on one line."""
    return " ".join((inspect.getdoc(obj) or "").strip().split("\n\n")[0].split())


def _options(fn: Callable[..., Any]) -> str:
    """``name=default`` of the user-settable parameters of ``fn``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ""
    shown = []
    for p in params:
        if p.name in _HIDDEN or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        shown.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(shown)


def _models() -> Iterator[tuple[str, str, str]]:
    from ..models import list_models, model_entrypoint

    for name in list_models():
        fn = model_entrypoint(name)
        yield name, _first_line(fn), _options(fn)


def _datasets() -> Iterator[tuple[str, str, str]]:
    from ..data import dataset_entrypoint, list_datasets

    for name in list_datasets():
        fn = dataset_entrypoint(name)
        yield name, _first_line(fn), _options(fn)


def _criteria() -> Iterator[tuple[str, str, str]]:
    from ..train.criteria import criterion_info, list_criteria

    for name in list_criteria():
        entry = criterion_info(name)
        target = entry.target.__init__ if isinstance(entry.target, type) else entry.target
        role = "primary loss" if entry.primary else "modifier"
        yield name, f"[{role}] {_first_line(entry.target)}", _options(target)


def _augmentations() -> Iterator[tuple[str, str, str]]:
    from ..data.augment import AUGMENTATIONS, TERM_OPTIONS

    for name, options in TERM_OPTIONS.items():
        kind = "base" if name in AUGMENTATIONS else "extra, joined with '+'"
        yield name, f"[{kind}] training augmentation term (--augment)", ", ".join(options)


def _presets() -> Iterator[tuple[str, str, str]]:
    from ..train.presets import PRESETS

    for name, p in sorted(PRESETS.items()):
        yield (name, f"{p.epochs} epochs, batch {p.batch_size}, lr {p.lr:g}, wd "
                     f"{p.weight_decay:g}, {p.describe_schedule()} ({p.source})", "")


def _semi() -> Iterator[tuple[str, str, str]]:
    from ..semi.methods import METHODS

    for name, cls in METHODS.items():
        yield name, _first_line(cls), _options(cls.__init__)


#: Category -> generator of ``(name, description, options)``.
CATEGORIES: dict[str, Callable[[], Iterator[tuple[str, str, str]]]] = {
    "models": _models, "datasets": _datasets, "criteria": _criteria,
    "augmentations": _augmentations, "presets": _presets, "semi": _semi,
}


def entries(category: str) -> list[tuple[str, str, str]]:
    """``(name, description, options)`` of every entry of ``category``."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")
    return list(CATEGORIES[category]())


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "list", help="list models, datasets, criteria, augmentations, presets or semi methods",
        description="List what isda train / isda compare accept, with a one-line description "
                    "and the options of each entry.")
    parser.add_argument("category", nargs="?", choices=list(CATEGORIES),
                        help="what to list (default: everything)")
    return parser


def run(args: argparse.Namespace) -> int:
    for category in [args.category] if args.category else list(CATEGORIES):
        print(f"{category}:")
        for name, description, options in entries(category):
            print(f"  {name:<24} {description}")
            if options:
                print(f"  {'':<24} options: {options}")
    return 0
