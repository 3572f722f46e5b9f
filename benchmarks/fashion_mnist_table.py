"""Per-seed table of a CE-vs-ISDA sweep laid out as ``OUT/<loss>/seed<k>/`` (the layout of
``isda compare``), finished or still running.

For every method: the test error of the last epoch (the model at the end of the cosine
schedule; with runs of 10-20 epochs this is the number to read), the paper's rule (mean
test error of the last 10 epochs, Section 6.1, which for such short runs averages in the
early epochs), the best epoch, and the paired ISDA - CE difference over the seeds both
methods finished. Unfinished runs are listed with the epochs they have done and left out
of the means. Also the mean test-error curve per method (one column per epoch) and the
final train loss/error (to see over- or under-fitting).

Only the standard library: it reads ``metrics.json``, ``result.json`` and ``config.json``.

Usage: ``python benchmarks/fashion_mnist_table.py OUT [--write OUT/summary.md]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect(out: Path) -> dict[str, dict[int, dict]]:
    """``{loss: {seed: run}}`` with ``run`` = rows, result (or None), config (or None)."""
    runs: dict[str, dict[int, dict]] = {}
    for loss_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        for seed_dir in sorted(loss_dir.glob("seed*")):
            try:
                seed = int(seed_dir.name[4:])
            except ValueError:
                continue
            rows = _read(seed_dir / "metrics.json")
            if not rows:
                continue
            runs.setdefault(loss_dir.name, {})[seed] = {
                "rows": rows,
                "result": _read(seed_dir / "result.json"),
                "config": (_read(seed_dir / "config.json") or {}).get("config"),
            }
    return runs


def _pm(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def _err(row: dict) -> float:
    value = row.get("test_error")
    return math.nan if value is None else float(value)


def render(out: Path) -> str:
    runs = collect(out)
    if not runs:
        return f"no runs with metrics under {out}\n"
    order = sorted(runs, key=lambda name: (name != "ce", name))
    lines = [f"Runs under `{out}`; test errors in %, mean ± sample std over finished seeds.", ""]
    any_cfg = next((r["config"] for m in order for r in runs[m].values() if r["config"]), None)
    if any_cfg:
        lines += [f"Config: dataset {any_cfg.get('dataset')} "
                  f"{json.dumps(any_cfg.get('dataset_kwargs') or {})}, model "
                  f"{any_cfg.get('model')} {json.dumps(any_cfg.get('model_kwargs') or {})}, "
                  f"{any_cfg.get('epochs')} epochs, batch {any_cfg.get('batch_size')}, lr "
                  f"{any_cfg.get('lr')} {any_cfg.get('lr_schedule')}, wd "
                  f"{any_cfg.get('weight_decay')}, lambda0 {any_cfg.get('lambda0')}, amp "
                  f"{any_cfg.get('amp')}, device {any_cfg.get('device')}.", ""]
    lines += ["| method | finished seeds | last-epoch error | last-10-epochs error (paper rule) "
              "| best-epoch error | last-epoch error per seed | train loss / error at the end "
              "| s per epoch |",
              "|---|---|---|---|---|---|---|---|"]
    finished_last: dict[str, dict[int, float]] = {}
    for method in order:
        last, final, best, per_seed, train_loss, train_err, secs = [], [], [], [], [], [], []
        for seed, run in sorted(runs[method].items()):
            rows, result = run["rows"], run["result"]
            epochs = (run["config"] or {}).get("epochs") or len(rows)
            secs += [float(r.get("seconds") or 0.0) for r in rows]
            if result is None:
                per_seed.append(f"s{seed}: running ({len(rows)}/{epochs} ep, "
                                f"{_err(rows[-1]):.2f})")
                continue
            errors = [_err(r) for r in rows]
            last.append(errors[-1])
            final.append(sum(errors[-10:]) / len(errors[-10:]))
            best.append(min(errors))
            train_loss.append(float(rows[-1]["train_loss"]))
            train_err.append(float(rows[-1]["train_error"]))
            per_seed.append(f"s{seed}: {errors[-1]:.2f}")
            finished_last.setdefault(method, {})[seed] = errors[-1]
        train = (f"{statistics.fmean(train_loss):.3f} / {statistics.fmean(train_err):.2f}"
                 if train_loss else "-")
        spe = f"{statistics.fmean(secs):.1f}" if secs else "-"
        lines.append(f"| {method} | {len(last)} | {_pm(last)} | {_pm(final)} | {_pm(best)} | "
                     f"{', '.join(per_seed)} | {train} | {spe} |")
    if "ce" in finished_last:
        for method in order:
            if method == "ce" or method not in finished_last:
                continue
            paired = sorted(set(finished_last["ce"]) & set(finished_last[method]))
            diffs = [finished_last[method][s] - finished_last["ce"][s] for s in paired]
            if diffs:
                wins = sum(d < 0 for d in diffs)
                lines += ["", f"Paired {method} - ce, last-epoch error over seeds "
                          f"{', '.join(map(str, paired))}: {_pm(diffs)} points "
                          f"({method} lower on {wins} of {len(diffs)})."]
    lines += ["", "Mean test error (%) per epoch over the runs that reached it:", ""]
    longest = max(len(r["rows"]) for m in order for r in runs[m].values())
    lines += ["| method | " + " | ".join(str(e) for e in range(1, longest + 1)) + " |",
              "|---|" + "---|" * longest]
    for method in order:
        cells = []
        for e in range(longest):
            values = [_err(r["rows"][e]) for r in runs[method].values() if len(r["rows"]) > e]
            cells.append(f"{statistics.fmean(values):.2f}" if values else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory holding <loss>/seed<k>/ runs")
    parser.add_argument("--write", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        print(f"error: {args.out} is not a directory", file=sys.stderr)
        return 2
    text = render(args.out)
    if args.write is not None:
        _atomic_write(args.write, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
