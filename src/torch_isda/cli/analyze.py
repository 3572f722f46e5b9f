"""``isda analyze``: the analyses of the paper's Section 6.5 (Figs. 8-11, Table 8).

Sub-commands: ``tightness`` (Fig. 9), ``explicit`` (Fig. 10), ``tsne`` (Fig. 8),
``sensitivity`` (Fig. 11), ``ablation`` (Table 8). Each trains its runs with the training
harness (any dataset/model and the usual training options; digits + digits_cnn by
default), caches them in ``--out`` like ``isda compare`` (re-running resumes an interrupted
sweep and reuses finished runs) and writes a PNG plus a markdown and a CSV table there.
See docs/analysis.md.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..train.config import add_config_arguments, config_overrides_from_args

__all__ = ["ANALYSES", "add_parser", "run"]

EPILOG = """\
Examples (digits, a few minutes each on 2 CPU cores):

  isda analyze tightness                  # Fig. 9: bound vs Monte Carlo expected loss
  isda analyze explicit                   # Fig. 10: explicit SDA (M samples) vs ISDA, Cov baseline
  isda analyze tsne                       # Fig. 8: t-SNE of CE vs ISDA features
  isda analyze sensitivity                # Fig. 11: error vs lambda0
  isda analyze ablation                   # Table 8
  isda analyze sensitivity --dataset cifar100 --download --model wrn28_10 \\
      --augment crop_flip+cutout --seeds 5 --amp bf16 --out runs/sens-c100-wrn
"""

#: ``(name, help, paper item)``.
ANALYSES = (
    ("tightness", "ISDA bound vs Monte Carlo expected loss during training", "Fig. 9"),
    ("explicit", "explicit semantic augmentation with M samples vs ISDA (+ learned Cov)",
     "Fig. 10"),
    ("tsne", "t-SNE of test-set deep features, CE vs ISDA", "Fig. 8"),
    ("sensitivity", "test error vs lambda0, mean ± std over seeds", "Fig. 11"),
    ("ablation", "identity / diagonal / single covariance / constant lambda vs ISDA", "Table 8"),
)


#: Options no analysis uses: analyses train in one process.
MULTI_PROCESS_OPTIONS = ("isda_sync", "sync_bn", "dist_backend", "dist_timeout")
#: Options of the semi-supervised and segmentation tasks, left out of the help (and the
#: parser) of the analyses that train supervised classifiers only.
OTHER_TASK_OPTIONS = ("semi", "labels", "split_seed", "val_fraction", "eta1", "eta2",
                      "labeled_batch_size", "unlabeled_batch_size", "zca", "semi_translate",
                      "semi_kwargs", "task", "crop_size", "eval_scales", "seg_loss_at",
                      "aux_weight")


def _common(parser: argparse.ArgumentParser, *, seeds: bool) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("analysis")
    group.add_argument("--out", default=None, metavar="DIR",
                       help="output directory (default: runs/analyze-<name> for digits, else "
                            "runs/analyze-<name>-<dataset>-<model>)")
    if seeds:
        group.add_argument("--seeds", default=None, metavar="N|S1,S2",
                           help="number of seeds (0..N-1) or a list (default: 2 for the digits "
                                "default, 5 otherwise)")
    group.add_argument("--force", action="store_true", help="retrain finished runs")
    group.add_argument("--quiet", action="store_true", help="print only the table")
    return group


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "analyze", help="analyses of Section 6.5: tightness, explicit, tsne, sensitivity, ablation",
        description="Analyses of the ISDA paper (Section 6.5): each writes a PNG and a markdown "
                    "+ CSV table into --out.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")
    parser.set_defaults(_analyze_parser=parser)

    _add_tightness_parser(subs)
    _add_explicit_parser(subs)
    _add_tsne_parser(subs)
    _add_sensitivity_parser(subs)
    _add_ablation_parser(subs)
    return parser


def _add_tightness_parser(subs: Any) -> None:
    p = subs.add_parser("tightness", help=f"{ANALYSES[0][1]} ({ANALYSES[0][2]})",
                        description="Train one ISDA run and record, every --every steps, the ISDA "
                                    "bound (Eq. 7) and the Monte Carlo expected cross-entropy "
                                    "(Eq. 6) on the current batch (Fig. 9).")
    g = _common(p, seeds=False)
    g.add_argument("--every", type=int, default=None, metavar="STEPS",
                   help="record every STEPS training steps (default: ~100 records per run)")
    g.add_argument("--samples", type=int, default=1000,
                   help="Monte Carlo samples per feature (default: 1000, as in the paper)")
    add_config_arguments(p, exclude=("out", *MULTI_PROCESS_OPTIONS, *OTHER_TASK_OPTIONS),
                         title="training configuration")


def _add_explicit_parser(subs: Any) -> None:
    p = subs.add_parser("explicit", help=f"{ANALYSES[1][1]} ({ANALYSES[1][2]})",
                        description="Train with explicit semantic data augmentation (Eq. 5, M "
                                    "sampled features per sample) for each M, the CE baseline "
                                    "(M = 0), ISDA (M = infinity) and the learned-covariance "
                                    "'Cov' baseline (Fig. 10).")
    g = _common(p, seeds=True)
    g.add_argument("--ms", default="1,2,5,10,20", metavar="M1,M2",
                   help="sample numbers M (default: 1,2,5,10,20; 0 and infinity always included)")
    g.add_argument("--no-learned", dest="learned", action="store_false",
                   help="skip the learned-covariance (Cov) baseline")
    g.add_argument("--cov-args", default="", metavar="K=V,...",
                   help="extra learned_cov arguments, e.g. beta=0.5,std=0.2 (its feature-"
                        "uncertainty weight and entropy margin)")
    add_config_arguments(p, exclude=("loss", "seed", "out", *MULTI_PROCESS_OPTIONS),
                         title="training configuration (applies to every run)")


def _add_tsne_parser(subs: Any) -> None:
    p = subs.add_parser("tsne", help=f"{ANALYSES[2][1]} ({ANALYSES[2][2]})",
                        description="Train (or reuse) a CE and an ISDA model and draw t-SNE "
                                    "embeddings of their test-set deep features side by side "
                                    "(Fig. 8).")
    g = _common(p, seeds=False)
    g.add_argument("--losses", default="ce,isda", metavar="SPEC,SPEC",
                   help="criteria to compare (default: ce,isda)")
    g.add_argument("--max-points", type=int, default=2000,
                   help="embed at most this many test samples (a fixed random subset; "
                        "default: 2000)")
    g.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default: 30)")
    add_config_arguments(p, exclude=("loss", "out", *MULTI_PROCESS_OPTIONS),
                         title="training configuration (applies to every run)")


def _add_sensitivity_parser(subs: Any) -> None:
    p = subs.add_parser("sensitivity", help=f"{ANALYSES[3][1]} ({ANALYSES[3][2]})",
                        description="Train ISDA for every lambda0 of the grid and every seed "
                                    "(Fig. 11).")
    g = _common(p, seeds=True)
    g.add_argument("--lambdas", default="0,0.1,0.25,0.5,0.75,1,2.5,5,10", metavar="L1,L2",
                   help="lambda0 grid (default: the paper's 0,0.1,0.25,0.5,0.75,1,2.5,5,10; "
                        "0 is the CE baseline)")
    add_config_arguments(p, exclude=("loss", "seed", "out", "lambda0", *MULTI_PROCESS_OPTIONS),
                         title="training configuration (applies to every run)")


def _add_ablation_parser(subs: Any) -> None:
    p = subs.add_parser("ablation", help=f"{ANALYSES[4][1]} ({ANALYSES[4][2]})",
                        description="Basic CE, identity matrix, diagonal matrix, single "
                                    "covariance, constant lambda0 and full ISDA over seeds "
                                    "(Table 8).")
    _common(p, seeds=True)
    add_config_arguments(p, exclude=("loss", "seed", "out", "kind", "constant_lambda",
                                     *MULTI_PROCESS_OPTIONS, *OTHER_TASK_OPTIONS),
                         title="training configuration (applies to every run)")


def run(args: argparse.Namespace) -> int:
    from ..analysis import common

    name = getattr(args, "analysis", None)
    if name is None:
        args._analyze_parser.print_help()
        return 2
    base = common.base_config(config_overrides_from_args(args))
    out = args.out or common.default_out(name, base)
    seeds = getattr(args, "seeds", None)
    if seeds is None:
        seeds = common.default_seeds(base)
    t0 = time.perf_counter()
    kwargs = {"force": args.force, "quiet": args.quiet}
    if name == "tightness":
        from ..analysis.tightness import run_tightness

        result = run_tightness(base, out, every=args.every, samples=args.samples, **kwargs)
        png, md, csv = result["png"], result["table_md"], result["table_csv"]
    else:
        if name == "explicit":
            from ..analysis.explicit import run_explicit

            result = run_explicit(base, out, ms=args.ms, seeds=seeds, learned=args.learned,
                                  cov_args=args.cov_args, **kwargs)
        elif name == "tsne":
            from ..analysis.tsne import run_tsne

            result = run_tsne(base, out, losses=args.losses, seed=base.seed,
                              max_points=args.max_points, perplexity=args.perplexity, **kwargs)
        elif name == "sensitivity":
            from ..analysis.sensitivity import run_sensitivity

            result = run_sensitivity(base, out, lambdas=args.lambdas, seeds=seeds, **kwargs)
        else:
            from ..analysis.ablation import run_ablation

            result = run_ablation(base, out, seeds=seeds, **kwargs)
        png, md, csv = result["png"], result["table_md"], result["table_csv"]
    print()
    print(result["table"])
    print(f"table: {md} (csv: {csv})")
    print(f"figure: {png}")
    if not args.quiet:
        print(f"{name}: {time.perf_counter() - t0:.1f}s")
    return 0
