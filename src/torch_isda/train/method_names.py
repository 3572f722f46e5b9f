"""One display name per training criterion spec, the paper's (TPAMI Table 5; naming rules in
docs/training.md), used by every table and legend.
"""

from __future__ import annotations

__all__ = ["LOSS_MODIFIERS", "PAPER_NAMES", "display_name"]

#: The paper's names of the registered criteria (TPAMI Tables 2, 5 and 8).
PAPER_NAMES = {
    "ce": "Basic",
    "isda": "ISDA",
    "focal": "Focal Loss",
    "lq": "L_q Loss",
    "label_smoothing": "Label Smoothing",
    "lsoftmax": "Large Margin",
    "center": "Center Loss",
    "disturb_label": "Disturb Label",
    "dropout": "Dropout",
    "explicit_sda": "Explicit SDA",
    "learned_cov": "Learned Cov",
    # long-tailed recognition (not in the paper; docs/reproduce/long-tailed.md)
    "class_balanced": "CB Loss",
    "balanced_softmax": "Balanced Softmax",
    "ldam_drw": "LDAM-DRW",
    "metasaug": "MetaSAug",
    "risda": "RISDA",
}

#: Modifiers that are a baseline loss of their own: "ce+center" is "Center Loss".
LOSS_MODIFIERS = ("center", "disturb_label")

#: Modifiers (the other registered names are primary losses).
_MODIFIERS = ("center", "disturb_label", "dropout")


def _term(name: str, kwargs: dict) -> str:
    text = PAPER_NAMES.get(name, name)
    if kwargs:
        text += " (" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
    return text


def display_name(spec: str) -> str:
    """The paper's name of a criterion spec: ``"ISDA + Dropout"``, ``"Center Loss"``."""
    from .criteria import parse_criterion_spec

    try:
        terms = parse_criterion_spec(spec)
    except ValueError:
        return str(spec)
    primary = next((t for t in terms if t[0] not in _MODIFIERS), None)
    modifiers = [t for t in terms if t is not primary]
    parts = []
    if primary is not None and not (primary == ("ce", {}) and modifiers
                                    and modifiers[0][0] in LOSS_MODIFIERS):
        parts.append(_term(*primary))
    parts += [_term(*t) for t in modifiers]
    return " + ".join(parts)
