"""``isda visualize``: show ISDA's semantic augmentations in pixel space (TPAMI 2021, App. E).

Loads a classifier trained by ``isda train`` (model rebuilt from ``RUN_DIR/config.json``,
weights and the ISDA covariance estimate from ``RUN_DIR/checkpoint.pt``) and a generator
trained by ``isda gan train``, then runs the two-step inversion of
:mod:`torch_isda.visualize.inversion` (Step I, Eq. 20: a latent whose image matches a real
image in feature and pixel space; Step II, Eq. 21: latents whose images have the
ISDA-augmented features ``a~ ~ N(a, lambda Sigma_y)``) and writes ``augmented.png``,
``neighbours.png`` and ``visualization.json``. See docs/visualization.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from ..train.arg_types import non_negative_float, non_negative_int, positive_int

__all__ = ["add_parser", "run", "load_classifier", "find_estimator", "estimate_covariance"]

EPILOG = """\
Example (digits, about a minute on 2 CPU cores):

  isda train --dataset digits --loss isda --out runs/digits-isda
  isda gan train --dataset digits --out runs/gan-digits
  isda visualize --classifier runs/digits-isda --generator runs/gan-digits --out runs/vis-digits

The covariance comes from the run's ISDA estimator (checkpoint.pt). For a run trained
without ISDA (e.g. --loss ce) pass --estimate-covariance: the class-conditional
covariances are then computed from the trained model's features of the training set.
The paper's optimiser settings are --step1-iterations 10000 --step1-lr 10
--step2-iterations 10000 --step2-lr 1 --restarts 1 (the defaults are tuned for digits).

ImageNet (Figs. 7 and 14) with BigGAN, for a run trained on an imagefolder dataset:

  isda visualize --classifier runs/imagenet-resnet50-isda --generator biggan \
      --biggan-model biggan-deep-256 --truncation 0.4 --out runs/vis-imagenet
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "visualize", help="map ISDA-augmented features back to images with a trained generator",
        description="Visualise ISDA's semantic augmentations (Wang et al., TPAMI 2021, Appendix E): "
                    "invert a trained generator to reconstruct test images in a classifier's "
                    "feature space (Step I, Eq. 20), augment their features with ISDA and find "
                    "the images of the augmented features (Step II, Eq. 21).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_input_output_arguments(parser)
    _add_augmentation_arguments(parser)
    _add_biggan_arguments(parser)
    _add_inversion_arguments(parser)
    _add_control_arguments(parser)
    return parser


def _add_input_output_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--classifier", required=True, metavar="RUN_DIR",
                    help="an `isda train` run directory (config.json, checkpoint.pt)")
    io.add_argument("--generator", required=True, metavar="GAN_DIR|biggan",
                    help="an `isda gan train` directory (gan.pt), or 'biggan': the pretrained "
                         "ImageNet BigGAN of pytorch-pretrained-biggan (imagefolder runs; "
                         "pip install 'torch-isda[biggan]')")
    io.add_argument("--out", default=None, metavar="DIR",
                    help="output directory (default: runs/vis-<classifier run name>)")
    io.add_argument("--data-dir", default=None,
                    help="dataset directory (default: the run's --data-dir)")
    io.add_argument("--download", action="store_true", help="download missing dataset files")


def _add_augmentation_arguments(parser: argparse.ArgumentParser) -> None:
    aug = parser.add_argument_group("augmentation")
    aug.add_argument("--lam", type=non_negative_float, default=0.5,
                     help="lambda of a~ ~ N(a, lambda Sigma_y) (0.5)")
    aug.add_argument("--num-samples", type=positive_int, default=10,
                     help="images to show, cycling through the classes (10)")
    aug.add_argument("--num-augmented", type=positive_int, default=4,
                     help="augmented images per sample (4)")
    aug.add_argument("--split", choices=("test", "train"), default="test",
                     help="where the shown images come from (test)")
    aug.add_argument("--num-neighbours", type=non_negative_int, default=5,
                     help="nearest training images shown per augmented image (5; 0: none)")
    aug.add_argument("--estimate-covariance", action="store_true",
                     help="compute the class covariances from the trained model's training-set "
                          "features (eval mode) instead of the run's ISDA estimate; needed for "
                          "runs trained without ISDA")
    aug.add_argument("--kind", default=None,
                     help="covariance kind for --estimate-covariance: full, diagonal, shared, "
                          "identity, lowrank (default: the run's --kind, else full)")


def _add_biggan_arguments(parser: argparse.ArgumentParser) -> None:
    big = parser.add_argument_group("BigGAN (--generator biggan)")
    big.add_argument("--biggan-model", default="biggan-deep-256", metavar="NAME|DIR",
                     help="biggan-deep-128, biggan-deep-256 (default) or biggan-deep-512 "
                          "(downloaded on first use), or a directory with config.json and "
                          "pytorch_model.bin")
    big.add_argument("--truncation", type=float, default=0.4,
                     help="BigGAN truncation in (0, 1] (0.4)")
    big.add_argument("--biggan-classes", default=None, metavar="LIST",
                     help="BigGAN's ImageNet class of each dataset class, comma-separated "
                          "(default: the identity, for a dataset with ImageNet's 1000 classes)")


def _add_inversion_arguments(parser: argparse.ArgumentParser) -> None:
    from ..visualize.inversion import (
        STEP1_ITERATIONS,
        STEP1_LR,
        STEP2_ITERATIONS,
        STEP2_LR,
        VISUALIZE_RESTARTS,
    )

    opt = parser.add_argument_group("inversion (defaults tuned for digits; see the epilog)")
    opt.add_argument("--step1-iterations", type=non_negative_int, default=STEP1_ITERATIONS,
                     help=f"Step I (Eq. 20) SGD iterations ({STEP1_ITERATIONS}; paper 10000)")
    opt.add_argument("--step2-iterations", type=non_negative_int, default=STEP2_ITERATIONS,
                     help=f"Step II (Eq. 21) SGD iterations ({STEP2_ITERATIONS}; paper 10000)")
    opt.add_argument("--step1-lr", type=float, default=STEP1_LR,
                     help=f"Step I learning rate ({STEP1_LR:g}; paper 10)")
    opt.add_argument("--step2-lr", type=float, default=STEP2_LR,
                     help=f"Step II learning rate ({STEP2_LR:g}; paper 1)")
    opt.add_argument("--restarts", type=positive_int, default=VISUALIZE_RESTARTS,
                     help=f"random starts of Step I per image, the best kept "
                          f"({VISUALIZE_RESTARTS}; paper 1)")
    opt.add_argument("--eta", type=non_negative_float, default=1.0,
                     help="weight of the pixel term of Eq. 20 (1.0; not given in the paper)")
    opt.add_argument("--reduction", choices=("mean", "sum"), default="mean",
                     help="'mean': mean squared errors (default); 'sum': squared L2 norms")


def _add_control_arguments(parser: argparse.ArgumentParser) -> None:
    ctl = parser.add_argument_group("run control")
    ctl.add_argument("--seed", type=int, default=0,
                     help="seeds the image choice, the latents and the feature sampling (0)")
    ctl.add_argument("--device", default="auto",
                     help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', ...")
    ctl.add_argument("--threads", type=positive_int, default=None,
                     help="CPU threads for torch ops (default: torch's choice)")
    ctl.add_argument("--quiet", action="store_true", help="no progress lines")


# ---------------------------------------------------------------------------- loading


def _require_dir(path: Path, what: str, hint: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} '{path}' does not exist ({hint})")
    if not path.is_dir():
        raise FileNotFoundError(f"{what} '{path}' is not a directory ({hint})")


def load_classifier(run_dir: Path, device: Any, data_dir: Optional[str] = None,
                    download: bool = False, allow_imagefolder: bool = False
                    ) -> tuple[Any, Any, Any, dict]:
    """``(model, config, dataset, checkpoint)`` of an ``isda train`` run directory
    (``allow_imagefolder``: the dataset may be an image folder read from disk).

    The model is rebuilt as the trainer builds it (``create_model(config.model,
    num_classes, in_channels=..., **config.model_kwargs)``), loaded with the checkpoint's
    weights, put on ``device`` in eval mode with gradients disabled.
    """
    from ..models import create_model
    from ..train.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from ..train.config import TrainConfig
    from .gan import load_image_dataset

    hint = "pass the --out directory of an `isda train` run"
    _require_dir(run_dir, "classifier run directory", hint)
    config_path, ckpt_path = run_dir / "config.json", run_dir / CHECKPOINT_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"classifier run directory '{run_dir}' has no config.json ({hint})")
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"classifier run directory '{run_dir}' has no {CHECKPOINT_NAME} "
                                f"(the run has not finished an epoch yet?)")
    config = TrainConfig.load(config_path)
    if config.dataset == "imagefolder":
        if not allow_imagefolder:
            raise ValueError(f"run '{run_dir}' was trained on an imagefolder dataset; a generator "
                             f"trained by `isda gan train` needs an in-memory dataset (digits, "
                             f"cifar10, cifar100, svhn, ...); for ImageNet-style folders use "
                             f"--generator biggan")
        from ..data import create_dataset

        data = create_dataset("imagefolder", root=data_dir or config.data_dir,
                              **dict(config.dataset_kwargs))
    else:
        data = load_image_dataset(config.dataset, data_dir or config.data_dir, download,
                                  dict(config.dataset_kwargs))
    state = load_checkpoint(ckpt_path)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"'{ckpt_path}' is not an `isda train` checkpoint (no model state)")
    kwargs = dict(config.model_kwargs)
    kwargs.setdefault("in_channels", int(data.image_size[0]))
    model = create_model(config.model, num_classes=data.num_classes, **kwargs)
    if not hasattr(model, "forward_features"):
        raise ValueError(f"model {config.model!r} has no forward_features(); cannot visualise it")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"the weights in '{ckpt_path}' do not fit model {config.model!r} built "
                         f"from '{config_path}': {err}") from None
    model.to(device).eval().requires_grad_(False)
    return model, config, data, state


def find_estimator(config: Any, state: dict, num_features: int, num_classes: int) -> Optional[Any]:
    """The :class:`~torch_isda.CovarianceEstimator` saved with the run's criterion
    (``state["criterion"]``), or ``None`` when the criterion holds none (e.g. ``ce``)."""
    from ..estimator import CovarianceEstimator
    from ..train.criteria import create_criterion

    saved = state.get("criterion") or {}
    if not any(k.endswith("covariance") for k in saved):
        return None
    criterion = create_criterion(config.loss, int(num_features), int(num_classes), config)
    try:
        criterion.load_state_dict(saved)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"cannot restore the criterion {config.loss!r} of the run from its "
                         f"checkpoint ({err}); pass --estimate-covariance to compute the class "
                         f"covariances from the training set instead") from None
    for module in criterion.modules():
        if isinstance(module, CovarianceEstimator):
            return module
    return None


def estimate_covariance(model: Any, data: Any, kind: str, device: Any, batch_size: int = 512) -> Any:
    """A :class:`~torch_isda.CovarianceEstimator` of the model's eval-mode features of the
    whole training set (population covariance per class)."""
    import torch

    from ..data import normalize
    from ..estimator import CovarianceEstimator

    est = CovarianceEstimator(int(model.num_features), int(data.num_classes), kind, device=device)
    images, labels = data.train_images, data.train_labels
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = normalize(images[start:start + batch_size].to(device), data.mean, data.std)
                est.update(model.forward_features(x).float(),
                           labels[start:start + batch_size].to(device))
    finally:
        model.train(was_training)
    return est


def _shape(shape: Any) -> str:
    return "x".join(str(int(s)) for s in shape)


# ---------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    import time
    import warnings

    from ..train.checkpoint import atomic_write_text
    from ..train.seeding import num_threads
    from ..train.parallel import resolve_device
    from ..visualize.gan import load_gan_checkpoint, load_generator
    from ..visualize.inversion import run_visualization

    if args.generator == "biggan":
        return _run_biggan(args)
    for option, default in (("biggan_model", "biggan-deep-256"), ("truncation", 0.4),
                            ("biggan_classes", None)):
        if getattr(args, option) != default:
            raise ValueError(f"--{option.replace('_', '-')} applies to --generator biggan only")
    run_dir, gan_dir = Path(args.classifier), Path(args.generator)
    _require_dir(gan_dir, "generator directory", "train one with `isda gan train --out DIR`")
    gan_state = load_gan_checkpoint(gan_dir)  # clear error if gan.pt is missing
    device = resolve_device(args.device)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    with num_threads(args.threads):
        model, config, data, state = load_classifier(run_dir, device, args.data_dir, args.download)
        G = load_generator(gan_dir, device)
        gan_name = str(gan_state.get("dataset", "") or "")
        _check_generator_fits(G, gan_dir, gan_name, run_dir, config, data, say)
        estimator, source = _covariance(args, run_dir, model, config, data, state, device)
        t_loaded = time.perf_counter()
        say(f"[visualize] classifier {config.model} ({config.loss}) from '{run_dir}', generator "
            f"({G.config.arch}, {G.iteration} iterations) from '{gan_dir}', covariance: {source}")

        out = Path(args.out or f"runs/vis-{run_dir.resolve().name}")
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
            result, paths = run_visualization(out, model, estimator, G, data, args.lam,
                                              split=args.split, **_inversion_options(args))
    t_end = time.perf_counter()

    summary = json.loads(Path(paths["summary"]).read_text())
    summary["inputs"] = {
        "classifier": str(run_dir), "generator": str(gan_dir), "dataset": config.dataset,
        "model": config.model, "loss": config.loss, "generator_iterations": int(G.iteration),
        "generator_dataset": gan_name, "covariance": source,
        "estimate_covariance": bool(args.estimate_covariance),
    }
    summary["timing"] = {"load_seconds": round(t_loaded - t_start, 3),
                         "total_seconds": round(t_end - t_start, 3)}
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, paths, t_end - t_start)
    return 0


def _check_generator_fits(G: Any, gan_dir: Path, gan_name: str, run_dir: Path, config: Any,
                          data: Any, say: Any) -> None:
    """An error if the generator's images differ in shape from the classifier's; a warning
    if it was trained on another dataset of the same shape."""
    if tuple(G.image_shape) != tuple(int(s) for s in data.image_size):
        raise ValueError(
            f"the generator in '{gan_dir}' makes {_shape(G.image_shape)} images (trained on "
            f"{gan_name or 'an unknown dataset'}), but the classifier in '{run_dir}' was trained "
            f"on {config.dataset} with {_shape(data.image_size)} images; train a generator on "
            f"{config.dataset}: isda gan train --dataset {config.dataset} --out DIR")
    if gan_name and gan_name not in (config.dataset, "tensor", "dataset"):
        say(f"warning: the generator was trained on {gan_name}, the classifier on "
            f"{config.dataset} (same image size {_shape(data.image_size)})")


def _covariance(args: argparse.Namespace, run_dir: Path, model: Any, config: Any, data: Any,
                state: Any, device: Any) -> tuple[Any, str]:
    """The class covariances to augment with (``--estimate-covariance`` or the run's ISDA
    estimate) and a description of where they come from."""
    kind = args.kind
    if args.estimate_covariance:
        kind = kind or (config.kind if config.kind else "full")
        estimator = estimate_covariance(model, data, kind, device)
        return estimator, f"estimated from the training-set features of the trained model ({kind})"
    if args.kind is not None:
        raise ValueError("--kind applies to --estimate-covariance only (the run's ISDA "
                         "estimate has the kind it was trained with)")
    estimator = find_estimator(config, state, model.num_features, data.num_classes)
    if estimator is None:
        raise ValueError(
            f"the classifier run '{run_dir}' was trained with --loss {config.loss!r}: its "
            f"checkpoint holds no ISDA covariance estimate; pass --estimate-covariance to "
            f"compute the class covariances from the training-set features of the trained "
            f"model, or train with --loss isda")
    estimator.to(device)
    return estimator, f"ISDA estimate of run '{run_dir}' (checkpoint.pt, {estimator.kind})"


def _inversion_options(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling and inversion options shared by both generators."""
    names = ("num_samples", "num_augmented", "num_neighbours", "seed", "eta", "step1_iterations",
             "step2_iterations", "step1_lr", "step2_lr", "restarts", "reduction")
    return {"progress": not args.quiet, **{name: getattr(args, name) for name in names}}


def _print_summary(s: dict, paths: dict, seconds: float) -> None:
    print(f"Step I  (Eq. 20) final feature-space MSE: {s['step1_feature_mse']:.4g} "
          f"(pixel MSE {s['step1_pixel_mse']:.4g}; mean square of the features "
          f"{s['feature_mean_square']:.4g})")
    line = (f"Step II (Eq. 21) final feature-space MSE: {s['step2_feature_mse']:.4g} "
            f"(to the augmented features, which lie at MSE {s['augmentation_mse']:.4g} "
            f"from the originals)")
    print(line)
    if "augmented_accuracy" in s:
        print(f"classifier's label kept on {100 * s['reconstruction_accuracy']:.0f}% of the "
              f"reconstructions and {100 * s['augmented_accuracy']:.0f}% of the augmented images")
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({seconds:.1f} s)")


def _class_map(text: Optional[str], num_classes: int) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"--biggan-classes must be comma-separated integers; got {text!r}") from None
    if len(values) != num_classes:
        raise ValueError(f"--biggan-classes has {len(values)} entries; the dataset has "
                         f"{num_classes} classes")
    return values


def _run_biggan(args: argparse.Namespace) -> int:
    """``isda visualize --generator biggan``: Figs. 7/14 on an image-folder run."""
    import time
    import warnings

    from ..train.checkpoint import atomic_write_text
    from ..train.seeding import num_threads
    from ..train.parallel import resolve_device
    from ..visualize.biggan import load_biggan, run_biggan_visualization

    run_dir = Path(args.classifier)
    device = resolve_device(args.device)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    with num_threads(args.threads):
        model, config, data, state = load_classifier(run_dir, device, args.data_dir, args.download,
                                                     allow_imagefolder=True)
        if config.dataset != "imagefolder":
            raise ValueError(f"--generator biggan visualises ImageNet-style imagefolder runs; "
                             f"'{run_dir}' was trained on {config.dataset}: train a generator with "
                             f"`isda gan train --dataset {config.dataset}` and pass its directory")
        if args.estimate_covariance:
            raise ValueError("--estimate-covariance needs an in-memory dataset; an imagefolder "
                             "run needs its ISDA estimate (train with --loss isda)")
        if args.kind is not None:
            raise ValueError("--kind applies to --estimate-covariance only")
        estimator = find_estimator(config, state, model.num_features, data.num_classes)
        if estimator is None:
            raise ValueError(f"the classifier run '{run_dir}' was trained with --loss "
                             f"{config.loss!r}: its checkpoint holds no ISDA covariance estimate; "
                             f"train with --loss isda")
        estimator.to(device)
        class_map = _class_map(args.biggan_classes, data.num_classes)
        G = load_biggan(args.biggan_model, args.truncation, image_size=int(data.image_size[-1]),
                        device=device)
        say(f"[visualize] classifier {config.model} ({config.loss}) from '{run_dir}', BigGAN "
            f"{args.biggan_model} (truncation {args.truncation:g}, {G.native_size} px -> "
            f"{G.image_shape[-1]} px), covariance: ISDA estimate ({estimator.kind})")
        t_loaded = time.perf_counter()
        out = Path(args.out or f"runs/vis-{run_dir.resolve().name}")
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
            result, paths = run_biggan_visualization(
                out, model, estimator, G, data, args.lam, class_map=class_map,
                split="train" if args.split == "train" else "val", **_inversion_options(args))
    t_end = time.perf_counter()
    summary = json.loads(Path(paths["summary"]).read_text())
    summary["inputs"] = {"classifier": str(run_dir), "generator": "biggan",
                         "biggan_model": str(args.biggan_model), "truncation": float(args.truncation),
                         "dataset": config.dataset, "model": config.model, "loss": config.loss,
                         "covariance": f"ISDA estimate of run '{run_dir}' ({estimator.kind})"}
    summary["timing"] = {"load_seconds": round(t_loaded - t_start, 3),
                         "total_seconds": round(t_end - t_start, 3)}
    atomic_write_text(paths["summary"], json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, paths, t_end - t_start)
    return 0
