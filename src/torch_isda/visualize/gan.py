"""A class-agnostic WGAN-GP whose generator the feature-inversion algorithm inverts.

The paper (Wang et al., TPAMI 2021, Appendix E) maps augmented deep features back to pixel
space through "a fixed pre-trained generator ... obtained from training a wasserstein GAN
[45] on CIFAR". This module trains such a generator with the gradient-penalty objective of
Gulrajani et al., "Improved Training of Wasserstein GANs" (NeurIPS 2017), Algorithm 1::

    critic:    L_D = E[D(G(z))] - E[D(x)] + gp_weight * E[(||grad_u D(u)||_2 - 1)^2],
               u = eps x + (1 - eps) G(z), eps ~ U[0, 1]
    generator: L_G = -E[D(G(z))]

with their defaults ``gp_weight = 10``, ``n_critic = 5`` critic steps per generator step and
Adam(lr 1e-4, betas (0, 0.9)), batch size 64, ``z ~ N(0, I)`` of 128 dimensions (their CIFAR
setting). For the small 8x8 digits MLP the Adam rate is raised to 1e-3 with betas
(0.5, 0.9) (the betas of their MNIST script): with lr 1e-4 the samples were still noisy
blobs after 3,000 generator iterations, with 1e-3 they are recognisable digits after 3,000
(about 1 minute of CPU time with one thread; :data:`DIGITS_ITERATIONS`).

Architectures (``arch``):

* ``"dcgan"``: the DCGAN-style WGAN-GP CIFAR networks of Gulrajani et al.'s ``gan_cifar``
  (``DIM = 128``): generator Linear(z -> 4*4*4DIM)-BN-ReLU, then stride-2 transposed
  convolutions halving the channels (BN-ReLU) up to the image size, the last one to the
  image channels, Tanh; critic stride-2 3x3 convolutions with LeakyReLU(0.2) and no
  normalisation (a gradient penalty is per-sample, batch norm would break it), then Linear
  to a scalar. Any square power-of-two size >= 8 works (32x32x3 for CIFAR).
* ``"mlp"``: two hidden layers (ReLU in the generator, LeakyReLU(0.2) in the critic),
  ``hidden = 256``; the default for images of at most 16x16 pixels (digits: 8x8x1), where
  it trains faster on a CPU than the convolutional networks and gives clean digits.

Images live in the generator's space ``[-1, 1]`` (Tanh output); :func:`to_generator_space`
and :func:`from_generator_space` convert from and to ``[0, 1]``.

Files written by :func:`train_gan` into ``out_dir``:

* ``gan.pt``: checkpoint (generator, critic, both optimisers, the RNG state, iteration,
  architecture config, loss history), replaced atomically (temp file + ``os.replace``);
* ``samples.png``: a grid of 64 samples from fixed noise (8 x 8), replaced atomically;
* ``gan_log.jsonl``: one JSON line per logged iteration.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from ..utils.text import format_eta
from .adversarial_loop import LOG_NAME, AdversarialLoop, log_progress
from .grid import atomic_write_with

__all__ = [
    "CHECKPOINT_NAME",
    "SAMPLES_NAME",
    "LOG_NAME",
    "DIGITS_ITERATIONS",
    "GANConfig",
    "WGANGPLoop",
    "MLPGenerator",
    "MLPCritic",
    "DCGANGenerator",
    "DCGANCritic",
    "build_gan",
    "gradient_penalty",
    "to_generator_space",
    "from_generator_space",
    "train_gan",
    "load_generator",
    "load_gan_checkpoint",
    "atomic_torch_save",
    "adversarial_setup",
    "restore_adversarial",
    "sample_images",
]

CHECKPOINT_NAME = "gan.pt"
SAMPLES_NAME = "samples.png"
CHECKPOINT_FORMAT = "torch_isda.gan"
CHECKPOINT_VERSION = 1

#: Generator iterations that give clean digits on ``digits`` with the defaults (about 1
#: minute of CPU time with one thread); used when ``train_gan(iterations=None)`` trains an ``mlp`` GAN.
DIGITS_ITERATIONS = 3000
#: Default for the ``dcgan`` architecture (Gulrajani et al. train CIFAR for 100k
#: generator iterations; this is a GPU-scale run).
DCGAN_ITERATIONS = 100_000

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- config

#: Adam ``(lr, betas)`` per architecture. ``dcgan``: Gulrajani et al., Algorithm 1
#: (lr 1e-4, betas (0, 0.9)). ``mlp`` (digits): lr 1e-3 with betas (0.5, 0.9) (the betas
#: of Gulrajani et al.'s MNIST/toy scripts); the larger rate is this package's choice, made
#: on digits, where lr 1e-4 still gave noisy blobs after 3,000 iterations and lr 1e-3 gave
#: recognisable digits.
_DEFAULT_ADAM = {"dcgan": (1e-4, (0.0, 0.9)), "mlp": (1e-3, (0.5, 0.9))}


@dataclass
class GANConfig:
    """Architecture and optimisation settings, saved in the checkpoint.

    ``arch=None`` picks ``"mlp"`` for images of at most 16x16 pixels, else ``"dcgan"``;
    ``dim=None`` picks 256 hidden units (mlp) or ``DIM = 128`` (dcgan); ``lr``/``betas``
    ``None`` pick the architecture's Adam settings (see ``_DEFAULT_ADAM``).
    """

    image_shape: tuple[int, int, int] = (1, 8, 8)
    z_dim: int = 128
    arch: Optional[str] = None
    dim: Optional[int] = None
    lr: Optional[float] = None
    betas: Optional[tuple[float, float]] = None
    n_critic: int = 5
    gp_weight: float = 10.0
    batch_size: int = 64
    lr_decay: bool = False

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(s) for s in self.image_shape)  # type: ignore[assignment]
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W); got {self.image_shape}")
        c, h, w = self.image_shape
        if self.arch is None:
            self.arch = "mlp" if h * w <= 16 * 16 else "dcgan"
        if self.arch not in ("mlp", "dcgan"):
            raise ValueError(f"unknown GAN architecture {self.arch!r}; expected 'mlp' or 'dcgan'")
        if self.dim is None:
            self.dim = 256 if self.arch == "mlp" else 128
        lr, betas = _DEFAULT_ADAM[self.arch]
        self.lr = float(lr if self.lr is None else self.lr)
        self.betas = tuple(float(b) for b in (betas if self.betas is None else self.betas))  # type: ignore[assignment]
        if self.arch == "dcgan" and (h != w or h < 8 or h & (h - 1)):
            raise ValueError(
                f"the dcgan architecture needs square power-of-two images of at least 8x8; got {h}x{w}"
            )
        if int(self.z_dim) < 2:
            raise ValueError(f"z_dim must be >= 2 (z is normalised per sample); got {self.z_dim}")
        if int(self.n_critic) < 1 or int(self.batch_size) < 1:
            raise ValueError("n_critic and batch_size must be positive")

    @property
    def image_size(self) -> int:
        return self.image_shape[1]


# --------------------------------------------------------------------------- networks


class _Generator(nn.Module):
    """Common interface: ``forward(z)`` maps ``N x z_dim`` to ``N x C x H x W`` in ``[-1, 1]``."""

    z_dim: int
    image_shape: tuple[int, int, int]
    output_range = (-1.0, 1.0)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Images from ``z ~ N(0, I)`` (in ``[-1, 1]``), without gradients."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.z_dim, device=device, generator=generator)
        with torch.no_grad():
            return self(z)


class MLPGenerator(_Generator):
    """``z -> dim -> dim -> C*H*W`` with ReLU, then Tanh."""

    def __init__(self, z_dim: int, image_shape: tuple[int, int, int], dim: int = 256) -> None:
        super().__init__()
        self.z_dim, self.image_shape = int(z_dim), tuple(image_shape)
        self.net = nn.Sequential(
            nn.Linear(z_dim, dim),
            nn.ReLU(True),
            nn.Linear(dim, dim),
            nn.ReLU(True),
            nn.Linear(dim, math.prod(image_shape)),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.image_shape)


class MLPCritic(nn.Module):
    """``C*H*W -> dim -> dim -> 1`` with LeakyReLU(0.2), no normalisation."""

    def __init__(self, image_shape: tuple[int, int, int], dim: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(image_shape), dim),
            nn.LeakyReLU(0.2, True),
            nn.Linear(dim, dim),
            nn.LeakyReLU(0.2, True),
            nn.Linear(dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


class DCGANGenerator(_Generator):
    """WGAN-GP CIFAR generator (Gulrajani et al., ``gan_cifar``), generalised to ``2^k`` sizes.

    For 32x32: Linear(z, 4*4*4DIM)-BN-ReLU, ConvT(4DIM, 2DIM)-BN-ReLU, ConvT(2DIM, DIM)-BN-ReLU,
    ConvT(DIM, C), Tanh; every ConvT has kernel 2, stride 2.
    """

    def __init__(self, z_dim: int, image_shape: tuple[int, int, int], dim: int = 128) -> None:
        super().__init__()
        self.z_dim, self.image_shape = int(z_dim), tuple(image_shape)
        c, size, _ = image_shape
        stages = int(math.log2(size // 4))
        ch = dim * 2 ** (stages - 1)
        self.start_channels = ch
        self.project = nn.Sequential(nn.Linear(z_dim, 4 * 4 * ch), nn.BatchNorm1d(4 * 4 * ch), nn.ReLU(True))
        layers: list[nn.Module] = []
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 2, stride=2), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, c, 2, stride=2), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        x = self.project(z).view(z.shape[0], self.start_channels, 4, 4)
        return self.body(x)


class DCGANCritic(nn.Module):
    """WGAN-GP CIFAR critic: stride-2 3x3 convs (C -> DIM -> 2DIM -> 4DIM for 32x32) with
    LeakyReLU(0.2) down to 4x4, then Linear(4*4*channels, 1); no normalisation."""

    def __init__(self, image_shape: tuple[int, int, int], dim: int = 128) -> None:
        super().__init__()
        c, size, _ = image_shape
        stages = int(math.log2(size // 4))
        layers: list[nn.Module] = []
        ch_in, ch = c, dim
        for _ in range(stages):
            layers += [nn.Conv2d(ch_in, ch, 3, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
            ch_in, ch = ch, ch * 2
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(4 * 4 * ch_in, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x)).squeeze(1)


def build_gan(config: GANConfig) -> tuple[_Generator, nn.Module]:
    """The ``(generator, critic)`` pair described by ``config`` (PyTorch default init)."""
    if config.arch == "mlp":
        return (
            MLPGenerator(config.z_dim, config.image_shape, config.dim),
            MLPCritic(config.image_shape, config.dim),
        )
    return (
        DCGANGenerator(config.z_dim, config.image_shape, config.dim),
        DCGANCritic(config.image_shape, config.dim),
    )


# --------------------------------------------------------------------------- helpers


def to_generator_space(images: Tensor) -> Tensor:
    """``uint8`` images, or floating images in ``[0, 1]``, to float32 in ``[-1, 1]``."""
    if images.dtype == torch.uint8:
        return images.float().div(127.5).sub(1.0)
    if not images.is_floating_point():
        raise TypeError(f"expected uint8 or floating-point images, got {images.dtype}")
    return images.float().mul(2.0).sub(1.0)


def from_generator_space(images: Tensor) -> Tensor:
    """Generator output in ``[-1, 1]`` to ``[0, 1]`` (clamped)."""
    return images.add(1.0).mul(0.5).clamp(0.0, 1.0)


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """``E[(||grad_u D(u)||_2 - 1)^2]`` at random interpolates ``u = eps x + (1 - eps) x~``
    (Gulrajani et al., Eq. 3), differentiable w.r.t. the critic's parameters."""
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    eps = torch.rand(shape, device=real.device, dtype=real.dtype, generator=generator)
    u = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(u).sum(), u, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).square().mean()


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``:
    readers see either the old file or the complete new one, never a partial write."""
    atomic_write_with(path, lambda f: torch.save(obj, f))


def _dataset_images(dataset: Any) -> tuple[Tensor, str]:
    """Training images ``(N, C, H, W)`` and a name from an ImageDataset, a dataset name or a tensor."""
    if isinstance(dataset, str):
        from ..data import create_dataset

        dataset = create_dataset(dataset)
    if isinstance(dataset, Tensor):
        return dataset, "tensor"
    images = getattr(dataset, "train_images", None)
    if images is None:
        raise TypeError(
            "dataset must be an ImageDataset (with train_images), a registered dataset name or an "
            f"(N, C, H, W) image tensor; got {type(dataset).__name__}"
        )
    return images, str(getattr(dataset, "name", "dataset"))


def adversarial_setup(build: Any, config: Any, seed: int, device: torch.device) -> tuple:
    """``(G, D, opt_g, opt_d, rng)``: the networks of ``build(config)``, initialised from
    ``seed`` on the CPU and moved to ``device`` in train mode, their Adam optimizers
    (``config.lr``, ``config.betas``) and a generator on ``device`` seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):  # networks are built on the CPU, then moved
        torch.manual_seed(seed)
        G, D = build(config)
    G.to(device).train()
    D.to(device).train()
    opt_g = torch.optim.Adam(G.parameters(), lr=config.lr, betas=config.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr, betas=config.betas)
    rng = torch.Generator(device=device)
    rng.manual_seed(seed)
    return G, D, opt_g, opt_d, rng


def restore_adversarial(state: dict, d_key: str, G: nn.Module, D: nn.Module, opt_g: Any,
                        opt_d: Any, rng: torch.Generator, seed: int) -> tuple[int, list, int]:
    """Load a checkpoint ``state`` (``d_key``: the discriminator's entry) into the pieces of
    :func:`adversarial_setup`; returns ``(iteration, history, seed)`` to continue from."""
    G.load_state_dict(state["generator"])
    D.load_state_dict(state[d_key])
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    rng.set_state(state["rng_state"].cpu())
    return int(state["iteration"]), list(state.get("history", [])), int(state.get("seed", seed))


def sample_images(generator: nn.Module, z: Tensor) -> Tensor:
    """``generator(z)`` in eval mode and ``[0, 1]``, without gradients (train mode restored)."""
    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            return from_generator_space(generator(z))
    finally:
        generator.train(was_training)


# --------------------------------------------------------------------------- training


class WGANGPLoop(AdversarialLoop):
    """The WGAN-GP iterations of :func:`train_gan` (Gulrajani et al., Algorithm 1) on the
    shared :class:`~torch_isda.visualize.adversarial_loop.AdversarialLoop`."""

    def __init__(self, nets: tuple, rng: torch.Generator, config: GANConfig, real_all: Tensor,
                 fixed_z: Tensor, meta: dict, **loop: Any) -> None:
        super().__init__(**loop)
        self.G, self.D, self.opt_g, self.opt_d = nets
        self.rng, self.config, self.real_all, self.fixed_z = rng, config, real_all, fixed_z
        self.meta = meta  # seed and dataset name, saved in the checkpoint

    def _decay_learning_rates(self, it: int) -> None:
        """Linear decay to 0 (Gulrajani et al.'s gan_cifar_resnet)."""
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = self.config.lr * (1.0 - it / self.iterations)

    def _critic_step(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One critic update (Algorithm 1, lines 2-9); ``(d_real, d_fake, gp, loss_d)``."""
        config, rng, device = self.config, self.rng, self.real_all.device
        idx = torch.randint(0, self.real_all.shape[0], (config.batch_size,), generator=rng, device=device)
        real = self.real_all[idx]
        z = torch.randn(config.batch_size, config.z_dim, generator=rng, device=device)
        with torch.no_grad():
            fake = self.G(z)
        d_real, d_fake = self.D(real).mean(), self.D(fake).mean()
        gp = gradient_penalty(self.D, real, fake, rng)
        loss_d = d_fake - d_real + config.gp_weight * gp
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        return d_real, d_fake, gp, loss_d

    def _generator_step(self) -> Tensor:
        """One generator update against the frozen critic (lines 10-11); its loss."""
        config = self.config
        self.D.requires_grad_(False)
        z = torch.randn(config.batch_size, config.z_dim, generator=self.rng, device=self.real_all.device)
        loss_g = -self.D(self.G(z)).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        return loss_g

    def train_step(self, iteration: int) -> dict[str, Tensor]:
        if self.config.lr_decay:
            self._decay_learning_rates(iteration)
        for _ in range(self.config.n_critic):
            d_real, d_fake, gp, loss_d = self._critic_step()
        loss_g = self._generator_step()
        return {"wasserstein": d_real - d_fake, "gp": gp, "loss_d": loss_d, "loss_g": loss_g}

    def checkpoint_state(self, iteration: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": asdict(self.config),
            "iteration": iteration,
            "seed": self.meta["seed"],
            "dataset": self.meta["name"],
            "generator": self.G.state_dict(),
            "critic": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng_state": self.rng.get_state(),
            "fixed_z": self.fixed_z.cpu(),
            "history": self.history,
        }

    def write_samples(self, iteration: int) -> None:
        from .grid import save_sample_grid

        title = (f"WGAN-GP ({self.config.arch}) samples of {self.meta['name']}, fixed noise\n"
                 f"iteration {iteration:,} of {self.iterations:,}")
        save_sample_grid(self.out / SAMPLES_NAME, sample_images(self.G, self.fixed_z).cpu(), nrow=8,
                         title=title)

    def progress_line(self, done: int, record: dict[str, Any]) -> str:
        speed, rate = self.speed(done)
        eta = f"  ETA {format_eta((self.iterations - done) / rate)}" if done < self.iterations else ""
        return (f"[gan] it {done}/{self.iterations}  W {record['wasserstein']:.4f}  gp {record['gp']:.4f}  "
                f"loss_g {record['loss_g']:.4f}  {speed:.1f} it/s{eta}")


def _training_images(dataset: Any, device: torch.device) -> tuple[Tensor, str]:
    """The dataset's training images in generator space on ``device``, and its name."""
    images, name = _dataset_images(dataset)
    if images.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) training images; got shape {tuple(images.shape)}")
    return to_generator_space(images).to(device), name


def _resume_state(ckpt_path: Path, resume: bool, image_shape: tuple, device: torch.device
                  ) -> Optional[dict]:
    """The checkpoint to continue from (``None``: start afresh), checked to fit the images."""
    if not (resume and ckpt_path.exists()):
        return None
    state = load_gan_checkpoint(ckpt_path, map_location=device)
    config = GANConfig(**state["config"])
    if tuple(config.image_shape) != tuple(image_shape):
        raise ValueError(
            f"{ckpt_path} was trained on images of shape {config.image_shape}, but the dataset's "
            f"are {tuple(image_shape)}; use another out_dir or resume=False"
        )
    return state


def train_gan(
    dataset: Any, out_dir: PathLike, iterations: Optional[int] = None, batch_size: int = 64,
    z_dim: int = 128, seed: int = 0, device: Union[str, torch.device] = "cpu",
    progress: bool = True, sample_every: int = 500, *, arch: Optional[str] = None,
    dim: Optional[int] = None, lr: Optional[float] = None,
    betas: Optional[tuple[float, float]] = None, n_critic: int = 5, gp_weight: float = 10.0,
    lr_decay: bool = False, checkpoint_every: Optional[int] = None, log_every: int = 100,
    resume: bool = True,
) -> nn.Module:
    """Train a class-agnostic WGAN-GP on a dataset's training images; return the generator.

    Args:
        dataset: an :class:`~torch_isda.data.ImageDataset`, a registered dataset name
            (``"digits"``) or an ``(N, C, H, W)`` image tensor (``uint8``, or float in ``[0, 1]``).
        out_dir: directory for ``gan.pt``, ``samples.png`` and ``gan_log.jsonl`` (created).
        iterations: generator iterations (each preceded by ``n_critic`` critic steps). ``None``:
            :data:`DIGITS_ITERATIONS` (3000) for ``mlp``, 100,000 for ``dcgan`` (Gulrajani et al.).
        batch_size, z_dim, n_critic, gp_weight: WGAN-GP settings (defaults: Gulrajani et al.,
            Algorithm 1 and their CIFAR script: 64, 128, 5, 10).
        lr, betas: Adam settings; ``None``: 1e-4, (0, 0.9) for ``dcgan`` (Gulrajani et al.);
            1e-3, (0.5, 0.9) for ``mlp`` (chosen on digits, see the module docstring).
        seed: seeds the network initialisation and every random draw (one
            :class:`torch.Generator` on ``device``), so a run is reproducible, and a resumed
            run continues exactly as an uninterrupted one.
        device: where to train.
        progress: log losses and speed to stderr every ``log_every`` iterations.
        sample_every: write ``samples.png`` (fixed noise) every this many iterations (and
            at the end); ``0`` only at the end.
        arch, dim: architecture (see :class:`GANConfig`).
        lr_decay: decay both learning rates linearly to 0 over ``iterations``.
        checkpoint_every: write ``gan.pt`` every this many iterations (default:
            ``sample_every``; always at the end).
        resume: if ``out_dir/gan.pt`` exists, continue from it up to ``iterations`` (its
            architecture and optimiser settings win over the arguments); otherwise start
            afresh, overwriting it.

    Returns:
        The trained generator (eval mode, on ``device``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    real_all, name = _training_images(dataset, device)
    ckpt_path = out / CHECKPOINT_NAME
    state = _resume_state(ckpt_path, resume, tuple(real_all.shape[1:]), device)
    config = GANConfig(**state["config"]) if state is not None else GANConfig(
        image_shape=tuple(real_all.shape[1:]), z_dim=z_dim, arch=arch, dim=dim, lr=lr, betas=betas,
        n_critic=n_critic, gp_weight=gp_weight, batch_size=batch_size, lr_decay=lr_decay)
    if iterations is None:
        iterations = DIGITS_ITERATIONS if config.arch == "mlp" else DCGAN_ITERATIONS
    loop = _wgan_gp_loop(state, config, real_all, name, seed, device, out=out, checkpoint_path=ckpt_path,
                         iterations=iterations, progress=progress,
                         log_every=log_every, sample_every=sample_every,
                         checkpoint_every=sample_every if checkpoint_every is None else checkpoint_every)
    if loop.run():
        loop.write_samples(loop.final_iteration)
    if progress and loop.pending:
        log_progress(f"[gan] done: {iterations - loop.start} iterations in "
                     f"{time.perf_counter() - loop.t0:.1f} s; wrote {out}")
    return loop.G.eval()


def _wgan_gp_loop(state: Optional[dict], config: GANConfig, real_all: Tensor, name: str, seed: int,
                  device: torch.device, **loop: Any) -> WGANGPLoop:
    """The networks of ``config``, fresh from ``seed`` or restored from ``state``, in their loop."""
    G, D, opt_g, opt_d, rng = adversarial_setup(build_gan, config, seed, device)
    fixed_z = torch.randn(64, config.z_dim, generator=rng, device=device)
    start, history = 0, []
    if state is not None:
        start, history, seed = restore_adversarial(state, "critic", G, D, opt_g, opt_d, rng, seed)
        fixed_z = state["fixed_z"].to(device)
        if loop["progress"] and start < loop["iterations"]:  # a finished run is reported by the caller
            log_progress(f"[gan] resuming {loop['checkpoint_path']} at iteration {start}")
    run = WGANGPLoop((G, D, opt_g, opt_d), rng, config, real_all, fixed_z, {"seed": seed, "name": name},
                     start=start, history=history, **loop)
    if run.progress and run.pending:
        n_g = sum(p.numel() for p in G.parameters())
        n_d = sum(p.numel() for p in D.parameters())
        log_progress(
            f"[gan] WGAN-GP {config.arch} on {name} {tuple(config.image_shape)} ({real_all.shape[0]} images), "
            f"G {n_g:,} / D {n_d:,} params, iterations {start}->{run.iterations}, device {device}"
        )
    return run


# --------------------------------------------------------------------------- loading


def load_gan_checkpoint(path: PathLike, map_location: Union[str, torch.device, None] = "cpu") -> dict:
    """The checkpoint dict written by :func:`train_gan` (``path``: the file or its directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"no GAN checkpoint at {path} (train one with train_gan / `isda gan train`)")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a torch_isda GAN checkpoint")
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {state['version']}; this code reads <= {CHECKPOINT_VERSION}")
    return state


def load_generator(out_dir: PathLike, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The trained generator from ``out_dir`` (or a ``gan.pt`` path), in eval mode, with
    gradients disabled for its parameters (it is a fixed map for the inversion).

    Attributes of the result: ``z_dim``, ``image_shape``, ``output_range == (-1, 1)``,
    ``iteration`` (generator iterations trained).
    """
    state = load_gan_checkpoint(out_dir, map_location="cpu")
    config = GANConfig(**state["config"])
    G, _ = build_gan(config)
    G.load_state_dict(state["generator"])
    G.iteration = int(state["iteration"])
    G.config = config
    G.requires_grad_(False)
    return G.to(device).eval()
