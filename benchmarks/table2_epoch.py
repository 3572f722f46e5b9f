"""Time one ResNet-110 epoch with ISDA and project the wall time of the paper's Table 2 row.

One epoch is 391 steps of batch 128 (CIFAR's 50,000 training images) on CIFAR-shaped random
data kept on the device (no data loading: the loader is measured elsewhere), 100 classes,
bf16 autocast, channels_last, the whole step of ``benchmarks/_whole_step.py`` with
``ISDALoss`` (full covariance, the default ``static_shapes="auto"``). Modes:

* ``eager``; ``compiled`` (the whole step in one ``fullgraph=True`` graph); ``captured``
  (that graph in a CUDA graph, ``mode="reduce-overhead"``; CUDA only);
* ``parallel``: ``--parallel K`` processes, each timing one epoch of the fastest measured
  mode, started together on the same GPU after their warm-up (a file barrier), to see how
  far several runs at once fill the GPU.

The Table 2 ResNet-110 row is 2 losses (CE, ISDA) x 5 seeds x 160 epochs = 1,600 epochs; the
projection takes the ISDA epoch time for both losses. ``--budget-s`` skips the modes that
would start after that many seconds. Prints a markdown table; ``--out DIR`` also writes
``table2_epoch.json``. CPU check: ``--device cpu --smoke`` (resnet8, a few tiny steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _measure import markdown_table, sync  # noqa: E402
from _whole_step import compile_step, make_train_step  # noqa: E402

from torch_isda import ISDALoss  # noqa: E402
from torch_isda.models import create_model  # noqa: E402

ROW_EPOCHS = 2 * 5 * 160  # losses x seeds x epochs of Table 2's ResNet-110 row


def time_epoch(args, mode: str, barrier=None) -> dict:
    """``{"first_s", "epoch_s"}`` for one epoch of ``mode`` (after one warm-up call)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=args.classes).to(device).to(memory_format=torch.channels_last)
    crit = ISDALoss(model.fc.in_features, args.classes, 0.5, "full",
                    static_shapes=True if device.type == "cpu" and mode != "eager" else "auto").to(device)
    crit.set_progress(0.5)
    step = compile_step(make_train_step(model, crit), mode, args.backend)
    g = torch.Generator().manual_seed(0)
    pool = [(torch.randn(args.batch, 3, args.image, args.image, generator=g).to(device)
             .contiguous(memory_format=torch.channels_last),
             torch.randint(0, args.classes, (args.batch,), generator=g).to(device)) for _ in range(4)]
    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(*pool[i % len(pool)])
    sync(device)
    first = time.perf_counter() - t0
    if barrier is not None:
        barrier()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(*pool[i % len(pool)])
    sync(device)
    epoch = time.perf_counter() - t0
    crit.check()  # random labels are valid: nothing pending
    return {"first_s": first, "epoch_s": epoch}


def file_barrier(folder: str, count: int):
    def wait():
        open(os.path.join(folder, f"ready.{os.getpid()}"), "w").close()
        while sum(name.startswith("ready.") for name in os.listdir(folder)) < count:
            time.sleep(0.01)
    return wait


def run_parallel(args, mode: str) -> dict:
    """``--parallel`` copies of one epoch of ``mode`` at once; wall time of their epochs."""
    with tempfile.TemporaryDirectory() as folder:
        cmd = [sys.executable, __file__, "--worker", folder, "--modes", mode, "--device", args.device,
               "--arch", args.arch, "--batch", str(args.batch), "--classes", str(args.classes),
               "--image", str(args.image), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--parallel", str(args.parallel)] + (["--backend", args.backend] if args.backend else [])
        procs = [subprocess.Popen(cmd) for _ in range(args.parallel)]
        if any(p.wait() != 0 for p in procs):
            raise RuntimeError("a parallel worker failed")
        results = [json.load(open(os.path.join(folder, name))) for name in os.listdir(folder)
                   if name.startswith("result.")]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"first_s": max(r["first_s"] for r in results), "epoch_s": wall / len(results), "wall_s": wall}


def worker(args) -> None:
    start = {}

    def barrier():
        file_barrier(args.worker, args.parallel)()
        start["t"] = time.time()

    out = time_epoch(args, args.modes, barrier)
    out.update(start=start["t"], end=time.time())
    with open(os.path.join(args.worker, f"result.{os.getpid()}"), "w") as f:
        json.dump(out, f)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet110")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--steps", type=int, default=391, help="steps of one epoch (50,000 / 128)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--modes", default="eager,compiled,captured")
    parser.add_argument("--parallel", type=int, default=4, help="runs at once for the parallel row (0: none)")
    parser.add_argument("--backend", default=None, help="torch.compile backend (inductor; aot_eager on a CPU)")
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true", help="resnet8, batch 8, 3 steps, 2 parallel runs")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.arch, args.batch, args.steps, args.warmup, args.parallel = "resnet8", 8, 3, 1, 2
    if args.device == "cpu":
        args.backend = args.backend or "aot_eager"
    if args.worker:
        return worker(args)
    report(args)


def report(args) -> None:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}, {args.arch}, batch {args.batch}, {args.steps} steps/epoch", flush=True)
    modes = [m for m in args.modes.split(",") if m and (m != "captured" or device.type == "cuda")]
    start, rows, results = time.perf_counter(), [], {}
    for mode in modes + (["parallel"] if args.parallel > 1 else []):
        if time.perf_counter() - start > args.budget_s:
            rows.append([mode, "skipped (time budget)", "-", "-", "-"])
            continue
        try:
            if mode == "parallel":
                best = min(results, key=lambda m: results[m]["epoch_s"])
                results[mode] = r = run_parallel(args, best)
                label = f"parallel x{args.parallel} ({best})"
            else:
                results[mode] = r = time_epoch(args, mode)
                label = mode
        except Exception as err:  # report and go on
            rows.append([mode, f"error: {type(err).__name__}: {str(err)[:80]}", "-", "-", "-"])
            continue
        ms = 1e3 * r["epoch_s"] / args.steps
        rows.append([label, f"{r['epoch_s']:.1f}", f"{ms:.2f}", f"{r['first_s']:.1f}",
                     f"{ROW_EPOCHS * r['epoch_s'] / 3600:.2f}"])
        print(f"done {label}", file=sys.stderr, flush=True)
    print(markdown_table(["mode", "epoch s (per run)", "ms/step", "warm-up s", f"Table 2 {args.arch} row (1,600 epochs), h"], rows))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "table2_epoch.json"), "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
