"""Class-conditional generators: the generator-based baselines of Table 5.

Appendix C of the journal paper (Wang et al., TPAMI 2021): "For WGAN, a generator is
trained for each class in CIFAR-10 dataset. For CGAN, ACGAN and infoGAN, a single model is
simply required to generate images of all classes. A 100 dimension noise drawn from a
standard normal distribution is adopted as input, generating images corresponding to their
label. Specially, infoGAN takes additional input with two dimensions, which represent
specific attributes of the whole training set." The generated images then augment the
classifier's mini-batches (criterion ``gan_augment``,
:mod:`torch_isda.train.criteria.generative_augmentation`).

Kinds (``kind``):

* ``"wgan-per-class"``: one generator per class, each a WGAN trained on the images of its
  class only. We train them with the gradient-penalty objective of
  :mod:`torch_isda.visualize.gan` (Gulrajani et al. 2017), the WGAN variant this package
  already uses, instead of the weight clipping of Arjovsky et al. [45].
* ``"cgan"`` (Mirza & Osindero 2014, [65]): generator ``G(z, y)`` and discriminator
  ``D(x, y)``, both conditioned on the one-hot label (concatenated to the input; for
  convolutional discriminators as ``C`` constant planes), standard (non-saturating) GAN
  loss ``BCE(D(x, y), 1) + BCE(D(G(z, y), y), 0)``; generator ``BCE(D(G(z, y), y), 1)``.
* ``"acgan"`` (Odena et al. 2017, [66]): ``G(z, y)``; ``D(x)`` has two heads, real/fake and
  the class. Discriminator ``L_S + L_C`` with ``L_S`` the real/fake BCE and ``L_C`` the
  class cross-entropy on real *and* generated images; generator ``BCE(D(G), 1) + L_C(G)``.
* ``"infogan"`` (Chen et al. 2016, [67]): ``G(z, c)`` with a categorical code, tied to the
  class label as in the paper's use ("generating images corresponding to their label"),
  and ``codes = 2`` continuous codes ``c_k ~ U(-1, 1)``. ``D`` shares its trunk with the
  auxiliary network ``Q``, which predicts the categorical code (cross-entropy; on real
  images it is supervised by the true label, so that the code means the class) and the
  continuous codes (a factored Gaussian with fixed unit variance, i.e. ``1/2`` squared
  error). The mutual-information term ``L_I`` is added to both the discriminator/Q loss
  and the generator loss with ``lambda = 1`` for the categorical and ``info_weight = 0.1``
  for the continuous codes (InfoGAN uses 1 for discrete codes and a smaller value for
  continuous ones; 0.1 is our choice).

Networks: the architectures of :mod:`torch_isda.visualize.gan` (``mlp`` up to 16x16 pixels,
``dcgan`` otherwise); the conditional generator feeds ``[z, onehot(y), codes]`` to them.
Optimiser of cgan/acgan/infogan: Adam with the DCGAN settings (Radford et al.: lr 2e-4,
betas (0.5, 0.999)), one discriminator step per generator step; for the small ``mlp``
networks (digits) the rate is raised to 1e-3 (our choice, as for the WGAN-GP of
:mod:`.gan`). Noise ``z ~ N(0, I_100)``.

Files written by :func:`train_conditional_gan` into ``out_dir``: ``gan.pt`` (atomic;
format ``torch_isda.conditional_gan``: kind, config, generator(s), discriminator,
optimisers, RNG state, iteration, the dataset's name, ``mean`` and ``std``),
``samples.png`` (one row per class) and ``gan_log.jsonl``; ``wgan-per-class`` also keeps
one WGAN-GP run directory per class (``class_00``, ...). Running it again on the same
directory resumes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adversarial_loop import AdversarialLoop, log_progress
from .gan import (
    SAMPLES_NAME,
    GANConfig,
    adversarial_setup,
    atomic_torch_save,
    build_gan,
    from_generator_space,
    load_gan_checkpoint,
    restore_adversarial,
    to_generator_space,
    train_gan,
)

__all__ = [
    "CONDITIONAL_FORMAT",
    "CONDITIONAL_KINDS",
    "ConditionalDiscriminator",
    "ConditionalGANConfig",
    "ConditionalGANLoop",
    "ConditionalGenerator",
    "PerClassGenerator",
    "build_conditional_gan",
    "discriminator_loss",
    "generator_loss",
    "load_conditional_generator",
    "train_conditional_gan",
]

CONDITIONAL_FORMAT = "torch_isda.conditional_gan"
CONDITIONAL_VERSION = 1
#: The class-conditional kinds of ``isda gan train --kind`` (``wgan-gp`` is :mod:`.gan`).
CONDITIONAL_KINDS = ("wgan-per-class", "cgan", "acgan", "infogan")
#: Default iterations: digits-sized ``mlp`` networks / ``dcgan`` networks (GPU scale).
MLP_ITERATIONS = 3000
DCGAN_ITERATIONS = 50_000
#: Generator iterations of each per-class WGAN-GP on digits (about 125 images per class).
PER_CLASS_MLP_ITERATIONS = 1000

PathLike = Union[str, "Path"]


@dataclass
class ConditionalGANConfig:
    """Settings of a class-conditional GAN, saved in its checkpoint.

    ``codes`` is the number of continuous codes (``infogan``: 2, the others 0);
    ``arch``/``dim`` as in :class:`~torch_isda.visualize.gan.GANConfig`; ``lr``/``betas``
    ``None``: Adam 1e-3 (mlp) or 2e-4 (dcgan) with betas (0.5, 0.999).
    """

    kind: str = "cgan"
    num_classes: int = 10
    image_shape: tuple[int, int, int] = (1, 8, 8)
    z_dim: int = 100
    codes: Optional[int] = None
    arch: Optional[str] = None
    dim: Optional[int] = None
    lr: Optional[float] = None
    betas: Optional[tuple[float, float]] = None
    batch_size: int = 64
    info_weight: float = 0.1
    base: dict = field(default_factory=dict)  # GANConfig of one generator (filled in)

    def __post_init__(self) -> None:
        if self.kind not in CONDITIONAL_KINDS:
            raise ValueError(f"unknown conditional GAN kind {self.kind!r}; expected one of "
                             f"{', '.join(CONDITIONAL_KINDS)}")
        if int(self.num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2; got {self.num_classes}")
        self.num_classes = int(self.num_classes)
        if self.codes is None:
            self.codes = 2 if self.kind == "infogan" else 0
        if self.kind != "infogan" and self.codes:
            raise ValueError(f"continuous codes are an infogan option; {self.kind} has none")
        if int(self.codes) < 0 or int(self.z_dim) < 1 or int(self.batch_size) < 1:
            raise ValueError("codes must be >= 0, z_dim and batch_size positive")
        self.codes, self.z_dim = int(self.codes), int(self.z_dim)
        input_dim = self.z_dim if self.kind == "wgan-per-class" else self.input_dim
        # GANConfig validates the shape and fills arch/dim; z_dim >= 2 is its own rule
        base = GANConfig(image_shape=tuple(self.image_shape), z_dim=max(2, input_dim),
                         arch=self.arch, dim=self.dim, batch_size=self.batch_size)
        self.image_shape = base.image_shape
        self.arch, self.dim = base.arch, base.dim
        default_lr = 1e-3 if self.arch == "mlp" else 2e-4
        self.lr = float(default_lr if self.lr is None else self.lr)
        self.betas = tuple(float(b) for b in ((0.5, 0.999) if self.betas is None else self.betas))  # type: ignore[assignment]
        self.base = asdict(base)

    @property
    def input_dim(self) -> int:
        """Generator input size of the one-model kinds: noise, one-hot class, codes."""
        return self.z_dim + self.num_classes + int(self.codes or 0)


# --------------------------------------------------------------------------- networks


class ConditionalGenerator(nn.Module):
    """``forward(z, labels, codes=None)``: images in ``[-1, 1]`` of the asked classes.

    Wraps an unconditional generator of :mod:`.gan` whose input is
    ``[z, onehot(labels), codes]``. Attributes: ``z_dim``, ``num_classes``, ``codes``,
    ``image_shape``, ``output_range``.
    """

    output_range = (-1.0, 1.0)

    def __init__(self, config: ConditionalGANConfig) -> None:
        super().__init__()
        self.z_dim, self.num_classes = config.z_dim, config.num_classes
        self.codes = int(config.codes or 0)
        self.image_shape = tuple(config.image_shape)
        self.net, _ = build_gan(GANConfig(**config.base))

    def forward(self, z: Tensor, labels: Tensor, codes: Optional[Tensor] = None) -> Tensor:
        parts = [z, F.one_hot(labels, self.num_classes).to(z.dtype)]
        if self.codes:
            if codes is None:
                codes = torch.zeros(z.shape[0], self.codes, dtype=z.dtype, device=z.device)
            parts.append(codes)
        return self.net(torch.cat(parts, 1))

    def sample(self, labels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Images of classes ``labels`` from ``z ~ N(0, I)`` (codes ``~ U(-1, 1)``), in
        ``[-1, 1]``, without gradients."""
        return _sample(self, labels, generator)


class PerClassGenerator(nn.Module):
    """One unconditional generator per class (``wgan-per-class``); same interface as
    :class:`ConditionalGenerator` (no codes)."""

    output_range = (-1.0, 1.0)
    codes = 0

    def __init__(self, config: ConditionalGANConfig) -> None:
        super().__init__()
        self.z_dim, self.num_classes = config.z_dim, config.num_classes
        self.image_shape = tuple(config.image_shape)
        base = GANConfig(**config.base)
        self.generators = nn.ModuleList(build_gan(base)[0] for _ in range(config.num_classes))

    def forward(self, z: Tensor, labels: Tensor, codes: Optional[Tensor] = None) -> Tensor:
        out = z.new_empty((z.shape[0], *self.image_shape))
        for c, g in enumerate(self.generators):
            mask = labels == c
            out[mask] = g(z[mask])
        return out

    def sample(self, labels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return _sample(self, labels, generator)


def _sample(g: nn.Module, labels: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.dim() != 1:
        raise ValueError(f"labels must be a 1-d tensor of class indices; got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= g.num_classes):
        raise ValueError(f"labels must lie in [0, {g.num_classes}); got {labels.min()}..{labels.max()}")
    device = next(g.parameters()).device
    labels = labels.to(device)
    n = labels.shape[0]
    z = torch.randn(n, g.z_dim, device=device, generator=generator)
    codes = None
    if g.codes:
        codes = torch.rand(n, g.codes, device=device, generator=generator).mul(2).sub(1)
    was_training = g.training
    g.eval()
    try:
        with torch.no_grad():
            return g(z, labels, codes)
    finally:
        g.train(was_training)


class ConditionalDiscriminator(nn.Module):
    """Trunk of the :mod:`.gan` critic architectures with up to three heads.

    ``condition``: the one-hot label is an input (cgan); ``class_head``: logits over the
    classes (acgan, infogan's Q); ``code_head``: predicted continuous codes (infogan's Q).
    ``forward(x, labels=None)`` returns ``(adv_logit (N,), class_logits or None, codes or None)``.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, arch: str, dim: int, *,
                 condition: bool = False, class_head: bool = False, code_head: int = 0) -> None:
        super().__init__()
        c, h, w = image_shape
        self.num_classes, self.condition = int(num_classes), bool(condition)
        extra = num_classes if condition else 0
        if arch == "mlp":
            self.trunk = nn.Sequential(
                nn.Linear(c * h * w + extra, dim), nn.LeakyReLU(0.2, True),
                nn.Linear(dim, dim), nn.LeakyReLU(0.2, True))
            width = dim
        else:
            stages = int(math.log2(h // 4))
            layers: list[nn.Module] = []
            ch_in, ch = c + extra, dim
            for _ in range(stages):
                layers += [nn.Conv2d(ch_in, ch, 3, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
                ch_in, ch = ch, ch * 2
            self.trunk = nn.Sequential(*layers, nn.Flatten())
            width = 4 * 4 * ch_in
        self.arch = arch
        self.adv = nn.Linear(width, 1)
        self.cls = nn.Linear(width, num_classes) if class_head else None
        self.code = nn.Linear(width, code_head) if code_head else None

    def forward(self, x: Tensor, labels: Optional[Tensor] = None
                ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        if self.condition:
            onehot = F.one_hot(labels, self.num_classes).to(x.dtype)
            if self.arch == "mlp":
                x = torch.cat([x.flatten(1), onehot], 1)
            else:
                planes = onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
                x = torch.cat([x, planes], 1)
        elif self.arch == "mlp":
            x = x.flatten(1)
        h = self.trunk(x)
        return (self.adv(h).squeeze(1), None if self.cls is None else self.cls(h),
                None if self.code is None else self.code(h))


def build_conditional_gan(config: ConditionalGANConfig) -> tuple[nn.Module, Optional[nn.Module]]:
    """``(generator, discriminator)`` of ``config`` (``wgan-per-class``: no discriminator
    here, each class is a WGAN-GP run of its own)."""
    if config.kind == "wgan-per-class":
        return PerClassGenerator(config), None
    d = ConditionalDiscriminator(
        config.image_shape, config.num_classes, config.arch, config.dim,
        condition=config.kind == "cgan", class_head=config.kind in ("acgan", "infogan"),
        code_head=config.codes if config.kind == "infogan" else 0)
    return ConditionalGenerator(config), d


# --------------------------------------------------------------------------- losses


def discriminator_loss(kind: str, D: nn.Module, real: Tensor, real_labels: Tensor, fake: Tensor,
                       fake_labels: Tensor, codes: Optional[Tensor], info_weight: float) -> Tensor:
    """Loss of the discriminator (and infoGAN's Q) for one step; ``fake`` is detached."""
    bce = F.binary_cross_entropy_with_logits
    cond = kind == "cgan"
    adv_r, cls_r, _ = D(real, real_labels if cond else None)
    adv_f, cls_f, code_f = D(fake.detach(), fake_labels if cond else None)
    loss = bce(adv_r, torch.ones_like(adv_r)) + bce(adv_f, torch.zeros_like(adv_f))
    if kind in ("acgan", "infogan"):
        loss = loss + F.cross_entropy(cls_r, real_labels) + F.cross_entropy(cls_f, fake_labels)
    if kind == "infogan":
        loss = loss + info_weight * 0.5 * (code_f - codes).square().sum(1).mean()
    return loss


def generator_loss(kind: str, D: nn.Module, fake: Tensor, fake_labels: Tensor,
                   codes: Optional[Tensor], info_weight: float) -> Tensor:
    """Loss of the generator for one step (non-saturating; differentiable w.r.t. ``fake``)."""
    adv, cls, code = D(fake, fake_labels if kind == "cgan" else None)
    loss = F.binary_cross_entropy_with_logits(adv, torch.ones_like(adv))
    if kind in ("acgan", "infogan"):
        loss = loss + F.cross_entropy(cls, fake_labels)
    if kind == "infogan":
        loss = loss + info_weight * 0.5 * (code - codes).square().sum(1).mean()
    return loss


# --------------------------------------------------------------------------- training


def _dataset_parts(dataset: Any) -> tuple[Tensor, Tensor, str, tuple, tuple]:
    if isinstance(dataset, str):
        from ..data import create_dataset

        dataset = create_dataset(dataset)
    images = getattr(dataset, "train_images", None)
    labels = getattr(dataset, "train_labels", None)
    if images is None or labels is None:
        raise TypeError("a class-conditional GAN needs an ImageDataset (train_images and "
                        f"train_labels) or a registered dataset name; got {type(dataset).__name__}")
    mean = tuple(float(m) for m in getattr(dataset, "mean", (0.5,) * images.shape[1]))
    std = tuple(float(s) for s in getattr(dataset, "std", (0.5,) * images.shape[1]))
    return images, labels.long(), str(getattr(dataset, "name", "dataset")), mean, std


def _write_samples(out: Path, G: nn.Module, num_classes: int, seed: int) -> None:
    from .grid import save_image_grid

    per_row = 8
    labels = torch.arange(num_classes).repeat_interleave(per_row)
    rng = torch.Generator(device=next(G.parameters()).device)
    rng.manual_seed(seed)
    images = from_generator_space(G.sample(labels, rng)).cpu()
    save_image_grid(out / SAMPLES_NAME, images, nrow=per_row)


class ConditionalGANLoop(AdversarialLoop):
    """The iterations of a cgan / acgan / infogan (one discriminator step, then one
    generator step) on the shared :class:`~torch_isda.visualize.adversarial_loop.AdversarialLoop`."""

    def __init__(self, nets: tuple, rng: torch.Generator, config: ConditionalGANConfig,
                 data: tuple[Tensor, Tensor], meta: dict, **loop: Any) -> None:
        super().__init__(**loop)
        self.G, self.D, self.opt_g, self.opt_d = nets
        self.rng, self.config = rng, config
        self.real_all, self.labels_all = data
        self.meta = meta  # seed, dataset name, mean and std, saved in the checkpoint

    def _draw(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
        """A real batch with its labels, noise, fake labels and (infogan) codes."""
        config, rng, device = self.config, self.rng, self.real_all.device
        idx = torch.randint(0, self.real_all.shape[0], (config.batch_size,), generator=rng, device=device)
        z = torch.randn(config.batch_size, config.z_dim, generator=rng, device=device)
        fake_labels = torch.randint(0, config.num_classes, (config.batch_size,), generator=rng,
                                    device=device)
        codes = None
        if config.codes:
            codes = torch.rand(config.batch_size, config.codes, generator=rng, device=device).mul(2).sub(1)
        return self.real_all[idx], self.labels_all[idx], z, fake_labels, codes

    def train_step(self, iteration: int) -> dict[str, Tensor]:
        kind, info_weight = self.config.kind, self.config.info_weight
        real, real_labels, z, fake_labels, codes = self._draw()
        fake = self.G(z, fake_labels, codes)
        loss_d = discriminator_loss(kind, self.D, real, real_labels, fake, fake_labels, codes, info_weight)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        # generator step against the updated discriminator (D frozen)
        self.D.requires_grad_(False)
        try:
            loss_g = generator_loss(kind, self.D, fake, fake_labels, codes, info_weight)
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
        finally:
            self.D.requires_grad_(True)
        return {"loss_d": loss_d, "loss_g": loss_g}

    def checkpoint_state(self, iteration: int) -> dict[str, Any]:
        m = self.meta
        return _checkpoint(self.config, iteration, m["seed"], m["name"], m["mean"], m["std"],
                           self.G.state_dict(), self.history, discriminator=self.D.state_dict(),
                           opt_g=self.opt_g.state_dict(), opt_d=self.opt_d.state_dict(),
                           rng_state=self.rng.get_state())

    def progress_line(self, done: int, record: dict[str, Any]) -> str:
        return (f"[gan] {self.config.kind} it {done}/{self.iterations}  loss_d {record['loss_d']:.4f}  "
                f"loss_g {record['loss_g']:.4f}")


def _checked_dataset(dataset: Any) -> tuple[Tensor, Tensor, str, tuple, tuple, int]:
    """:func:`_dataset_parts` checked for shapes, with the number of classes."""
    images, labels, name, mean, std = _dataset_parts(dataset)
    if images.dim() != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"expected (N, C, H, W) images and N labels; got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    num_classes = int(getattr(dataset, "num_classes", int(labels.max()) + 1))
    return images, labels, name, mean, std, num_classes


def _resume_state(ckpt: Path, kind: str, image_shape: tuple, num_classes: int,
                  device: torch.device) -> dict:
    """The checkpoint in ``ckpt``, checked to hold a ``kind`` GAN of these images."""
    state = load_conditional_checkpoint(ckpt, map_location=device)
    if state["config"]["kind"] != kind:
        raise ValueError(f"'{ckpt}' holds a {state['config']['kind']} GAN, not {kind}; use "
                         f"another out_dir or resume=False")
    config = ConditionalGANConfig(**state["config"])
    if tuple(config.image_shape) != tuple(image_shape) or config.num_classes != num_classes:
        raise ValueError(f"'{ckpt}' was trained on {config.num_classes} classes of "
                         f"{config.image_shape} images; the dataset has {num_classes} of "
                         f"{tuple(image_shape)}")
    return state


def train_conditional_gan(
    dataset: Any, out_dir: PathLike, kind: str, iterations: Optional[int] = None, *,
    batch_size: int = 64, z_dim: int = 100, seed: int = 0,
    device: Union[str, torch.device] = "cpu", progress: bool = True, arch: Optional[str] = None,
    dim: Optional[int] = None, lr: Optional[float] = None, info_weight: float = 0.1,
    log_every: int = 100, checkpoint_every: int = 500, resume: bool = True,
    wgan_options: Optional[dict] = None,
) -> nn.Module:
    """Train a class-conditional generator of ``kind`` on a dataset; return it (eval mode).

    Args:
        dataset: an :class:`~torch_isda.data.ImageDataset` or a registered dataset name.
        out_dir: directory of ``gan.pt``, ``samples.png``, ``gan_log.jsonl`` (created).
        kind: one of :data:`CONDITIONAL_KINDS`.
        iterations: generator iterations (``wgan-per-class``: per class). ``None``: 3,000
            (mlp) / 50,000 (dcgan); per class 1,000 (mlp) / the WGAN-GP default (dcgan).
        batch_size, z_dim, arch, dim, lr, info_weight: see :class:`ConditionalGANConfig`.
        seed: seeds initialisation and every draw (a resumed run continues exactly).
        wgan_options: extra keyword arguments of :func:`~torch_isda.visualize.gan.train_gan`
            for ``wgan-per-class`` (``n_critic``, ``gp_weight``, ``lr``, ...).
        resume: continue from ``out_dir/gan.pt`` if it exists (its settings win).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    images, labels, name, mean, std, num_classes = _checked_dataset(dataset)
    ckpt = out / "gan.pt"
    state = None
    if resume and ckpt.exists():
        state = _resume_state(ckpt, kind, tuple(images.shape[1:]), num_classes, device)
        config = ConditionalGANConfig(**state["config"])
    else:
        config = ConditionalGANConfig(kind=kind, num_classes=num_classes,
                                      image_shape=tuple(images.shape[1:]), z_dim=z_dim, arch=arch,
                                      dim=dim, lr=lr, batch_size=batch_size, info_weight=info_weight)
    if kind == "wgan-per-class":
        return _train_per_class(images, labels, name, mean, std, out, config, iterations, seed,
                                device, progress, resume, dict(wgan_options or {}))
    if iterations is None:
        iterations = MLP_ITERATIONS if config.arch == "mlp" else DCGAN_ITERATIONS
    loop = _conditional_loop(state, config, (images, labels), {"name": name, "mean": mean, "std": std},
                             seed, device, out=out, checkpoint_path=ckpt, iterations=iterations,
                             progress=progress, log_every=log_every,
                             checkpoint_every=checkpoint_every)
    loop.run()
    _write_samples(out, loop.G, num_classes, loop.meta["seed"])
    return loop.G.eval()


def _conditional_loop(state: Optional[dict], config: ConditionalGANConfig, data: tuple[Tensor, Tensor],
                      meta: dict, seed: int, device: torch.device, **loop: Any) -> ConditionalGANLoop:
    """The networks of ``config``, fresh from ``seed`` or restored from ``state``, in their loop."""
    images, labels = data
    G, D, opt_g, opt_d, rng = adversarial_setup(build_conditional_gan, config, seed, device)
    start, history = 0, []
    if state is not None:
        start, history, seed = restore_adversarial(state, "discriminator", G, D, opt_g, opt_d,
                                                   rng, seed)
    run = ConditionalGANLoop((G, D, opt_g, opt_d), rng, config,
                             (to_generator_space(images).to(device), labels.to(device)),
                             {**meta, "seed": seed}, start=start, history=history, **loop)
    if run.progress and run.pending:
        log_progress(f"[gan] {config.kind} {config.arch} on {meta['name']} {tuple(config.image_shape)} "
                     f"({len(labels)} images, {config.num_classes} classes), iterations "
                     f"{start}->{run.iterations}, device {device}")
    return run


def _train_per_class(images: Tensor, labels: Tensor, name: str, mean: tuple, std: tuple, out: Path,
                     config: ConditionalGANConfig, iterations: Optional[int], seed: int,
                     device: torch.device, progress: bool, resume: bool, options: dict) -> nn.Module:
    base = GANConfig(**config.base)
    if iterations is None:
        iterations = PER_CLASS_MLP_ITERATIONS if base.arch == "mlp" else None
    G = PerClassGenerator(config)
    history = []
    for c in range(config.num_classes):
        subset = images[labels == c]
        if subset.shape[0] == 0:
            raise ValueError(f"class {c} has no training images; wgan-per-class needs every class")
        if progress:
            log_progress(f"[gan] wgan-per-class: class {c + 1}/{config.num_classes} ({subset.shape[0]} images)")
        g = train_gan(subset, out / f"class_{c:02d}", iterations=iterations, batch_size=config.batch_size,
                      z_dim=config.z_dim, seed=seed + c, device=device, progress=progress,
                      arch=base.arch, dim=base.dim, resume=resume, sample_every=0, **options)
        G.generators[c].load_state_dict(g.state_dict())
        done = int(load_gan_checkpoint(out / f"class_{c:02d}")["iteration"])
        history.append({"class": c, "iteration": done})
    atomic_torch_save(_checkpoint(config, min(h["iteration"] for h in history), seed, name, mean,
                                  std, G.state_dict(), history), out / "gan.pt")
    G.to(device)
    _write_samples(out, G, config.num_classes, seed)
    return G.eval()


def _checkpoint(config: ConditionalGANConfig, iteration: int, seed: int, name: str, mean: tuple,
                std: tuple, generator: dict, history: list, **extra: Any) -> dict:
    return {"format": CONDITIONAL_FORMAT, "version": CONDITIONAL_VERSION, "config": asdict(config),
            "iteration": int(iteration), "seed": int(seed), "dataset": name, "mean": list(mean),
            "std": list(std), "generator": generator, "history": history, **extra}


# --------------------------------------------------------------------------- loading


def load_conditional_checkpoint(path: PathLike, map_location: Union[str, torch.device, None] = "cpu"
                                ) -> dict:
    """The checkpoint dict of :func:`train_conditional_gan` (``path``: file or directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "gan.pt"
    if not path.exists():
        raise FileNotFoundError(f"no GAN checkpoint at {path} (train one with "
                                f"`isda gan train --kind {'|'.join(CONDITIONAL_KINDS)}`)")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and state.get("format") == "torch_isda.gan":
        raise ValueError(f"{path} is a class-agnostic WGAN-GP (isda gan train --kind wgan-gp); "
                         f"a class-conditional generator is needed: train one with --kind "
                         f"{'|'.join(CONDITIONAL_KINDS)}")
    if not isinstance(state, dict) or state.get("format") != CONDITIONAL_FORMAT:
        raise ValueError(f"{path} is not a torch_isda class-conditional GAN checkpoint")
    if int(state.get("version", 0)) > CONDITIONAL_VERSION:
        raise ValueError(f"{path} has checkpoint version {state['version']}; this code reads "
                         f"<= {CONDITIONAL_VERSION}")
    return state


def load_conditional_generator(path: PathLike, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The trained class-conditional generator (eval mode, no gradients). Extra attributes:
    ``kind``, ``dataset`` (name), ``mean``/``std`` (the dataset's normalisation), ``iteration``."""
    state = load_conditional_checkpoint(path)
    config = ConditionalGANConfig(**state["config"])
    G, _ = build_conditional_gan(config)
    G.load_state_dict(state["generator"])
    G.kind, G.dataset = config.kind, str(state.get("dataset", ""))
    G.mean, G.std = tuple(state["mean"]), tuple(state["std"])
    G.iteration = int(state["iteration"])
    G.requires_grad_(False)
    return G.to(device).eval()
