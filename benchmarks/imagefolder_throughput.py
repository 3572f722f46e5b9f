"""ImageNet-style input pipeline throughput: decoded + augmented images per second.

Writes ``--images`` random JPEGs (sizes drawn around ImageNet's typical 500x375, a few
classes) into a temporary ``root/train/<class>/`` and ``root/val/<class>/`` folder, builds
the loaders with :func:`torch_isda.data.imagefolder.create_imagefolder_loaders` and, for
each worker count, times full passes over

* ``train``: Pillow decode + ``RandomResizedCrop(224)`` + horizontal flip + normalize,
* ``eval``: Pillow decode + resize the shorter side to 256 + ``CenterCrop(224)`` + normalize,

reporting images/s and images/s per worker (``workers=0`` decodes in the main process,
counted as one), plus the CPU time the decoding processes spent per image (read from
``/proc``; the worker processes', or the main process's with ``workers=0``) and its inverse,
images per CPU-second = what one dedicated core delivers. On a shared or oversubscribed
machine the wall-clock rates swing with the load; the CPU-time columns are the stable
figures. One untimed pass first starts the (persistent) workers and warms the file cache;
then the cases are timed in interleaved, alternating order and the table reports medians
of ``--repeats`` passes. A ``decode only`` row (``Image.open(...).convert("RGB")`` in the
main process) separates the JPEG decode from the transforms. The last column is what the
main process spends per image receiving worker batches.

Run: ``OMP_NUM_THREADS=1 python benchmarks/imagefolder_throughput.py`` (``--images 1024
--workers 0,1,2,4,8`` on a bigger machine). Prints a markdown table. Needs Pillow (the
``train`` extra).

To size a real run: the training loader must deliver the GPU's images/s, i.e. about
``(GPU images/s) / (images per CPU-second)`` dedicated cores of workers per GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _measure import markdown_table  # noqa: E402

from torch_isda.data.imagefolder import create_imagefolder_loaders  # noqa: E402


def make_image_folder(root: Path, images: int, classes: int, seed: int = 0,
                      quality: int = 90) -> dict[str, float]:
    """``images`` JPEGs per split (train and val) under ``root``, split evenly over
    ``classes`` class folders. Sizes: width ~ N(500, 60), height ~ N(375, 50) clipped to
    [256, 800]; content: a smooth random color field plus noise, so that the JPEGs have a
    realistic size (~100 KB at quality 90) rather than compressing to nothing."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = []
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(images):
            w = int(np.clip(rng.normal(500, 60), 256, 800))
            h = int(np.clip(rng.normal(375, 50), 256, 800))
            coarse = rng.integers(0, 256, (h // 32 + 2, w // 32 + 2, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
            pixels = np.asarray(img, dtype=np.int16) + rng.integers(-24, 25, (h, w, 3))
            img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            path = root / split / f"class{i % classes:03d}" / f"img{i:05d}.jpg"
            img.save(path, quality=quality)
            sizes.append(path.stat().st_size)
    return {"mean_kb": statistics.mean(sizes) / 1024}


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of process ``pid`` (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return float("nan")


def _worker_pids(loader) -> list[int]:
    iterator = getattr(loader, "_iterator", None)  # persistent workers live here
    return [w.pid for w in getattr(iterator, "_workers", [])]


def time_pass(loader) -> tuple[float, float, float]:
    """One full pass over ``loader``: wall seconds, CPU seconds of the main process and
    CPU seconds of the worker processes."""
    pids = _worker_pids(loader)
    w0 = sum(_proc_cpu_seconds(p) for p in pids)
    c0, t0 = time.process_time(), time.perf_counter()
    for _batch in loader:
        pass
    wall, main_cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, main_cpu, sum(_proc_cpu_seconds(p) for p in pids) - w0


def decode_pass(dataset) -> tuple[float, float, float]:
    """The bare decode (``Image.open(...).convert("RGB")``) in the main process."""
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(len(dataset)):
        dataset.load(i)
    return time.perf_counter() - t0, time.process_time() - c0, 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="JPEGs per split")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median)")
    parser.add_argument("--root", default=None,
                        help="reuse/keep this folder instead of a temporary one")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    workers_list = [int(w) for w in args.workers.split(",") if w.strip()]

    with tempfile.TemporaryDirectory(prefix="isda-imagefolder-") as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        t0 = time.perf_counter()
        if not (root / "train").is_dir():
            info = make_image_folder(root, args.images, args.classes)
            made = f"wrote {2 * args.images} JPEGs (mean {info['mean_kb']:.0f} KB)"
        else:
            made = "reused"
        print(f"{root}: {made} in {time.perf_counter() - t0:.1f} s", flush=True)

        # every (pipeline, workers) case keeps its loader (and persistent workers) alive;
        # cases are interleaved, in alternating order, so that load drifts hit all of them
        cases: list[tuple[str, int, object]] = []
        for workers in workers_list:
            loaders = create_imagefolder_loaders(
                root, args.batch_size, workers, args.image_size, seed=0, pin_memory=False,
                drop_last=False)
            if not cases:
                cases.append(("decode only", 0, loaders.data.train))
            cases += [("train", workers, loaders.train), ("eval", workers, loaders.val)]
        measure = {id(obj): (decode_pass if name == "decode only" else time_pass)
                   for name, _, obj in cases}
        for _name, _w, obj in cases:  # warm-up: start the workers, fill the page cache
            measure[id(obj)](obj)
        samples: dict[int, list[tuple[float, float, float]]] = {i: [] for i in range(len(cases))}
        for rep in range(args.repeats):
            order = range(len(cases)) if rep % 2 == 0 else reversed(range(len(cases)))
            for i in order:
                samples[i].append(measure[id(cases[i][2])](cases[i][2]))
            print(f"  pass {rep + 1}/{args.repeats} done", flush=True)

        rows = []
        for i, (name, workers, obj) in enumerate(cases):
            n = len(obj.dataset) if hasattr(obj, "dataset") else len(obj)
            wall = statistics.median(s[0] for s in samples[i])
            main_cpu = statistics.median(s[1] for s in samples[i])
            worker_cpu = statistics.median(s[2] for s in samples[i])
            cpu = worker_cpu if workers > 0 else main_cpu  # the decoding processes
            rate = n / wall
            rows.append([name, workers, f"{rate:.0f}", f"{rate / max(workers, 1):.0f}",
                         f"{1e3 * cpu / n:.1f}", f"{n / cpu:.0f}" if cpu > 0 else "-",
                         f"{1e3 * main_cpu / n:.1f}" if workers > 0 else "-"])
        cases.clear()  # shut the persistent workers down before the folder goes

    print()
    print(f"{args.images} images/split, {args.classes} classes, batch {args.batch_size}, "
          f"crop {args.image_size}, median of {args.repeats} interleaved passes; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print()
    print(markdown_table(
        ["pipeline", "workers", "images/s", "images/s per worker",
         "decode CPU ms/image", "images per CPU-second", "main-process CPU ms/image"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
