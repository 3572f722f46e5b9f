"""Computational overhead of ISDA (TPAMI paper, Section 4.3 and Tables 3 and 1).

Theoretical cost (multiply-accumulates, the convention of :func:`~torch_isda.models.count_macs`
and of Table 3's "Standard FLOPs" column), per training sample, with ``A`` the feature
dimension and ``C`` the number of classes. Every element-wise operation over a ``C x A``
matrix counts ``C A``; ``O(A + C)`` terms other than those listed are neglected.

Full covariance (CIFAR, Table 3)::

    estimator update (Eqs. 1-3)  : A^2 + A        outer product of the centred feature, mean
    bound, forward (Eq. 7)       : C A^2 + 2 C A  V = W - w_y (C A); T = V Sigma_y (C A^2);
                                                  sigma2_j = v_j . t_j (C A)
    bound, backward              : 2 C A          d/dw_j = 2 g_j t_j, d/dw_y = -sum_j 2 g_j t_j
    total                        : (C + 1) A^2 + 4 C A + A

Diagonal covariance (ImageNet, Table 1)::

    estimator update             : 2 A            squared centred feature, mean
    bound, forward               : 3 C A          V (C A), V * V (C A), weighted by d_y (C A)
    bound, backward              : 2 C A
    total                        : 5 C A + 2 A

For ResNet-32 (``A = 64``) this gives 47,680 (CIFAR-10) and 439,360 (CIFAR-100), Table 3's
0.05M and 0.44M; the relative cost is the extra cost over the model's forward MACs, as in
Table 3 (a training step costs about three forward passes, so relative to a step it is about
a third of that). With the diagonal formula, ResNet-50 on ImageNet (``A = 2048``,
``C = 1000``, 4.09 GMACs) costs 0.25% extra, as in Table 1. The other rows of Table 3 come
out 1.5-4% below the paper's absolute numbers (relative costs within 0.1 percentage point):
the paper does not state its counting rule and we found none matching every row exactly
(see docs/analysis.md).

Measured cost: the wall time of a full training step (forward, loss, backward, SGD step)
with ISDA and with plain cross-entropy on the same model and batch, interleaved
(alternating order) after warm-up; the overhead is the ratio of the medians.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..train.checkpoint import atomic_write_json
from .common import Logger, Table, pyplot, save_figure, write_table
from .overhead_table import render_overhead_markdown

__all__ = [
    "PAPER_TABLE1_RELATIVE",
    "PAPER_TABLE3",
    "BenchCase",
    "bench_cases",
    "default_timed_models",
    "isda_extra_macs",
    "measure_step_overhead",
    "run_overhead",
]

#: Table 3 of the paper: model -> (standard FLOPs, extra C10, relative C10 %, wall C10 %,
#: extra C100, relative C100 %, wall C100 %).
PAPER_TABLE3 = {
    "resnet32": (69.43e6, 0.05e6, 0.07, 1.85, 0.44e6, 0.63, 1.85),
    "resnet110": (254.20e6, 0.05e6, 0.02, 4.48, 0.44e6, 0.17, 2.94),
    "se_resnet110": (254.73e6, 0.05e6, 0.02, 2.17, 0.44e6, 0.17, 1.08),
    "wrn16_8": (1.55e9, 2.96e6, 0.19, 3.39, 27.19e6, 1.76, 10.77),
    "wrn28_10": (5.25e9, 4.61e6, 0.09, 2.37, 42.46e6, 0.81, 12.35),
    "resnext29_8x64d": (5.39e9, 11.80e6, 0.22, 1.90, 109.00e6, 2.02, 12.32),
    "densenet_bc_100_12": (292.38e6, 1.35e6, 0.46, 5.50, 12.43e6, 4.25, 12.03),
    "shake_shake_26_2x32d": (426.69e6, 0.19e6, 0.04, 5.77, 1.76e6, 0.41, 2.21),
    "shake_shake_26_2x112d": (5.13e9, 2.31e6, 0.05, 3.85, 21.30e6, 0.42, 5.07),
}

#: Table 1 of the paper (ImageNet, diagonal covariance): model -> (relative %, wall time %).
PAPER_TABLE1_RELATIVE = {
    "resnet50": (0.25, 7.6), "resnet101": (0.13, 7.4), "resnet152": (0.09, 5.4),
    "densenet121": (0.20, 5.6), "densenet265": (0.24, 5.4), "resnext50_32x4d": (0.24, 6.6),
    "resnext101_32x8d": (0.06, 7.9),
}

#: Models timed by default on a CPU (seconds per step); on a GPU every listed model is.
CPU_TIMED_MODELS = ("digits_cnn", "resnet32")


def isda_extra_macs(num_features: int, num_classes: int, kind: str = "full") -> dict[str, int]:
    """Per-sample extra multiply-accumulates of ISDA (see the module docstring).

    Returns ``{"update", "bound_forward", "bound_backward", "total"}``.
    """
    A, C = int(num_features), int(num_classes)
    if A < 1 or C < 1:
        raise ValueError(f"num_features and num_classes must be positive; got {A}, {C}")
    if kind == "full":
        parts = {"update": A * A + A, "bound_forward": C * A * A + 2 * C * A,
                 "bound_backward": 2 * C * A}
    elif kind == "diagonal":
        parts = {"update": 2 * A, "bound_forward": 3 * C * A, "bound_backward": 2 * C * A}
    else:
        raise ValueError(f"theoretical costs are derived for kind 'full' (CIFAR, Table 3) and "
                         f"'diagonal' (ImageNet, Table 1); got {kind!r}")
    parts["total"] = sum(parts.values())
    return parts


@dataclass(frozen=True)
class BenchCase:
    """One row: a model at its dataset's input size with ``num_classes`` classes."""

    model: str
    dataset: str
    input_size: tuple[int, int, int]
    num_classes: int
    kind: str
    family: str

    @property
    def key(self) -> str:
        return f"{self.model}-c{self.num_classes}"


def _family(model: str) -> str:
    from ..models import create_model

    with torch.device("meta"):
        return str(getattr(create_model(model, num_classes=10), "family", ""))


def bench_cases(models: Optional[Sequence[str]] = None) -> list[BenchCase]:
    """The rows for ``models`` (default: every classification model of the registry):
    ``digits_cnn`` at 1x8x8 (C = 10); ImageNet families at 3x224x224 (C = 1000, diagonal,
    as in the paper); every other model at 3x32x32 with C = 10 and 100 (full, Table 3).
    Segmentation models are skipped (unless named, which is an error)."""
    from ..models import list_models, model_entrypoint

    names = list_models() if models is None else list(models)
    cases = []
    for name in names:
        model_entrypoint(name)  # clear error listing the models
        family = _family(name)
        if family == "segmentation":
            if models is not None:
                raise ValueError(f"model {name!r} is a segmentation model; the overhead bench "
                                 f"covers classification models")
            continue
        if family == "small_cnn":
            cases.append(BenchCase(name, "digits", (1, 8, 8), 10, "full", family))
        elif family.endswith("_imagenet"):
            cases.append(BenchCase(name, "imagenet", (3, 224, 224), 1000, "diagonal", family))
        else:
            for c in (10, 100):
                cases.append(BenchCase(name, f"cifar{c}", (3, 32, 32), c, "full", family))
    return cases


def default_timed_models(device: torch.device, cases: Sequence[BenchCase]) -> list[str]:
    """On a CPU: :data:`CPU_TIMED_MODELS` (present in ``cases``); on a GPU: all."""
    names = list(dict.fromkeys(c.model for c in cases))
    if device.type == "cpu":
        return [n for n in names if n in CPU_TIMED_MODELS]
    return names


def theoretical(case: BenchCase) -> dict[str, Any]:
    """Forward MACs (on the meta device: no compute), ``A`` and ISDA's extra MACs."""
    from ..models import count_macs, create_model

    with torch.device("meta"):
        model = create_model(case.model, num_classes=case.num_classes,
                             in_channels=case.input_size[0])
    macs = count_macs(model, case.input_size)
    A = int(model.num_features)
    extra = isda_extra_macs(A, case.num_classes, case.kind)
    return {"forward_macs": macs, "num_features": A, **{f"extra_{k}": v for k, v in extra.items()},
            "relative": extra["total"] / macs}


def _default_batch_size(case: BenchCase) -> int:
    from ..train.presets import PRESETS, preset_name_for_family

    name = preset_name_for_family(case.family)
    return PRESETS[name].batch_size if name in PRESETS else 128


def measure_step_overhead(case: BenchCase, *, batch_size: Optional[int] = None,
                          repeats: int = 10, warmup: int = 2,
                          device: Union[str, torch.device] = "cpu",
                          amp: str = "none", seed: int = 0) -> dict[str, Any]:
    """Median wall time of a training step with ``ce`` and with ``isda`` (same model, same
    batch, interleaved in alternating order after ``warmup`` steps of each)."""
    from ..models import create_model
    from ..train.config import TrainConfig
    from ..train.criteria import create_criterion

    if int(repeats) < 1 or int(warmup) < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got {repeats}, {warmup}")
    device = torch.device(device)
    batch = int(batch_size or _default_batch_size(case))
    torch.manual_seed(seed)
    model = create_model(case.model, num_classes=case.num_classes,
                         in_channels=case.input_size[0]).to(device).train()
    A = int(model.num_features)
    config = TrainConfig(dataset=case.dataset, model=case.model, lambda0=0.5, kind=case.kind)
    criteria = {"ce": create_criterion("ce", A, case.num_classes, config).to(device),
                "isda": create_criterion("isda", A, case.num_classes, config).to(device)}
    criteria["isda"].set_progress(0.5)  # lambda > 0 (the cost does not depend on it)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(batch, *case.input_size, device=device)
    y = torch.randint(0, case.num_classes, (batch,), device=device)
    classifier = model.get_classifier()
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(name: str) -> float:
        criterion = criteria[name]
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            features = model.forward_features(x)
            logits = classifier(features)
        loss = criterion(features.float(), logits.float(), y, model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        return time.perf_counter() - t0

    for _ in range(int(warmup)):
        step("ce")
        step("isda")
    times: dict[str, list[float]] = {"ce": [], "isda": []}
    for r in range(int(repeats)):
        order = ("ce", "isda") if r % 2 == 0 else ("isda", "ce")
        for name in order:
            times[name].append(step(name))
    ce, isda = statistics.median(times["ce"]), statistics.median(times["isda"])
    return {"batch_size": batch, "ce_seconds": ce, "isda_seconds": isda,
            "overhead": isda / ce - 1.0, "ce_times": times["ce"], "isda_times": times["isda"]}


def _fmt_count(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}G"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.2f}K"
    return f"{n:.0f}"


def _fmt_m(n: float) -> str:
    """Table 3's style: ``0.05M``, ``42.46M``, ``1.55G``."""
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _fmt_seconds(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def run_overhead(out: Union[str, Path], *, models: Optional[Sequence[str]] = None,
                 timed: Optional[Sequence[str]] = None, repeats: int = 10, warmup: int = 2,
                 batch_size: Optional[int] = None, device: str = "auto", amp: str = "none",
                 threads: Optional[int] = None, force: bool = False, quiet: bool = False,
                 log: Optional[Logger] = None) -> dict[str, Any]:
    """Theoretical and measured overhead; writes ``OUT/overhead.{md,csv,png}``.

    ``models``: rows (default: every classification model); ``timed``: models whose step
    time is measured (default: :func:`default_timed_models`; ``[]`` for none). Measurements
    are cached in ``OUT/timings/<model>-c<C>.json`` and reused when their settings match.
    """
    from ..train.seeding import num_threads
    from ..train.parallel import resolve_device

    say = (lambda msg: None) if quiet else (log or (lambda msg: print(msg, flush=True)))
    out = Path(out)
    dev = resolve_device(device)
    cases = bench_cases(models)
    timed_models = default_timed_models(dev, cases) if timed is None else list(timed)
    unknown = sorted(set(timed_models) - {c.model for c in cases})
    if unknown:
        raise ValueError(f"timed model(s) {', '.join(unknown)} are not among the benchmarked "
                         f"models ({', '.join(dict.fromkeys(c.model for c in cases))})")
    rows = []
    to_time = [c for c in cases if c.model in timed_models]
    say(f"overhead: {len(cases)} rows, timing {len(to_time)} on {dev} "
        f"({repeats} interleaved repeats after {warmup} warm-up steps) -> '{out}'")
    done = 0
    with num_threads(threads):
        for case in cases:
            row = {"case": case, **theoretical(case)}
            if case in to_time:
                done += 1
                timing, note = _case_timing(case, out, dev, batch_size, repeats, warmup, amp,
                                            threads, force)
                say(f"[{done}/{len(to_time)}] {case.model} C={case.num_classes} batch "
                    f"{timing['batch_size']}: CE {_fmt_seconds(timing['ce_seconds'])}, ISDA "
                    f"{_fmt_seconds(timing['isda_seconds'])} per step, overhead "
                    f"{100 * timing['overhead']:+.1f}% ({note})")
                row["timing"] = timing
            rows.append(row)
    table = _table(rows, dev)
    text = render_overhead_markdown(rows, table.caption, table.notes, _paper, _fmt_m,
                                    _fmt_count, _fmt_seconds, paired_spread)
    # the markdown in the paper's layout (the csv keeps every column)
    md, csv_path, _ = write_table(out, "overhead", table, markdown=text)
    png = _plot(out / "overhead.png", rows, dev)
    return {"table": text, "rows": rows, "table_md": md, "table_csv": csv_path, "png": png}


def _case_timing(case: BenchCase, out: Path, dev: Any, batch_size: Optional[int], repeats: int,
                 warmup: int, amp: str, threads: Optional[int], force: bool) -> tuple[dict, str]:
    """The measured step times of ``case``, reused from ``OUT/timings/<case>.json`` when
    measured with the same settings (unless ``force``); and how they were obtained."""
    settings = {"model": case.model, "num_classes": case.num_classes,
                "input_size": list(case.input_size), "kind": case.kind,
                "batch_size": batch_size or _default_batch_size(case),
                "repeats": int(repeats), "warmup": int(warmup), "device": str(dev),
                "amp": amp, "threads": threads, "torch": torch.__version__}
    cache = out / "timings" / f"{case.key}.json"
    cached = json.loads(cache.read_text()) if cache.is_file() else None
    if cached is not None and not force and cached.get("settings") == settings:
        return cached["timing"], "reused"
    t0 = time.perf_counter()
    timing = measure_step_overhead(case, batch_size=batch_size, repeats=repeats,
                                   warmup=warmup, device=dev, amp=amp)
    atomic_write_json(cache, {"settings": settings, "timing": timing})
    return timing, f"measured in {time.perf_counter() - t0:.1f}s"


def _paper(case: BenchCase) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """(paper extra MACs, paper relative %, paper wall-time %) for the case, if known."""
    if case.model in PAPER_TABLE3 and case.num_classes in (10, 100):
        p = PAPER_TABLE3[case.model]
        return (p[1], p[2], p[3]) if case.num_classes == 10 else (p[4], p[5], p[6])
    if case.model in PAPER_TABLE1_RELATIVE and case.num_classes == 1000:
        rel, wall = PAPER_TABLE1_RELATIVE[case.model]
        return None, rel, wall
    return None, None, None


def paired_spread(timing: dict[str, Any]) -> tuple[float, float]:
    """Quartiles (25%, 75%) of the per-repeat ratios ``isda_i / ce_i - 1`` of adjacent
    (interleaved) steps: the measurement noise of the overhead."""
    import numpy as np

    ratios = np.array(timing["isda_times"]) / np.array(timing["ce_times"]) - 1.0
    q25, q75 = np.percentile(ratios, [25, 75])
    return float(q25), float(q75)


def _table(rows: list[dict[str, Any]], device: torch.device) -> Table:
    md_rows, csv_rows = [], []
    for r in rows:
        case, t = r["case"], r.get("timing")
        p_extra, p_rel, p_wall = _paper(case)
        spread = None if t is None else paired_spread(t)
        md_rows.append([
            case.model, case.dataset, "×".join(map(str, case.input_size)), case.num_classes,
            case.kind, r["num_features"], _fmt_count(r["forward_macs"]),
            _fmt_m(r["extra_total"]), f"{100 * r['relative']:.2f}%",
            "-" if p_extra is None else _fmt_m(p_extra),
            "-" if p_rel is None else f"{p_rel:.2f}%",
            "-" if t is None else f"{t['batch_size']}",
            "-" if t is None else _fmt_seconds(t["ce_seconds"]),
            "-" if t is None else _fmt_seconds(t["isda_seconds"]),
            "-" if t is None else f"{100 * t['overhead']:+.1f}%",
            "-" if t is None else f"[{100 * spread[0]:+.1f}%, {100 * spread[1]:+.1f}%]",
            "-" if p_wall is None else f"{p_wall:.2f}%",
        ])
        csv_rows.append([
            case.model, case.dataset, "x".join(map(str, case.input_size)), case.num_classes,
            case.kind, r["num_features"], r["forward_macs"], r["extra_update"],
            r["extra_bound_forward"], r["extra_bound_backward"], r["extra_total"],
            r["relative"], p_extra, None if p_rel is None else p_rel / 100,
            None if t is None else t["batch_size"], None if t is None else t["ce_seconds"],
            None if t is None else t["isda_seconds"], None if t is None else t["overhead"],
            None if t is None else spread[0], None if t is None else spread[1],
            None if p_wall is None else p_wall / 100, str(device) if t is not None else None,
        ])
    return Table(
        caption=("Computational overhead of ISDA, laid out as the paper's Table 3 (CIFAR) and "
                 "Table 1 (ImageNet); the paper's values in brackets. FLOPs are "
                 "multiply-accumulates of one forward pass on one sample (count_macs, Table 3's "
                 "convention); extra = ISDA's per-sample cost, (C+1)A² + 4CA + A for the full "
                 "covariance and 5CA + 2A for the diagonal one (estimator update + bound forward "
                 "+ bound backward, see docs/analysis.md); relative = extra / forward. Wall time: "
                 "median of interleaved training steps (forward, loss, backward, SGD) on "
                 f"{device}, "
                 "ISDA vs CE on the same model and batch."),
        headers=["model", "dataset", "input", "C", "kind", "A", "forward FLOPs", "ISDA extra",
                 "relative", "paper extra", "paper relative", "batch", "CE step", "ISDA step",
                 "wall-time overhead", "paired IQR", "paper wall time"],
        rows=md_rows,
        csv_headers=["model", "dataset", "input_size", "num_classes", "kind", "num_features",
                     "forward_macs", "extra_update", "extra_bound_forward",
                     "extra_bound_backward", "extra_total", "relative", "paper_extra",
                     "paper_relative", "batch_size", "ce_seconds", "isda_seconds",
                     "wall_overhead", "wall_overhead_q25", "wall_overhead_q75",
                     "paper_wall_overhead", "device"],
        csv_rows=csv_rows,
        notes=("Paper wall times were measured on one Tesla V100 (CIFAR) / 8 V100s (ImageNet); "
               "CPU timings of small models are not comparable (ISDA's cost is a larger share "
               "of a small network's step, and shared CPUs are noisy). Wall-time overhead: "
               "median(ISDA step) / median(CE step) - 1; paired IQR: quartiles of the ratios of "
               "adjacent interleaved steps (its width shows the timing noise)."),
    )


def _plot(path: Path, rows: list[dict[str, Any]], device: torch.device) -> Path:
    import numpy as np

    plt = pyplot()
    labels = [f"{r['case'].model}\nC={r['case'].num_classes}" for r in rows]
    theo = np.array([100 * r["relative"] for r in rows])
    wall = np.array([100 * r["timing"]["overhead"] if "timing" in r else np.nan for r in rows])
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.42 * len(rows) + 2), 4.4), dpi=120)
    ax.bar(x - 0.2, theo, 0.4, color="tab:blue", label="theoretical (extra / forward MACs)")
    paper = [(xi, _paper(r["case"])[1]) for xi, r in zip(x, rows) if _paper(r["case"])[1]]
    if paper:
        ax.scatter([p[0] - 0.2 for p in paper], [p[1] for p in paper], marker="_", s=120,
                   color="k", zorder=3, label="paper, theoretical (Tables 3 / 1)")
    positive = ~np.isnan(wall) & (wall > 0)
    ax.bar(x[positive] + 0.2, wall[positive], 0.4, color="tab:red",
           label=f"measured wall time per training step ({device})")
    paper_wall = [(xi, _paper(r["case"])[2]) for xi, r in zip(x, rows) if _paper(r["case"])[2]]
    if paper_wall:
        ax.scatter([p[0] + 0.2 for p in paper_wall], [p[1] for p in paper_wall], marker="D",
                   s=22, facecolor="white", edgecolor="tab:red", zorder=3,
                   label="paper, wall time (V100 GPUs, Tables 3 / 1)")
    ax.set_yscale("log")
    values = np.concatenate([theo[theo > 0], wall[positive],
                             np.array([p[1] for p in paper_wall], dtype=float)])
    bottom = float(values.min()) / 4 if len(values) else 1e-3
    ax.set_ylim(bottom=bottom)
    for xi, w in zip(x, wall):  # a log axis cannot show a measured overhead <= 0: label it
        if not np.isnan(w) and w <= 0:
            ax.annotate(f"{w:+.1f}% (measured)", (xi + 0.2, bottom * 1.2), rotation=90,
                        color="tab:red", fontsize=7, ha="center", va="bottom")
    ax.set_xticks(x, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_ylabel("extra cost of ISDA (%)")
    ax.set_title("ISDA overhead (Table 3 / Table 1)")
    ax.grid(True, axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))  # off the bars
    fig.tight_layout()
    return save_figure(fig, path)
