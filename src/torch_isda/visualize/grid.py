"""PNG image grids: GAN samples, and the augmented-sample figure of the paper (Figs. 6, 13, 14).

Images are ``(N, C, H, W)`` tensors with ``C`` in ``{1, 3}``, ``uint8`` or floating in
``[0, 1]`` (values are clamped). Every PNG is written atomically (temporary file in the
same directory, then ``os.replace``). Only matplotlib's object-oriented Agg API is used
(no ``pyplot``, the process's backend is left alone).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "image_grid",
    "save_image_grid",
    "save_titled_grid",
    "visualization_columns",
    "save_visualization_grid",
    "save_neighbour_grid",
]

PathLike = Union[str, os.PathLike]


def _to_unit(images: Tensor) -> Tensor:
    images = torch.as_tensor(images).detach().cpu()
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, C, H, W) images with 1 or 3 channels; got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float().clamp(0.0, 1.0)


def _hwc(image: Tensor) -> np.ndarray:
    """One ``C x H x W`` image in [0, 1] to ``H x W`` (grey) or ``H x W x 3``."""
    arr = image.numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def _chmod_default(path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def atomic_write_with(path: PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _chmod_default(tmp)  # mkstemp makes 0600 files; use the usual umask-based mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def image_grid(images: Tensor, nrow: int = 8, padding: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile images into one array, ``nrow`` images per row (like torchvision's ``make_grid``).

    Returns ``H x W`` (grey) or ``H x W x 3`` float32 in ``[0, 1]``.
    """
    x = _to_unit(images)
    n, c, h, w = x.shape
    ncol = max(1, min(int(nrow), n))
    nrows = max(1, -(-n // ncol))
    H = nrows * h + (nrows + 1) * padding
    W = ncol * w + (ncol + 1) * padding
    grid = np.full((c, H, W), pad_value, dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, ncol)
        y0, x0 = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, y0 : y0 + h, x0 : x0 + w] = x[i].numpy()
    return grid[0] if c == 1 else np.transpose(grid, (1, 2, 0))


def save_image_grid(
    path: PathLike,
    images: Tensor,
    nrow: int = 8,
    padding: int = 1,
    scale: Optional[int] = None,
    pad_value: float = 1.0,
) -> Path:
    """Write :func:`image_grid` as a PNG, enlarged ``scale`` times with nearest-neighbour
    pixels (default: so that each image is at least 32 pixels wide)."""
    import matplotlib.image as mpimg

    x = _to_unit(images)
    grid = image_grid(x, nrow, padding, pad_value)
    if scale is None:
        scale = max(1, -(-32 // x.shape[-1]))
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    kw = dict(cmap="gray", vmin=0.0, vmax=1.0) if grid.ndim == 2 else {}
    return atomic_write_with(path, lambda f: mpimg.imsave(f, grid, format="png", **kw))


def save_titled_grid(
    path: PathLike,
    columns: Sequence[tuple[str, Tensor]],
    row_labels: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
    cell_inches: float = 0.85,
    dpi: int = 100,
) -> Path:
    """A figure with one titled column per ``(title, images)`` entry; row ``i`` shows image
    ``i`` of every column (all columns need the same number of rows).

    The cells are tiled into one mosaic drawn by a single ``imshow`` (white gaps; images of
    different sizes are centred in square cells; grey columns are shown in grey, and
    converted to RGB when another column is in colour), so large figures (hundreds of
    cells, e.g. ``neighbours.png``) render in well under a second.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not columns:
        raise ValueError("need at least one column")
    cols = [(str(t), _to_unit(x)) for t, x in columns]
    nrows = cols[0][1].shape[0]
    if any(x.shape[0] != nrows for _, x in cols):
        raise ValueError(f"every column needs {nrows} images; got {[x.shape[0] for _, x in cols]}")
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"{len(row_labels)} row labels for {nrows} rows")
    ncols = len(cols)
    rgb = any(x.shape[1] == 3 for _, x in cols)
    size = max(max(x.shape[2], x.shape[3]) for _, x in cols)
    gap = max(1, round(0.07 * size))
    step = size + gap
    H, W = max(nrows, 1) * step - gap, ncols * step - gap
    mosaic = np.ones((H, W, 3) if rgb else (H, W), dtype=np.float32)
    for j, (_, x) in enumerate(cols):
        h, w = x.shape[2], x.shape[3]
        for i in range(nrows):
            img = _hwc(x[i])
            if rgb and img.ndim == 2:
                img = np.repeat(img[:, :, None], 3, axis=2)
            y0, x0 = i * step + (size - h) // 2, j * step + (size - w) // 2
            mosaic[y0 : y0 + h, x0 : x0 + w] = img
    head = 0.35 + (0.3 if title else 0.0)
    left = 0.45 if row_labels is not None else 0.1
    fig = Figure(figsize=(left + ncols * cell_inches, head + max(nrows, 1) * cell_inches), dpi=dpi)
    FigureCanvasAgg(fig)
    fw, fh = fig.get_figwidth(), fig.get_figheight()
    ax = fig.add_axes((left / fw, 0.08 / fh, 1 - 0.02 / fw - left / fw, 1 - head / fh - 0.08 / fh))
    kw = dict(cmap="gray", vmin=0.0, vmax=1.0) if mosaic.ndim == 2 else {}
    ax.imshow(mosaic, interpolation="nearest", aspect="auto", **kw)
    ax.set_axis_off()
    for j, (name, _) in enumerate(cols):
        ax.text(j * step + (size - 1) / 2, -0.5 - 0.04 * size, name, fontsize=7,
                ha="center", va="bottom", clip_on=False)
    if row_labels is not None:
        for i, label in enumerate(row_labels):
            ax.text(-0.5 - 0.08 * size, i * step + (size - 1) / 2, str(label), fontsize=7,
                    rotation=90, ha="right", va="center", clip_on=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def visualization_columns(result: Any, neighbours_of: Optional[int] = 0) -> list[tuple[str, Tensor]]:
    """Columns of the augmented-sample figure from a
    :class:`~torch_isda.visualize.inversion.VisualizationResult`:
    ``original | reconstruction (Step I) | augmented 1..K (Step II)`` and, when the result
    holds nearest neighbours and ``neighbours_of`` is an augmented-sample index, the training
    images nearest (in pixel space) to that augmented sample (Fig. 14)."""
    cols: list[tuple[str, Tensor]] = [("original", result.originals), ("reconstr.", result.reconstructions)]
    K = result.augmented.shape[1]
    cols += [(f"aug {k + 1}", result.augmented[:, k]) for k in range(K)]
    nn_images = getattr(result, "neighbour_images", None)
    if nn_images is not None and neighbours_of is not None:
        if not 0 <= neighbours_of < K:
            raise ValueError(f"neighbours_of must be in [0, {K}); got {neighbours_of}")
        for m in range(nn_images.shape[2]):
            cols.append((f"NN{m + 1} of aug {neighbours_of + 1}", nn_images[:, neighbours_of, m]))
    return cols


def save_visualization_grid(
    path: PathLike,
    result: Any,
    neighbours_of: Optional[int] = 0,
    class_names: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Path:
    """Write the augmented-sample figure (rows: samples, labelled by class; columns: see
    :func:`visualization_columns`)."""
    labels = [int(y) for y in result.labels]
    rows = [class_names[y] if class_names is not None else str(y) for y in labels]
    return save_titled_grid(path, visualization_columns(result, neighbours_of), row_labels=rows, title=title)


def save_neighbour_grid(path: PathLike, result: Any, title: Optional[str] = None) -> Path:
    """Fig. 14 layout: one row per augmented image (sample ``i``, augmentation ``k``),
    columns ``augmented | NN 1..k`` (training images nearest in pixel space)."""
    if getattr(result, "neighbour_images", None) is None:
        raise ValueError("the result holds no nearest neighbours (pass train_images to visualize)")
    aug = result.augmented.flatten(0, 1)  # (N*K, C, H, W)
    nn_images = result.neighbour_images.flatten(0, 1)  # (N*K, k, C, H, W)
    cols = [("augmented", aug)] + [(f"NN {m + 1}", nn_images[:, m]) for m in range(nn_images.shape[1])]
    K = result.augmented.shape[1]
    rows = [f"{i}.{k + 1}" for i in range(result.augmented.shape[0]) for k in range(K)]
    return save_titled_grid(path, cols, row_labels=rows, title=title)
