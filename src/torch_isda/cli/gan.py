"""``isda gan train``: train the WGAN-GP generator that ``isda visualize`` inverts.

Wraps :func:`torch_isda.visualize.gan.train_gan` on a dataset of the harness
(:func:`torch_isda.data.create_dataset`). The output directory holds ``gan.pt`` (generator,
critic, optimisers, RNG state, loss history), ``samples.png`` (8 x 8 samples from fixed
noise) and ``gan_log.jsonl``; running the command again on the same directory resumes from
``gan.pt`` up to ``--iterations`` (``--force`` starts over). See docs/visualization.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from ..train.arg_types import non_negative_int, positive_int

#: ``--kind`` values: the class-agnostic WGAN-GP, then
#: :data:`torch_isda.visualize.conditional_gan.CONDITIONAL_KINDS` (kept light: no torch import
#: while ``isda --help`` builds the parser; a test checks they agree).
KINDS = ("wgan-gp", "wgan-per-class", "cgan", "acgan", "infogan")

__all__ = ["KINDS", "add_parser", "run", "run_train"]

EPILOG = """\
Examples:

  isda gan train                                  # digits, 3,000 iterations (~2 min on 2 CPU cores)
  isda gan train --dataset digits --out runs/gan-digits --iterations 5000   # continue to 5,000
  isda gan train --dataset cifar10 --download --out runs/gan-cifar10 --device cuda
                                                  # 32x32 DCGAN WGAN-GP, 100,000 iterations
  isda gan train --kind acgan --out runs/acgan-digits
                                                  # class-conditional (Table 5's baselines)
  isda gan train --kind wgan-per-class --out runs/wgan-per-class-digits

--kind wgan-gp (default) trains the class-agnostic generator that `isda visualize` inverts;
wgan-per-class, cgan, acgan and infogan train the class-conditional generators of Table 5
(100-d normal noise; infogan adds 2 continuous codes), used by `--losses ce+gan_augment(generator=RUN)`.

Running the command again on an --out that holds gan.pt resumes it (up to --iterations);
the architecture and optimiser settings are those saved in gan.pt. --force starts over.
"""

#: options whose value is saved in gan.pt: given explicitly on a resume they must agree.
_SAVED = {"z_dim": "z_dim", "arch": "arch", "dim": "dim", "lr": "lr", "batch_size": "batch_size",
          "n_critic": "n_critic", "gp_weight": "gp_weight", "seed": "seed"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "gan", help="train the generators of `isda visualize` and of Table 5's GAN baselines",
        description="Generative models for the visualisation of ISDA's augmentations "
                    "(Wang et al., TPAMI 2021, Appendix E) and for the generator-based "
                    "augmentation baselines of Table 5 (Appendix C).")
    sub = parser.add_subparsers(dest="gan_command", metavar="ACTION")
    sub.required = True
    train = sub.add_parser(
        "train", help="train (or resume) a GAN on a dataset's training images",
        description="Train a WGAN-GP (Gulrajani et al., 2017) on the training images of a dataset "
                    "(--kind wgan-gp), or a class-conditional generator (--kind wgan-per-class, "
                    "cgan, acgan, infogan): an MLP generator for images up to 16x16 (digits), "
                    "the DCGAN-style CIFAR networks for larger ones. Writes gan.pt, samples.png "
                    "and gan_log.jsonl.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_arguments(train)
    gan = train.add_argument_group("GAN (unset: the defaults of torch_isda.visualize.gan / .conditional_gan)")
    gan.add_argument("--kind", choices=KINDS, default="wgan-gp",
                     help="wgan-gp: class-agnostic WGAN-GP (for isda visualize; default); "
                          "wgan-per-class: one WGAN-GP per class; cgan, acgan, infogan: one "
                          "class-conditional model (Table 5's generator-based baselines)")
    gan.add_argument("--iterations", type=positive_int, default=None,
                     help="generator iterations in total (each after --n-critic critic steps); "
                          "default 3000 for the mlp architecture (digits), 100000 for dcgan; "
                          "cgan/acgan/infogan: 3000 / 50000; wgan-per-class: per class, 1000 (mlp)")
    gan.add_argument("--batch-size", type=positive_int, default=None, help="batch size (64)")
    gan.add_argument("--z-dim", type=int, default=None,
                     help="latent dimension (128; 100 for the class-conditional kinds)")
    gan.add_argument("--arch", choices=("mlp", "dcgan"), default=None,
                     help="architecture (default: mlp up to 16x16 pixels, else dcgan)")
    gan.add_argument("--dim", type=positive_int, default=None,
                     help="width: hidden units (mlp, 256) or DIM channels (dcgan, 128)")
    gan.add_argument("--lr", type=float, default=None,
                     help="Adam learning rate (mlp 1e-3, dcgan 1e-4)")
    gan.add_argument("--n-critic", type=positive_int, default=None,
                     help="critic steps per generator step (5)")
    gan.add_argument("--gp-weight", type=float, default=None, help="gradient-penalty weight (10)")
    gan.add_argument("--lr-decay", action="store_true",
                     help="decay the learning rates linearly to 0 (new runs only)")
    _add_control_arguments(train)
    train.set_defaults(_gan_run=run_train)
    return parser


def _add_data_arguments(train: argparse.ArgumentParser) -> None:
    data = train.add_argument_group("data")
    data.add_argument("--dataset", default="digits",
                      help="dataset name (torch_isda.data.list_datasets(); default: digits)")
    data.add_argument("--data-dir", default="data", help="directory of the dataset files")
    data.add_argument("--download", action="store_true", help="download missing dataset files")
    data.add_argument("--dataset-kwargs", default=None, metavar="KW",
                      help="extra dataset options, JSON or key=value[,key=value]")


def _add_control_arguments(train: argparse.ArgumentParser) -> None:
    ctl = train.add_argument_group("run control")
    ctl.add_argument("--out", default=None,
                     help="output directory (default: runs/gan-<dataset>)")
    ctl.add_argument("--seed", type=int, default=None, help="random seed (0)")
    ctl.add_argument("--device", default="auto",
                     help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', ...")
    ctl.add_argument("--threads", type=positive_int, default=None,
                     help="CPU threads for torch ops (default: torch's choice)")
    ctl.add_argument("--sample-every", type=non_negative_int, default=500,
                     help="rewrite samples.png and gan.pt every this many iterations (500; 0: at the end)")
    ctl.add_argument("--force", action="store_true",
                     help="start over even if --out holds gan.pt")
    ctl.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    args.command = f"{args.command} {args.gan_command}"  # errors read "isda gan train: error: ..."
    return args._gan_run(args)


def _dataset_kwargs(text: Optional[str]) -> dict:
    if not text:
        return {}
    from ..train.config import parse_kwargs

    return parse_kwargs(text)


def load_image_dataset(name: str, data_dir: str, download: bool, kwargs: dict) -> Any:
    """``create_dataset(name, ...)``, checked to be an in-memory ImageDataset."""
    from ..data import ImageDataset, create_dataset

    data = create_dataset(name, root=data_dir, download=download, **kwargs)
    if not isinstance(data, ImageDataset):
        raise ValueError(f"dataset {name!r} is not an in-memory image dataset "
                         f"({type(data).__name__}); the GAN and the visualisation need one "
                         f"(digits, cifar10, cifar100, svhn, ...)")
    return data


def _check_resume(args: argparse.Namespace, ckpt: Path, dataset_name: str,
                  image_shape: tuple) -> Optional[dict]:
    """The saved checkpoint when resuming, after checking it fits the request."""
    from ..visualize.gan import GANConfig, load_gan_checkpoint

    state = load_gan_checkpoint(ckpt)
    config = GANConfig(**state["config"])
    saved_name = str(state.get("dataset", ""))
    if tuple(config.image_shape) != tuple(image_shape) or (saved_name and saved_name != dataset_name):
        raise ValueError(
            f"'{ckpt}' was trained on {saved_name or 'another dataset'} "
            f"{'x'.join(map(str, config.image_shape))} images, not {dataset_name} "
            f"{'x'.join(map(str, image_shape))}; use another --out or --force to start over")
    saved = {"z_dim": config.z_dim, "arch": config.arch, "dim": config.dim, "lr": config.lr,
             "batch_size": config.batch_size, "n_critic": config.n_critic,
             "gp_weight": config.gp_weight, "seed": int(state.get("seed", 0))}
    diffs = []
    for option, key in _SAVED.items():
        value = getattr(args, option)
        if value is not None and value != saved[key]:
            diffs.append(f"--{option.replace('_', '-')} {value} (saved: {saved[key]})")
    if args.lr_decay and not config.lr_decay:
        diffs.append("--lr-decay (saved: off)")
    if diffs:
        raise ValueError(
            f"'{ckpt}' exists with other settings: {', '.join(diffs)}; resuming keeps the saved "
            f"settings: drop these options, use another --out, or --force to start over")
    return state


def run_train(args: argparse.Namespace) -> int:
    from ..train.seeding import num_threads
    from ..train.parallel import resolve_device
    from ..visualize.gan import CHECKPOINT_NAME, DCGAN_ITERATIONS, DIGITS_ITERATIONS, LOG_NAME, SAMPLES_NAME, train_gan

    kind = getattr(args, "kind", "wgan-gp")
    default_out = f"runs/gan-{args.dataset}" if kind == "wgan-gp" else f"runs/{kind}-{args.dataset}"
    out = Path(args.out or default_out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out '{out}' exists and is not a directory")
    device = resolve_device(args.device)
    data = load_image_dataset(args.dataset, args.data_dir, args.download,
                              _dataset_kwargs(args.dataset_kwargs))
    if kind != "wgan-gp":
        return _run_conditional(args, kind, out, data, device)
    image_shape = tuple(int(s) for s in data.train_images.shape[1:])
    ckpt = out / CHECKPOINT_NAME
    state = None
    if ckpt.exists() and not args.force:
        state = _check_resume(args, ckpt, data.name, image_shape)
    if args.force:
        for name in (CHECKPOINT_NAME, LOG_NAME, SAMPLES_NAME):
            (out / name).unlink(missing_ok=True)

    iterations = args.iterations
    if iterations is None and state is not None:
        arch = state["config"]["arch"]
        iterations = DIGITS_ITERATIONS if arch == "mlp" else DCGAN_ITERATIONS
    if state is not None and iterations is not None and iterations < int(state["iteration"]):
        raise ValueError(f"'{ckpt}' already has {state['iteration']} iterations, more than "
                         f"--iterations {iterations}; use --force to start over")
    if state is not None and not args.quiet:
        if int(state["iteration"]) >= iterations:
            print(f"'{ckpt}' already has {state['iteration']} iterations (>= {iterations}): "
                  f"nothing to do (pass a larger --iterations to continue)", file=sys.stderr)

    kwargs: dict[str, Any] = {}
    for option in ("arch", "dim", "lr", "n_critic", "gp_weight"):
        value = getattr(args, option)
        if value is not None:
            kwargs[option] = value
    with num_threads(args.threads):
        train_gan(
            data, out, iterations=iterations,
            batch_size=args.batch_size if args.batch_size is not None else 64,
            z_dim=args.z_dim if args.z_dim is not None else 128,
            seed=args.seed if args.seed is not None else 0, device=device, progress=not args.quiet,
            sample_every=args.sample_every, lr_decay=args.lr_decay, resume=not args.force,
            **kwargs)
    done = _saved_iteration(ckpt)
    print(f"generator: {done} iterations on {data.name} {'x'.join(map(str, image_shape))} images "
          f"-> {ckpt}, {out / SAMPLES_NAME}")
    return 0


def _run_conditional(args: argparse.Namespace, kind: str, out: Path, data: Any, device: Any) -> int:
    """``isda gan train --kind wgan-per-class|cgan|acgan|infogan``."""
    import shutil

    from ..train.seeding import num_threads
    from ..visualize.conditional_gan import load_conditional_checkpoint, train_conditional_gan

    if args.force and out.exists():
        for path in [out / "gan.pt", out / "gan_log.jsonl", out / "samples.png",
                     *sorted(out.glob("class_[0-9][0-9]"))]:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    if kind == "wgan-per-class":
        unsupported = [o for o in ("lr_decay",) if getattr(args, o)]
    else:
        unsupported = [o for o in ("n_critic", "gp_weight") if getattr(args, o) is not None]
        unsupported += ["lr_decay"] if args.lr_decay else []
    if unsupported:
        raise ValueError(f"--{unsupported[0].replace('_', '-')} does not apply to --kind {kind}")
    if (out / "gan.pt").exists() and not args.force:
        _check_conditional_resume(args, out / "gan.pt", kind)
    wgan_options = {o: getattr(args, o) for o in ("n_critic", "gp_weight", "lr")
                    if getattr(args, o) is not None} if kind == "wgan-per-class" else {}
    kwargs: dict[str, Any] = {}
    for option in ("arch", "dim", "batch_size", "z_dim"):
        if getattr(args, option) is not None:
            kwargs[option] = getattr(args, option)
    if kind != "wgan-per-class":
        kwargs["checkpoint_every"] = args.sample_every  # gan.pt rewritten this often
        if args.lr is not None:
            kwargs["lr"] = args.lr
    with num_threads(args.threads):
        train_conditional_gan(data, out, kind, iterations=args.iterations,
                              seed=args.seed if args.seed is not None else 0, device=device,
                              progress=not args.quiet, resume=not args.force,
                              wgan_options=wgan_options, **kwargs)
    done = int(load_conditional_checkpoint(out)["iteration"])
    image_shape = tuple(int(s) for s in data.train_images.shape[1:])
    print(f"{kind} generator: {done} iterations on {data.name} {'x'.join(map(str, image_shape))} "
          f"images, {data.num_classes} classes -> {out / 'gan.pt'}, {out / 'samples.png'}")
    return 0


def _check_conditional_resume(args: argparse.Namespace, ckpt: Path, kind: str) -> None:
    """Resuming keeps the saved settings: explicit options that differ are an error."""
    from ..visualize.conditional_gan import load_conditional_checkpoint

    state = load_conditional_checkpoint(ckpt)
    config = state["config"]
    if config["kind"] != kind:
        raise ValueError(f"'{ckpt}' holds a {config['kind']} GAN, not {kind}; use another --out "
                         f"or --force to start over")
    saved = {"z_dim": config["z_dim"], "arch": config["arch"], "dim": config["dim"],
             "batch_size": config["batch_size"], "seed": int(state.get("seed", 0))}
    if kind != "wgan-per-class":
        saved["lr"] = config["lr"]
    diffs = [f"--{o.replace('_', '-')} {getattr(args, o)} (saved: {v})" for o, v in saved.items()
             if getattr(args, o) is not None and getattr(args, o) != v]
    if diffs:
        raise ValueError(f"'{ckpt}' exists with other settings: {', '.join(diffs)}; resuming keeps "
                         f"the saved settings: drop these options, use another --out, or --force "
                         f"to start over")


def _saved_iteration(ckpt: Path) -> int:
    from ..visualize.gan import load_gan_checkpoint

    return int(load_gan_checkpoint(ckpt)["iteration"])
