"""Heat maps and colour scales of the viewer: per-step attention maps as small PNGs, colours from matplotlib.

A trace's maps over one image are one PNG, a *sprite*: one tile per step,
stacked top to bottom, each tile the patch grid of the image (one pixel per
patch where the patches tile the image in equal cells, as every supported
model family's image tokens do; otherwise a raster of at most
``RASTER_SIDE`` pixels). The page stretches a tile over the image with CSS
(``image-rendering: pixelated`` keeps the cells sharp) and shows step ``k`` by
moving the sprite, so a trace costs one small file per image however many
steps it has.

Colours come from matplotlib colormaps: the attention maps from ``magma``
(the attention-strip figure's), with opacity rising with the value so that the
image shows through where the step does not look; per-token entropy and CRM
dependence as a few discrete classes of ``YlOrRd`` and ``RdPu``, written
into the site's ``scales.css``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

MAP_CMAP = "magma"
ENTROPY_CMAP = "YlOrRd"
DEPENDENCE_CMAP = "RdPu"
N_CLASSES = 10
# light part of the sequential maps only: black text stays readable on every class
CLASS_RANGE = (0.0, 0.55)
RASTER_SIDE = 128
# opacity of a map cell: from MIN_ALPHA (no attention) to MIN_ALPHA + ALPHA_RANGE (the scale's top)
MIN_ALPHA, ALPHA_RANGE = 0.15, 0.7


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _hex(rgba) -> str:
    r, g, b = (int(round(255 * float(v))) for v in rgba[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass(frozen=True)
class Grid:
    """Where the patches of one image fall: cell ranges per patch on a ``rows x cols`` canvas."""

    rows: int
    cols: int
    cells: np.ndarray  # [patch, 4]: row0, row1, col0, col1 (half-open)
    extent: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    exact: bool  # one canvas pixel per cell of an equal-cell tiling


def patch_grid(boxes: np.ndarray) -> Grid | None:
    """The canvas the patch boxes (``[patch, 4]``, XYXY pixels of one image) are drawn on; None without boxes."""
    boxes = np.asarray(boxes, dtype=float)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])] if len(boxes) else boxes
    if not len(boxes):
        return None
    # box edges computed per patch differ in the last float32 digits: a thousandth of a pixel is one edge
    edges_x = np.unique(np.round(np.concatenate([boxes[:, 0], boxes[:, 2]]), 3))
    edges_y = np.unique(np.round(np.concatenate([boxes[:, 1], boxes[:, 3]]), 3))
    extent = (float(edges_x[0]), float(edges_y[0]), float(edges_x[-1]), float(edges_y[-1]))
    wx, wy = np.diff(edges_x), np.diff(edges_y)
    if np.allclose(wx, wx[0], rtol=1e-3) and np.allclose(wy, wy[0], rtol=1e-3):
        cells = np.stack([
            np.searchsorted(edges_y, np.round(boxes[:, 1], 3)), np.searchsorted(edges_y, np.round(boxes[:, 3], 3)),
            np.searchsorted(edges_x, np.round(boxes[:, 0], 3)), np.searchsorted(edges_x, np.round(boxes[:, 2], 3)),
        ], axis=1)
        return Grid(len(edges_y) - 1, len(edges_x) - 1, cells, extent, True)
    width, height = extent[2] - extent[0], extent[3] - extent[1]
    cols = max(1, int(round(RASTER_SIDE * width / max(width, height))))
    rows = max(1, int(round(RASTER_SIDE * height / max(width, height))))
    sx, sy = cols / width, rows / height
    cells = np.stack([
        np.floor((boxes[:, 1] - extent[1]) * sy), np.ceil((boxes[:, 3] - extent[1]) * sy),
        np.floor((boxes[:, 0] - extent[0]) * sx), np.ceil((boxes[:, 2] - extent[0]) * sx),
    ], axis=1).astype(int)
    return Grid(rows, cols, cells, extent, False)


def tiles(maps: np.ndarray, grid: Grid, scale: Sequence[float]) -> np.ndarray:
    """The sprite's values: ``[n_steps * rows, cols]`` in [0, 1], NaN where a step has no map.

    ``maps`` are the steps' shares over this image's patches (``[n_steps, patch]``,
    patch order as in the grid); ``scale`` the value each step's map is divided by
    (its own largest share, or the item's).
    """
    n = len(maps)
    out = np.full((n, grid.rows, grid.cols), np.nan)
    scale = np.asarray(scale, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(scale[:, None] > 0, maps / scale[:, None], 0.0)
    ok = np.isfinite(maps).all(axis=1)
    cells = grid.cells
    if ok.any():
        out[ok] = 0.0
        if ((cells[:, 1] - cells[:, 0]) == 1).all() and ((cells[:, 3] - cells[:, 2]) == 1).all():
            # one cell per patch (every exact grid): a single scatter of every step at once
            steps = np.flatnonzero(ok)
            idx = (np.repeat(steps, len(cells)), np.tile(cells[:, 0], len(steps)), np.tile(cells[:, 2], len(steps)))
            np.maximum.at(out, idx, values[ok].ravel())
        else:
            for p, (r0, r1, c0, c1) in enumerate(cells):
                out[ok, r0:r1, c0:c1] = np.maximum(out[ok, r0:r1, c0:c1], values[ok, p][:, None, None])
    return np.clip(out, 0.0, 1.0).reshape(n * grid.rows, grid.cols)


def write_sprite(values: np.ndarray, path: Path) -> Path:
    """Colour the sprite's values with ``MAP_CMAP`` (opacity rising with the value) and write an RGBA PNG."""
    from PIL import Image

    rgba = _cmap(MAP_CMAP)(np.nan_to_num(values, nan=0.0))
    rgba[..., 3] = np.where(np.isfinite(values), MIN_ALPHA + ALPHA_RANGE * np.nan_to_num(values), 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(rgba * 255).astype(np.uint8), mode="RGBA").save(path, format="PNG")
    return path


def class_of(value: float | None, top: float) -> int | None:
    """The colour class (0..N_CLASSES-1) of a value on the scale [0, top]; None for a missing value."""
    if value is None or not np.isfinite(value) or top <= 0:
        return None
    return int(min(N_CLASSES - 1, max(0, np.floor(N_CLASSES * value / top))))


def _class_colours(name: str) -> list[str]:
    cmap = _cmap(name)
    lo, hi = CLASS_RANGE
    return [_hex(cmap(lo + (hi - lo) * (k + 0.5) / N_CLASSES)) for k in range(N_CLASSES)]


def _gradient(name: str, lo: float = 0.0, hi: float = 1.0, stops: int = 11) -> str:
    cmap = _cmap(name)
    colours = [_hex(cmap(lo + (hi - lo) * k / (stops - 1))) for k in range(stops)]
    return "linear-gradient(to right, " + ", ".join(colours) + ")"


def scales_css() -> str:
    """CSS classes for entropy (``.e0``..) and dependence (``.d0``..) colours and the legends' gradients."""
    lines = ["/* written by peekaboo.viewer.maps from matplotlib colormaps */"]
    for k, colour in enumerate(_class_colours(ENTROPY_CMAP)):
        lines.append(f".e{k} {{ background: {colour}; }}")
    for k, colour in enumerate(_class_colours(DEPENDENCE_CMAP)):
        lines.append(f".d{k} {{ background: {colour}; }}")
    lines.append(f".legend-map {{ background: {_gradient(MAP_CMAP)}; }}")
    lines.append(f".legend-entropy {{ background: {_gradient(ENTROPY_CMAP, *CLASS_RANGE)}; }}")
    lines.append(f".legend-dependence {{ background: {_gradient(DEPENDENCE_CMAP, *CLASS_RANGE)}; }}")
    return "\n".join(lines) + "\n"
