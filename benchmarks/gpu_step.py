"""A whole training step on a GPU: cross-entropy vs ISDA vs the official dense formulation.

Tables (printed as they are measured, and rewritten to ``--out DIR`` as ``gpu_step.md`` and
``gpu_step.json`` after every row, so a run cut short keeps what it measured):

1. **loss** - the ISDA work alone (estimator update + loss forward + backward into the
   logits and the classifier weight, logits a leaf) at the paper's shapes, for the
   present-class path (the old default, one host synchronization per step), the new
   default's accelerator route (``static_shapes=True``, the checks on the device: no
   synchronization) and the official dense formulation (``loss_speed.DenseISDA``).
2. **step (eager)** and 3. **step (compiled)** - a whole SGD step (forward, loss, backward,
   optimizer) of ResNet-32, ResNet-110 and WRN-28-10 on CIFAR-shaped random data (batch
   128, 100 classes), in bf16 autocast with channels_last, for ``CE``, ``ISDA default``
   (full covariance, ``static_shapes="auto"``: the static path with device-side checks on a
   GPU), ``ISDA old default`` (``static_shapes=False``: present classes, one
   synchronization), ``ISDA unchecked`` (``validate=False, static_shapes=True``) and
   ``official`` (dense). ISDA's overhead is relative to CE in the same mode. Compiled: the
   model (features + logits) is compiled once per architecture and reused by every
   criterion; each criterion's loss is compiled separately (``fullgraph=True`` on the static
   path). Single measurement per row.
4. **step (whole)** - the whole step compiled as one ``fullgraph=True`` graph (forward,
   criterion, ``torch.autograd.grad``, a ``torch._foreach_*`` Nesterov SGD:
   ``benchmarks/_whole_step.py``) and that graph captured in a CUDA graph
   (``mode="reduce-overhead"``), next to the same step in eager mode, for CE and the ISDA
   default: median and spread (max - min) of ``--repeats`` (default 3) timed runs per row.

Syncs/step: on CUDA the synchronizations reported by ``torch.cuda.set_sync_debug_mode``
during one step; on the CPU the Python-level count of ``benchmarks/_syncs.py``.

Run on a GPU (about 3.5 minutes on an H100 with the default budget, compile included)::

    PYTHONPATH=src python benchmarks/gpu_step.py --out results/

``--skip-compile``, ``--tables loss,eager,compiled``, ``--archs``, ``--budget-s`` (items that
would start after this many seconds are skipped and marked so; default 160, which keeps the
whole run within about 3.5 minutes). Check it on the CPU with
``--device cpu --smoke`` (tiny shapes, compiled with the ``aot_eager`` backend).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _measure import markdown_table, peak_memory_mb, sync  # noqa: E402
from _syncs import count_cuda_syncs, count_syncs  # noqa: E402
from _whole_step import MODES, compile_step, make_train_step  # noqa: E402
from loss_speed import DenseISDA  # noqa: E402

from torch_isda import ISDALoss  # noqa: E402
from torch_isda.models import create_model  # noqa: E402

ARCHS = ("resnet32", "resnet110", "wrn28_10")
LOSS_SHAPES = [  # name, N, C, A, kind
    ("ResNet / CIFAR-10", 128, 10, 64, "full"),
    ("ResNet / CIFAR-100", 128, 100, 64, "full"),
    ("WRN-28-10 / CIFAR-10", 128, 10, 640, "full"),
    ("WRN-28-10 / CIFAR-100", 128, 100, 640, "full"),
    ("ResNet / CIFAR-100", 128, 100, 64, "diagonal"),
    ("WRN-28-10 / CIFAR-100", 128, 100, 640, "diagonal"),
    ("ResNet-50 / ImageNet", 256, 1000, 2048, "diagonal"),
]
SMOKE_LOSS_SHAPES = [("smoke full", 8, 5, 8, "full"), ("smoke diagonal", 8, 6, 8, "diagonal")]


# --------------------------------------------------------------------------- output


class Report:
    """Tables printed as they grow and rewritten to ``out`` (markdown + JSON) after each row."""

    def __init__(self, out: Optional[str], meta: Dict[str, object]) -> None:
        self.out = out
        self.meta = meta
        self.tables: Dict[str, Dict[str, object]] = {}
        if out:
            os.makedirs(out, exist_ok=True)

    def table(self, name: str, headers: List[str], note: str = "") -> None:
        self.tables[name] = {"headers": headers, "rows": [], "note": note}
        print(f"\n## {name}\n" + (f"\n{note}\n" if note else ""), flush=True)
        print(markdown_table(headers, []), flush=True)

    def row(self, name: str, cells: List[object]) -> None:
        self.tables[name]["rows"].append([str(c) for c in cells])
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
        self.save()

    def save(self) -> None:
        if not self.out:
            return
        parts = ["# gpu_step.py results", ""] + [f"- {k}: {v}" for k, v in self.meta.items()]
        for name, t in self.tables.items():
            parts += ["", f"## {name}", ""] + ([t["note"], ""] if t["note"] else [])
            parts.append(markdown_table(t["headers"], t["rows"]))
        for fname, text in (("gpu_step.md", "\n".join(parts) + "\n"),
                            ("gpu_step.json", json.dumps({"meta": self.meta, "tables": self.tables}, indent=1))):
            tmp = os.path.join(self.out, fname + ".tmp")
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, os.path.join(self.out, fname))


# --------------------------------------------------------------------------- measuring


def time_steps(fn: Callable[[], object], device: torch.device, steps: int, warmup: int) -> float:
    """Mean milliseconds per call over ``steps`` back-to-back calls (one sync at the end)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3 / steps


def syncs_per_call(fn: Callable[[], object], device: torch.device, compiled: bool = False) -> str:
    """Synchronizations of one call: CUDA's own report, or the Python-level count on the CPU
    (not for compiled code, which that count cannot see into)."""
    try:
        if device.type == "cuda":
            return str(count_cuda_syncs(fn))
        if compiled:
            return "n/a on CPU"
        counter = count_syncs(fn)
        extra = f" (+{counter.counts['linalg']} linalg)" if counter.counts.get("linalg") else ""
        return f"{counter.total}{extra}"
    except Exception as err:  # counting must never stop the benchmark
        return f"? ({type(err).__name__})"


def peak_mb(fn: Callable[[], object], device: torch.device) -> str:
    return f"{peak_memory_mb(fn, device):.0f}" if device.type == "cuda" else "-"


class Budget:
    """Wall-clock budget: items starting after ``seconds`` are skipped."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> bool:
        return self.elapsed() < self.seconds


# --------------------------------------------------------------------------- criteria


def make_criteria(A: int, C: int, device: torch.device) -> Dict[str, Callable]:
    """``criterion(features, logits, target, weight) -> loss`` for each compared method."""
    def isda(**opts):
        return ISDALoss(A, C, lambda0=0.5, kind="full", constant_lambda=True, **opts).to(device)

    dense = DenseISDA(A, C, "full", device)

    def official(features, logits, target, weight):
        dense.update(features.detach(), target)
        return dense.loss(logits, weight, target, 0.5)

    return {
        "CE": cross_entropy,
        "ISDA default": isda(),
        "ISDA old default": isda(static_shapes=False),
        "ISDA unchecked": isda(validate=False, static_shapes=True),
        "official": official,
    }


def cross_entropy(features, logits, target, weight):
    return F.cross_entropy(logits, target)


def repeated_blocks(model: nn.Module) -> List[nn.Module]:
    """The residual blocks of a model (classes named ``*Block`` / ``*Bottleneck``), outermost only."""
    found: List[nn.Module] = []
    for module in model.modules():
        if type(module).__name__.endswith(("Block", "Bottleneck")) and not any(
            module in set(b.modules()) for b in found
        ):
            found.append(module)
    return found


class FeaturesAndLogits(nn.Module):
    """``(features, logits)`` of a torch_isda model, one module to compile per architecture."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        features = self.model.forward_features(x)
        return features, self.model.fc(features)


# --------------------------------------------------------------------------- tables


def loss_table(report: Report, device, shapes, steps: int, warmup: int, budget: Budget,
               max_dense_gb: float) -> None:
    name = "loss: ISDA work per step, present-class path vs the default's accelerator route vs official"
    report.table(name, ["shape", "(N, C, A)", "kind", "present ms", "present syncs", "accel. route ms",
                        "accel. route syncs", "official ms", "official syncs", "official / present"],
                 note="estimator update + loss forward + backward (logits a leaf), float32 statistics; "
                      "mean ms over back-to-back calls")
    for label, N, C, A, kind in shapes:
        if not budget.left():
            report.row(name, [label, f"({N}, {C}, {A})", kind] + ["skipped (time budget)"] + ["-"] * 6)
            continue
        g = torch.Generator().manual_seed(0)
        feats = torch.randn(N, A, generator=g).to(device)
        labels = torch.randint(0, C, (N,), generator=g).to(device)
        weight = (torch.randn(C, A, generator=g) / math.sqrt(A)).to(device).requires_grad_()
        logits = (feats @ weight.detach().T).requires_grad_()
        cells = [label, f"({N}, {C}, {A})", kind]
        times = {}
        for variant, opts in (("present", {"static_shapes": False}), ("static", {"static_shapes": True})):
            crit = ISDALoss(A, C, lambda0=0.5, kind=kind, constant_lambda=True, **opts).to(device)

            def step(crit=crit):
                crit(feats, logits, labels, weight).backward()
                weight.grad = logits.grad = None

            try:
                times[variant] = time_steps(step, device, steps, warmup)
                cells += [f"{times[variant]:.3f}", syncs_per_call(step, device)]
            except Exception as err:
                cells += [f"error: {type(err).__name__}: {str(err)[:80]}", "-"]
        per = N * C * A * 4
        need_gb = (6 * per + N * A * A * 4 + 2 * N * C * C * 4 + 2 * C * A * A * 4 if kind == "full" else 8 * per) / 2**30
        if need_gb > max_dense_gb:
            cells += [f"skipped (~{need_gb:.0f} GB)", "-", "-"]
        else:
            dense = DenseISDA(A, C, kind, device)

            def dense_step():
                dense.update(feats, labels)
                dense.loss(logits, weight, labels, 0.5).backward()
                weight.grad = logits.grad = None

            try:
                t = time_steps(dense_step, device, steps, warmup)
                ratio = f"{t / times['present']:.1f}x" if "present" in times else "-"
                cells += [f"{t:.3f}", syncs_per_call(dense_step, device), ratio]
            except Exception as err:
                cells += [f"error: {type(err).__name__}: {str(err)[:80]}", "-", "-"]
            del dense
        report.row(name, cells)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def step_table(report: Report, device, archs, compiled: bool, args, budget: Budget) -> None:
    mode = "compiled" if compiled else "eager"
    name = f"step ({mode}): whole training step, bf16 autocast, channels_last"
    report.table(name, ["model", "criterion", "ms/step", "ISDA overhead vs CE", "syncs/step", "peak MB", "note"],
                 note=f"batch {args.batch}, {args.classes} classes, {args.image}x{args.image} random images, "
                      "SGD(momentum 0.9, nesterov, wd 1e-4); ms/step = mean over back-to-back steps"
                      + (f"; torch.compile backend {args.backend}" if compiled else ""))
    amp_dtype = torch.bfloat16
    for arch in archs:
        if not budget.left():
            report.row(name, [arch, "all", "skipped (time budget)", "-", "-", "-", f"at {budget.elapsed():.0f} s"])
            continue
        torch.manual_seed(0)
        model = create_model(arch, num_classes=args.classes).to(device).to(memory_format=torch.channels_last)
        A, C = model.fc.in_features, args.classes
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, 3, args.image, args.image, generator=g).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, C, (args.batch,), generator=g).to(device)
        net = FeaturesAndLogits(model)
        forward = net
        if compiled and args.compile_scope == "model":
            forward = torch.compile(net, backend=args.backend, dynamic=False)
        elif compiled:
            for block in repeated_blocks(model):
                block.compile(backend=args.backend, dynamic=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
        ce_ms = None
        for crit_name, criterion in make_criteria(A, C, device).items():
            if not budget.left():
                report.row(name, [arch, crit_name, "skipped (time budget)", "-", "-", "-", f"at {budget.elapsed():.0f} s"])
                continue
            loss_fn = criterion
            if compiled:
                loss_fn = torch.compile(criterion, backend=args.backend,
                                        fullgraph=bool(getattr(criterion, "static_path", False)))

            def step(loss_fn=loss_fn):
                with torch.autocast(device.type, dtype=amp_dtype):
                    features, logits = forward(x)
                    loss = loss_fn(features, logits, y, model.fc.weight)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            t0 = time.perf_counter()
            try:
                step()  # first call: compilation
                first_s = time.perf_counter() - t0
                ms = time_steps(step, device, args.steps, args.warmup)
            except Exception as err:
                report.row(name, [arch, crit_name, f"error: {type(err).__name__}", "-", "-", "-", str(err)[:120]])
                continue
            if crit_name == "CE":
                ce_ms = ms
            overhead = "-" if ce_ms is None or crit_name == "CE" else f"{100 * (ms - ce_ms) / ce_ms:+.1f}%"
            note = f"first step {first_s:.1f} s" if compiled else ""
            report.row(name, [arch, crit_name, f"{ms:.2f}", overhead, syncs_per_call(step, device, compiled),
                              peak_mb(step, device), note])
        del model, net, forward, opt
        if compiled:
            report.tables[name]["note"] += f"; {arch} done at {budget.elapsed():.0f} s"
        if device.type == "cuda":
            torch.cuda.empty_cache()


def repeated_ms(fn: Callable[[], object], device: torch.device, steps: int, warmup: int, repeats: int):
    """``(median, spread)`` of ``repeats`` :func:`time_steps` runs (spread = max - min)."""
    runs = sorted(time_steps(fn, device, steps, warmup if r == 0 else 1) for r in range(repeats))
    return runs[len(runs) // 2], runs[-1] - runs[0]


def whole_table(report: Report, device, archs, args, budget: Budget) -> None:
    name = "step (whole): one fullgraph graph per step, eager vs compiled vs captured"
    report.table(name, ["model", "criterion", "mode", "median ms/step", "spread ms", "ISDA overhead vs CE",
                        "first call s", "note"],
                 note=f"batch {args.batch}, {args.classes} classes, {args.image}x{args.image} random images, "
                      f"bf16 autocast, channels_last, Nesterov SGD in torch._foreach ops; {args.repeats} runs of "
                      f"{args.steps} steps per row; backend {args.backend}")
    modes = [m for m in MODES if m != "captured" or device.type == "cuda"]
    for arch in archs:
        ce = {}
        for crit_name in ("CE", "ISDA default"):
            for mode in modes:
                cells = [arch, crit_name, mode]
                if not budget.left():
                    report.row(name, cells + ["skipped (time budget)", "-", "-", "-", f"at {budget.elapsed():.0f} s"])
                    continue
                torch.manual_seed(0)
                model = create_model(arch, num_classes=args.classes).to(device).to(memory_format=torch.channels_last)
                crit = cross_entropy if crit_name == "CE" else ISDALoss(  # the default's GPU route, also on a CPU
                    model.fc.in_features, args.classes, 0.5, "full", constant_lambda=True, static_shapes=True).to(device)
                step = compile_step(make_train_step(model, crit, lr=0.01), mode, args.backend)
                g = torch.Generator().manual_seed(0)
                x = torch.randn(args.batch, 3, args.image, args.image, generator=g).to(device)
                x = x.contiguous(memory_format=torch.channels_last)
                y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
                try:
                    t0 = time.perf_counter()
                    step(x, y)
                    sync(device)
                    first = time.perf_counter() - t0
                    median, spread = repeated_ms(lambda: step(x, y), device, args.steps, args.warmup, args.repeats)
                except Exception as err:
                    report.row(name, cells + [f"error: {type(err).__name__}", "-", "-", "-", str(err)[:120]])
                    continue
                if crit_name == "CE":
                    ce[mode] = median
                overhead = f"{100 * (median - ce[mode]) / ce[mode]:+.1f}%" if crit_name != "CE" and mode in ce else "-"
                report.row(name, cells + [f"{median:.2f}", f"{spread:.2f}", overhead, f"{first:.1f}", ""])
                del model, step
                if device.type == "cuda":
                    torch.cuda.empty_cache()


# --------------------------------------------------------------------------- main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="folder for gpu_step.md and gpu_step.json")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and steps (CPU check)")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--tables", default="loss,eager,compiled,whole", help="comma-separated subset")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row of the whole-step table")
    parser.add_argument("--whole-archs", default="resnet32,resnet110", help="architectures of the whole-step table")
    parser.add_argument("--archs", default=None, help=f"comma-separated (default {','.join(ARCHS)}; resnet20 with --smoke)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--loss-steps", type=int, default=30)
    parser.add_argument("--compile-scope", choices=("regional", "model"), default="regional")
    parser.add_argument("--backend", default=None, help="torch.compile backend (inductor; aot_eager with --smoke)")
    parser.add_argument("--budget-s", type=float, default=160.0,
                        help="skip items that would start after this many seconds (an item may run ~40 s "
                             "past it: a model's compilation)")
    parser.add_argument("--max-dense-gb", type=float, default=40.0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    loss_shapes = LOSS_SHAPES
    if args.smoke:
        args.batch, args.classes, args.steps, args.warmup, args.loss_steps = 4, 10, 1, 1, 2
        args.image = 8
        args.archs = args.archs or "resnet20"
        args.whole_archs = "resnet8"
        loss_shapes = SMOKE_LOSS_SHAPES
    args.backend = args.backend or ("aot_eager" if args.smoke or device.type == "cpu" else "inductor")
    # regional compilation: one static graph per distinct block shape, reused across blocks
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    tables = set(args.tables.split(","))
    if args.skip_compile:
        tables.discard("compiled")
        tables.discard("whole")
    archs = [a for a in (args.archs or ",".join(ARCHS)).split(",") if a]
    budget = Budget(args.budget_s)
    meta = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "command": " ".join(sys.argv),
        "settings": f"cudnn.benchmark={torch.backends.cudnn.benchmark}, "
                    f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, compile scope {args.compile_scope}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    report = Report(args.out, meta)
    print("\n".join(f"{k}: {v}" for k, v in meta.items()), flush=True)
    if "loss" in tables:
        loss_table(report, device, loss_shapes, args.loss_steps, args.warmup, budget, args.max_dense_gb)
    if "eager" in tables:
        step_table(report, device, archs, False, args, budget)
    if "compiled" in tables:
        step_table(report, device, archs, True, args, budget)
    if "whole" in tables:
        whole_table(report, device, [a for a in args.whole_archs.split(",") if a], args, budget)
    report.meta["total seconds"] = f"{budget.elapsed():.0f}"
    report.save()
    print(f"\ntotal {budget.elapsed():.0f} s", flush=True)


if __name__ == "__main__":
    main()
