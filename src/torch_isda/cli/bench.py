"""``isda bench``: computational benchmarks of ISDA (``isda bench overhead``: Table 3).

``isda bench overhead`` lists, for every classification model of the registry at its
dataset's input size, the forward FLOPs (multiply-accumulates, Table 3's convention), the
theoretical extra cost of ISDA and its share, and the measured wall-time overhead of an
ISDA training step over a cross-entropy step (interleaved, median). See docs/analysis.md.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

__all__ = ["add_parser", "run"]

EPILOG = """\
Examples:

  isda bench overhead --threads 1     # FLOPs of all models; on a CPU times digits_cnn, resnet32
  isda bench overhead --models resnet32,resnet110 --repeats 20
  isda bench overhead --timed all --device cuda --amp bf16 --out runs/bench-gpu

On a CPU only digits_cnn and resnet32 are timed by default (a step of the large CIFAR
models takes seconds to minutes there); on a GPU every listed model is. Timings are cached
in OUT/timings/ and reused when the settings match (--force re-measures).
"""


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="benchmarks: 'overhead' (theoretical and wall-time cost of ISDA, Table 3)",
        description="Computational benchmarks of ISDA.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(_bench_parser=parser)
    subs = parser.add_subparsers(dest="bench", metavar="BENCH")
    p = subs.add_parser(
        "overhead", help="theoretical and measured overhead of ISDA per model (Table 3)",
        description="Forward FLOPs, ISDA's theoretical extra FLOPs and the measured wall-time "
                    "overhead of an ISDA training step vs a CE step, per model (Table 3; "
                    "ImageNet models as in Table 1).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, metavar="M1,M2",
                   help="models to list (default: every classification model of the registry)")
    p.add_argument("--timed", default=None, metavar="M1,M2|all|none",
                   help="models whose training step is timed (default: digits_cnn,resnet32 on a "
                        "CPU, all listed models on a GPU)")
    p.add_argument("--repeats", type=int, default=10,
                   help="timed steps per criterion, interleaved (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per criterion (default: 2)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size of the timed steps (default: the model family's preset)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                   help="autocast for the timed steps (default: none)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (torch.set_num_threads; default: torch's choice)")
    p.add_argument("--out", default="runs/bench-overhead", help="output directory")
    p.add_argument("--force", action="store_true", help="re-measure cached timings")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    return parser


def run(args: argparse.Namespace) -> int:
    if getattr(args, "bench", None) is None:
        args._bench_parser.print_help()
        return 2
    from ..analysis.overhead import run_overhead

    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0; got {args.repeats}, "
                         f"{args.warmup}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer; got {args.batch_size}")
    models = None if args.models is None else _names(args.models)
    if args.timed is None:
        timed = None
    elif args.timed.strip().lower() == "none":
        timed = []
    elif args.timed.strip().lower() == "all":
        from ..analysis.overhead import bench_cases

        timed = list(dict.fromkeys(c.model for c in bench_cases(models)))
    else:
        timed = _names(args.timed)
    t0 = time.perf_counter()
    result = run_overhead(args.out, models=models, timed=timed, repeats=args.repeats,
                          warmup=args.warmup, batch_size=args.batch_size, device=args.device,
                          amp=args.amp, threads=args.threads, force=args.force, quiet=args.quiet)
    print()
    print(result["table"])
    print(f"table: {result['table_md']} (csv: {result['table_csv']})")
    print(f"figure: {result['png']}")
    if not args.quiet:
        print(f"bench overhead: {time.perf_counter() - t0:.1f}s")
    return 0
