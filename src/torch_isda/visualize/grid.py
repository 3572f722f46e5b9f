"""PNG image grids: GAN samples, and the augmented-sample figure of the paper (Figs. 6, 13, 14).

Images are ``(N, C, H, W)`` tensors with ``C`` in ``{1, 3}``, ``uint8`` or floating in
``[0, 1]`` (values are clamped). Every PNG is written atomically (temporary file in the
same directory, then ``os.replace``). Only matplotlib's object-oriented Agg API is used
(no ``pyplot``, the process's backend is left alone).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..utils.atomic_file import atomic_write

__all__ = [
    "image_grid",
    "save_image_grid",
    "save_titled_grid",
    "visualization_columns",
    "save_visualization_grid",
    "save_neighbour_grid",
    "save_sample_grid",
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


def atomic_write_with(path: PathLike, write) -> Path:
    """``write(f)`` into a temporary binary file next to ``path``, then move it onto ``path``
    (:func:`torch_isda.utils.atomic_file.atomic_write`): readers see the old file or the
    complete new one."""
    with atomic_write(path, "wb") as f:
        write(f)
    return Path(path)


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
    path: PathLike, columns: Sequence[tuple[str, Tensor]], row_labels: Optional[Sequence[str]] = None,
    title: Optional[str] = None, cell_inches: float = 0.85, dpi: int = 100,
    separate_before: Optional[int] = None, group_titles: Optional[tuple[str, str]] = None,
) -> Path:
    """A figure with one titled column per ``(title, images)`` entry; row ``i`` shows image
    ``i`` of every column (all columns need the same number of rows).

    ``separate_before``: the index of the first column of a second group of columns,
    set apart by a wider gap and a vertical rule; ``group_titles`` then names the two
    groups above the column titles.

    The cells are tiled into one mosaic drawn by a single ``imshow`` (white gaps; images of
    different sizes are centred in square cells; grey columns are shown in grey, and
    converted to RGB when another column is in colour), so large figures (hundreds of
    cells, e.g. ``neighbours.png``) render in well under a second.
    """
    cols, nrows = _checked_columns(columns, row_labels)
    ncols = len(cols)
    if separate_before is not None and not 0 < separate_before < ncols:
        separate_before = None
    layout = _ColumnLayout(max(max(x.shape[2], x.shape[3]) for _, x in cols), separate_before)
    mosaic = _column_mosaic(cols, nrows, layout)
    head = 0.35 + (0.3 if title else 0.0) + (0.2 if group_titles else 0.0)
    left = 0.45 if row_labels is not None else 0.1
    right = 0.35  # keeps the last column and its title off the edge
    inner_w = ncols * cell_inches + layout.extra * cell_inches / layout.size
    bottom = 0.15  # keeps the last row off the edge
    fig, fw, fh = _agg_figure((left + inner_w + right, head + max(nrows, 1) * cell_inches + bottom), dpi)
    ax = fig.add_axes((left / fw, bottom / fh, inner_w / fw, 1 - head / fh - bottom / fh))
    _show_mosaic(ax, mosaic)
    _label_columns(ax, [name for name, _ in cols], layout, mosaic.shape[0], group_titles)
    if row_labels is not None:
        size, step = layout.size, layout.step
        for i, label in enumerate(row_labels):
            ax.text(-0.5 - 0.08 * size, i * step + (size - 1) / 2, str(label), fontsize=7,
                    rotation=90, ha="right", va="center", clip_on=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def _checked_columns(columns: Sequence[tuple[str, Tensor]], row_labels: Optional[Sequence[str]]
                     ) -> tuple[list[tuple[str, Tensor]], int]:
    """The columns as ``(title, images in [0, 1])`` and their common number of rows."""
    if not columns:
        raise ValueError("need at least one column")
    cols = [(str(t), _to_unit(x)) for t, x in columns]
    nrows = cols[0][1].shape[0]
    if any(x.shape[0] != nrows for _, x in cols):
        raise ValueError(f"every column needs {nrows} images; got {[x.shape[0] for _, x in cols]}")
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"{len(row_labels)} row labels for {nrows} rows")
    return cols, nrows


class _ColumnLayout:
    """Square cells of ``size`` pixels with white gaps; columns from ``separate_before`` on
    are shifted right by ``extra`` pixels (the second group of :func:`save_titled_grid`)."""

    def __init__(self, size: int, separate_before: Optional[int]) -> None:
        self.size, self.separate_before = size, separate_before
        self.gap = max(1, round(0.07 * size))
        self.step = size + self.gap
        self.extra = round(0.6 * size) if separate_before is not None else 0

    def col_x(self, j: int) -> int:
        """Left edge of column ``j`` in the mosaic."""
        shifted = self.separate_before is not None and j >= self.separate_before
        return j * self.step + (self.extra if shifted else 0)


def _column_mosaic(cols: list[tuple[str, Tensor]], nrows: int, layout: _ColumnLayout) -> np.ndarray:
    """The cells tiled into one array (grey columns in RGB when another column is in colour)."""
    rgb = any(x.shape[1] == 3 for _, x in cols)
    size, step = layout.size, layout.step
    H, W = max(nrows, 1) * step - layout.gap, layout.col_x(len(cols) - 1) + size
    mosaic = np.ones((H, W, 3) if rgb else (H, W), dtype=np.float32)
    for j, (_, x) in enumerate(cols):
        h, w = x.shape[2], x.shape[3]
        for i in range(nrows):
            img = _hwc(x[i])
            if rgb and img.ndim == 2:
                img = np.repeat(img[:, :, None], 3, axis=2)
            y0, x0 = i * step + (size - h) // 2, layout.col_x(j) + (size - w) // 2
            mosaic[y0 : y0 + h, x0 : x0 + w] = img
    return mosaic


def _label_columns(ax: Any, names: list[str], layout: _ColumnLayout, H: int,
                   group_titles: Optional[tuple[str, str]]) -> None:
    """Column titles; with a second group, the rule before it and the two group titles."""
    size, col_x, split, ncols = layout.size, layout.col_x, layout.separate_before, len(names)
    for j, name in enumerate(names):
        ax.text(col_x(j) + (size - 1) / 2, -0.5 - 0.04 * size, name, fontsize=7,
                ha="center", va="bottom", clip_on=False)
    if split is None:
        return
    x_rule = col_x(split) - 0.5 - layout.extra / 2 - layout.gap / 2
    ax.plot([x_rule, x_rule], [-0.5, H - 0.5], color="0.6", lw=0.8, clip_on=False)
    if group_titles:
        y_group = -0.5 - 0.3 * size
        for (lo, hi), text in zip(((0, split - 1), (split, ncols - 1)), group_titles):
            x_mid = (col_x(lo) + col_x(hi) + size - 1) / 2
            ax.text(x_mid, y_group, text, fontsize=7.5, ha="center", va="bottom",
                    fontweight="bold", clip_on=False)


def _agg_figure(figsize: tuple[float, float], dpi: int) -> tuple[Any, float, float]:
    """A matplotlib Agg figure (no pyplot) and its width and height in inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.get_figwidth(), fig.get_figheight()


def _show_mosaic(ax: Any, mosaic: np.ndarray) -> None:
    """``mosaic`` drawn pixel for pixel on ``ax`` (grey arrays in grey), without axes."""
    kw = dict(cmap="gray", vmin=0.0, vmax=1.0) if mosaic.ndim == 2 else {}
    ax.imshow(mosaic, interpolation="nearest", aspect="auto", **kw)
    ax.set_axis_off()


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
    columns = visualization_columns(result, neighbours_of)
    K = result.augmented.shape[1]
    split = 2 + K if len(columns) > 2 + K else None  # the nearest-neighbour columns
    groups = None
    if split is not None:
        columns = columns[:split] + [(f"NN {m + 1}", x) for m, (_, x) in
                                     enumerate(columns[split:])]
        groups = ("Step I and II (ISDA)", f"nearest training images of aug {neighbours_of + 1}")
    return save_titled_grid(path, columns, row_labels=rows, title=title,
                            separate_before=split, group_titles=groups)


def _wrap(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` wrapped (each line separately) to fit ``width_inches`` at ``fontsize``."""
    import textwrap

    chars = max(20, int(width_inches * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def _default_label(result: Any, noun: str, class_names: Optional[Sequence[str]]):
    labels = [int(y) for y in result.labels]

    def label(i: int, k: int) -> str:
        y = labels[i]
        name = str(class_names[y]) if class_names is not None else str(y)
        if name.isdigit():  # "digit 0" rather than a bare "0" (not a decimal "0.1")
            name = f"{noun} {name}"
        return f"{name}, aug {k + 1}"

    return label


def save_neighbour_grid(
    path: PathLike, result: Any, title: Optional[str] = None, *,
    class_names: Optional[Sequence[str]] = None, noun: str = "class", cell_inches: float = 0.42,
    dpi: int = 100,
) -> Path:
    """Fig. 14 as a compact grid: one row per shown image ``i``, one block per augmentation
    ``k`` (``K`` blocks side by side); each block is the augmented image, a gap, then its
    nearest training images (pixel space) with their Euclidean distances (in ``[0, 1]``
    pixel units) under them. Blocks are labelled "digit 0, aug 1" (``noun`` and the class,
    or ``class_names``)."""
    if getattr(result, "neighbour_images", None) is None:
        raise ValueError("the result holds no nearest neighbours (pass train_images to visualize)")
    mosaic, texts, size = _neighbour_mosaic(result, _default_label(result, noun, class_names))
    H, W = mosaic.shape[:2]
    margin_l, margin_r, margin_b = 0.15, 0.15, 0.1
    unit = cell_inches / size  # inches per mosaic pixel
    if title:
        title = _wrap(title, margin_l + W * unit + margin_r, 9)
    head = 0.2 + 0.17 * title.count("\n") + 0.2 if title else 0.15
    fig, fw, fh = _agg_figure((margin_l + W * unit + margin_r, head + H * unit + margin_b), dpi)
    ax = fig.add_axes((margin_l / fw, margin_b / fh, W * unit / fw, H * unit / fh))
    _show_mosaic(ax, mosaic)
    for x, y, text, va, fontsize in texts:
        ax.text(x, y, text, fontsize=fontsize, ha="center" if va == "top" else "left", va=va,
                clip_on=False)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.1 / fh, va="top")
    return atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def _neighbour_mosaic(result: Any, label: Callable[[int, int], str]) -> tuple[np.ndarray, list, int]:
    """The cells of :func:`save_neighbour_grid` tiled into one array, the texts to draw on it
    ``(x, y, text, va, fontsize)`` and the cell size in pixels."""
    aug = _to_unit(result.augmented.flatten(0, 1))
    N, K = result.augmented.shape[:2]
    nn_all = result.neighbour_images  # (N, K, m, C, H, W)
    m = nn_all.shape[2]
    nn_unit = _to_unit(nn_all.flatten(0, 2)).view(N, K, m, *aug.shape[1:])
    dist = getattr(result, "neighbour_distances", None)
    h, w = aug.shape[2], aug.shape[3]
    size = max(h, w)
    gap = max(1, round(0.08 * size))
    sep = 3 * gap  # between the augmented image and its neighbours
    block_gap = round(0.9 * size)
    label_h, dist_h = 0.55 * size, 0.5 * size
    block_w = (1 + m) * size + (m - 1) * gap + sep
    row_h = label_h + size + dist_h
    W = K * block_w + (K - 1) * block_gap
    H = int(np.ceil(N * row_h))
    mosaic = np.ones((H, W, 3) if aug.shape[1] == 3 else (H, W), dtype=np.float32)
    texts = []
    for i in range(N):
        y0 = int(round(i * row_h + label_h))
        for k in range(K):
            x0 = k * (block_w + block_gap)
            cells = [aug[i * K + k]] + [nn_unit[i, k, j] for j in range(m)]
            for j, img in enumerate(cells):
                xj = x0 + j * (size + gap) + (sep - gap if j > 0 else 0)
                yy, xx = y0 + (size - h) // 2, xj + (size - w) // 2
                mosaic[yy : yy + h, xx : xx + w] = _hwc(img)
                if j > 0 and dist is not None:
                    texts.append((xj + (size - 1) / 2, y0 + size + 0.05 * size,
                                  f"{float(dist[i, k, j - 1]):.2f}", "top", 5.5))
            texts.append((x0 - 0.5, y0 - 0.12 * size, label(i, k), "bottom", 6.5))
    return mosaic, texts, size


def save_sample_grid(path: PathLike, images: Tensor, nrow: int = 8,
                     title: Optional[str] = None, cell_inches: float = 0.42,
                     dpi: int = 100) -> Path:
    """GAN samples as a titled grid (``nrow`` images per row), e.g. ``samples.png``."""
    x = _to_unit(images)
    grid = image_grid(x, nrow, padding=1, pad_value=1.0)
    size = max(x.shape[2], x.shape[3])
    unit = cell_inches / size
    gh, gw = grid.shape[:2]
    if title:
        title = _wrap(title, 0.2 + gw * unit, 8)
    head = 0.25 + 0.15 * title.count("\n") + 0.1 if title else 0.1
    fig, fw, fh = _agg_figure((0.2 + gw * unit, head + gh * unit + 0.1), dpi)
    ax = fig.add_axes((0.1 / fw, 0.1 / fh, gw * unit / fw, gh * unit / fh))
    _show_mosaic(ax, grid)
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 0.06 / fh, va="top")
    return atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
