"""ZCA whitening of images, the input pre-processing of the semi-supervised experiments.

The ISDA paper (Section 6.1) follows Laine & Aila, Tarvainen & Valpola and Miyato et al.
in ZCA-whitening CIFAR.  With ``x`` the flattened images, ``mu`` their mean and
``Sigma = E diag(s) E^T`` their (population) covariance, the whitening is::

    zca(x) = (x - mu) W,   W = E diag(1 / sqrt(s + epsilon)) E^T

so the whitened training data has covariance ``E diag(s / (s + epsilon)) E^T``: the
identity on directions whose variance is much larger than ``epsilon``.

The regulariser is scale-dependent; the reference implementations use:

* Tarvainen & Valpola (``CuriousAI/mean-teacher``, ``tensorflow/datasets/
  preprocess_cifar10.py``): global contrast normalisation with scale 55
  (:func:`global_contrast_normalize`), then ``epsilon = 0.1`` ("filter_bias"), the
  pylearn2 convention; this pipeline is the default here (``epsilon=0.1``).
* Laine & Aila (``s-laine/tempens``, ``zca_bn.py``): pixels in ``[0, 1]``, no
  contrast normalisation, ``epsilon = 1e-5``.
* Miyato et al. (``takerum/vat_tf``, ``dataset_utils.py``): pixels ``(x - 127.5) / 255``
  and a slightly different regulariser, ``diag(1 / sqrt(s) + 1e-6)``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = ["ZCA", "global_contrast_normalize"]


def global_contrast_normalize(x: Tensor, scale: float = 55.0, min_divisor: float = 1e-8) -> Tensor:
    """Per-image global contrast normalisation (Goodfellow et al. 2013; Mean Teacher code).

    Each flattened image is centred and rescaled to L2 norm ``scale``
    (``uint8`` input is converted to float32 first). Images with a norm below
    ``min_divisor * scale`` are only centred.
    """
    if x.dim() < 2:
        raise ValueError(f"expected a batch (N, ...), got shape {tuple(x.shape)}")
    xf = x.float() if not x.is_floating_point() else x
    flat = xf.reshape(xf.shape[0], -1)
    flat = flat - flat.mean(1, keepdim=True)
    norms = flat.norm(dim=1, keepdim=True) / float(scale)
    norms = torch.where(norms < min_divisor, torch.ones_like(norms), norms)
    return (flat / norms).reshape(xf.shape)


class ZCA(nn.Module):
    """ZCA whitening fitted on training images.

    Usage::

        zca = ZCA().fit(global_contrast_normalize(train_images))
        train_w = zca.transform(global_contrast_normalize(train_images))
        test_w = zca.transform(global_contrast_normalize(test_images))
        torch.save(zca.state_dict(), "zca.pt")          # buffers: mean, matrix, epsilon

    Args:
        epsilon: Eigenvalue regulariser (default 0.1, the Mean Teacher value, meant for
            contrast-normalised images; see the module docstring for the others).
        dtype: dtype of the stored mean and whitening matrix (fitting always runs in
            float64).  ``transform`` computes in this dtype and returns it.
        chunk_size: Rows processed at a time by ``fit`` and ``transform`` (bounds
            memory on large datasets).

    Buffers (in ``state_dict``): ``mean`` (``D``), ``matrix`` (``D x D``, symmetric) and
    ``epsilon`` (scalar); empty until :meth:`fit` or :meth:`load_state_dict`.
    """

    def __init__(
        self, epsilon: float = 0.1, *, dtype: torch.dtype = torch.float32, chunk_size: int = 4096
    ) -> None:
        super().__init__()
        if not float(epsilon) >= 0.0:
            raise ValueError(f"epsilon must be non-negative, got {epsilon}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.dtype = dtype
        self.chunk_size = int(chunk_size)
        self.register_buffer("mean", torch.empty(0, dtype=dtype))
        self.register_buffer("matrix", torch.empty(0, 0, dtype=dtype))
        self.register_buffer("epsilon", torch.tensor(float(epsilon), dtype=torch.float64))

    @property
    def fitted(self) -> bool:
        return self.matrix.numel() > 0

    @property
    def num_features(self) -> int:
        return int(self.mean.numel())

    def extra_repr(self) -> str:
        return f"epsilon={float(self.epsilon)}, num_features={self.num_features}, dtype={self.dtype}"

    @torch.no_grad()
    def fit(self, x: Tensor) -> "ZCA":
        """Fit the mean and whitening matrix on ``x`` (``N x ...``, flattened per sample).

        Needs ``N >= 2``. Returns ``self``.
        """
        if x.dim() < 2 or x.shape[0] < 2:
            raise ValueError(f"fit needs a batch of at least 2 samples (N, ...), got shape {tuple(x.shape)}")
        flat = x.reshape(x.shape[0], -1)
        n, d = flat.shape
        device = flat.device
        mean = torch.zeros(d, dtype=torch.float64, device=device)
        for start in range(0, n, self.chunk_size):
            mean += flat[start : start + self.chunk_size].to(torch.float64).sum(0)
        mean /= n
        cov = torch.zeros(d, d, dtype=torch.float64, device=device)
        for start in range(0, n, self.chunk_size):
            xc = flat[start : start + self.chunk_size].to(torch.float64) - mean
            cov.addmm_(xc.T, xc)
        cov /= n
        evals, evecs = torch.linalg.eigh(cov)
        scale = (evals.clamp_min(0.0) + float(self.epsilon)).rsqrt()
        if not torch.isfinite(scale).all():
            raise ValueError(
                "the covariance is singular and epsilon=0: pass epsilon > 0 to regularise the whitening"
            )
        matrix = (evecs * scale) @ evecs.T
        self.mean = mean.to(self.dtype)
        self.matrix = ((matrix + matrix.T) / 2).to(self.dtype)
        return self

    def _check_fitted(self, x: Tensor) -> None:
        if not self.fitted:
            raise RuntimeError("ZCA is not fitted: call fit() or load_state_dict() first")
        if x.dim() < 2 or x[0].numel() != self.num_features:
            raise ValueError(
                f"expected a batch of samples with {self.num_features} values each, got shape {tuple(x.shape)}"
            )

    @torch.no_grad()
    def transform(self, x: Tensor) -> Tensor:
        """Whiten ``x`` (same layout as the fitting data); returns ``self.dtype``, shape of ``x``."""
        self._check_fitted(x)
        flat = x.reshape(x.shape[0], -1)
        mean = self.mean.to(flat.device)
        matrix = self.matrix.to(flat.device)
        out = torch.empty(flat.shape, dtype=self.dtype, device=flat.device)
        for start in range(0, flat.shape[0], self.chunk_size):
            chunk = flat[start : start + self.chunk_size].to(self.dtype) - mean
            torch.mm(chunk, matrix, out=out[start : start + self.chunk_size])
        return out.reshape(x.shape)

    def fit_transform(self, x: Tensor) -> Tensor:
        return self.fit(x).transform(x)

    @torch.no_grad()
    def inverse_transform(self, z: Tensor) -> Tensor:
        """Undo :meth:`transform` (exact up to round-off, the matrix being invertible for epsilon > 0)."""
        self._check_fitted(z)
        flat = z.reshape(z.shape[0], -1).to(torch.float64)
        m = self.matrix.to(flat.device, torch.float64)
        x = torch.linalg.solve(m, flat.T).T + self.mean.to(flat.device, torch.float64)
        return x.to(self.dtype).reshape(z.shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # the buffers are empty until fitted: adopt the checkpoint's sizes
        for name in ("mean", "matrix"):
            key = prefix + name
            value: Optional[Tensor] = state_dict.get(key)
            if value is not None and tuple(value.shape) != tuple(getattr(self, name).shape):
                setattr(self, name, torch.empty(value.shape, dtype=self.dtype, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
