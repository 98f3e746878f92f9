"""Image-token geometry: where each image token of a prompt lies in the original image.

The one place that knows how a family turns an image into tokens. All the
supported families (Qwen3-VL, Qwen2.5-VL, Qwen2-VL, GLM-4.1V/4.5V/4.6V) do it
the same way, with different numbers:

1. the image is resized as a whole (no crop, no pad) to a size whose sides are
   multiples of ``patch * merge``; the processor reports the result as
   ``image_grid_thw = (t, h, w)`` in patches (``t`` = 1 for a still image: the
   temporal patch stacks two copies of the same frame);
2. patches are grouped ``merge x merge`` into one token, and the tokens of an
   image follow each other row by row over the merged grid
   (``t``, then ``h / merge``, then ``w / merge``): the processor's patchify
   orders patches that way and the vision merger folds each run of
   ``merge**2`` patches into one token;
3. the prompt holds one image-pad token per merged token, images in order.

So token ``k`` of an image covers merged cell ``(row, col)`` of the resized
image, and its box in original pixels follows from the per-axis resize factors
``original / (grid * patch)``. The patch size is read from the processor (the
family's published value is the fallback and a check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

# family -> (patch size, spatial merge, temporal patch) as published
FAMILY_GEOMETRY: dict[str, tuple[int, int, int]] = {
    "qwen3_vl": (16, 2, 2),
    "qwen2_5_vl": (14, 2, 2),
    "qwen2_vl": (14, 2, 2),
    "glm4v": (14, 2, 2),
    "glm46v": (14, 2, 2),
    "glm4v_moe": (14, 2, 2),
}

# model_type of the config (top level or text config) -> family
_MODEL_TYPES = {
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_text": "qwen3_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen2_5_vl_text": "qwen2_5_vl",
    "qwen2_vl": "qwen2_vl",
    "qwen2_vl_text": "qwen2_vl",
    "glm4v": "glm4v",
    "glm4v_text": "glm4v",
    "glm46v": "glm46v",
    "glm4v_moe": "glm4v_moe",
    "glm4v_moe_text": "glm4v_moe",
}


class GeometryError(ValueError):
    """The prompt's image tokens do not match the image grids (names the row and image)."""


def family_of(config: Any) -> str:
    """The geometry family of a transformers config (by ``model_type``)."""
    model_type = getattr(config, "model_type", None)
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    raise GeometryError(
        f"model_type '{model_type}' is not a supported family (known: {', '.join(sorted(FAMILY_GEOMETRY))})"
    )


@dataclass(frozen=True)
class TokenGrid:
    """How one family's processor maps pixels to tokens."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int = 2

    @property
    def cell(self) -> int:
        """Side of one merged token in resized pixels."""
        return self.patch_size * self.merge_size


def token_grid(processor: Any = None, family: str | None = None) -> TokenGrid:
    """The token grid of a processor (its image processor's patch and merge size), else the family's."""
    default = FAMILY_GEOMETRY.get(family or "")
    image_processor = getattr(processor, "image_processor", processor)
    patch = getattr(image_processor, "patch_size", None)
    merge = getattr(image_processor, "merge_size", None)
    temporal = getattr(image_processor, "temporal_patch_size", None)
    if patch is None or merge is None:
        if default is None:
            raise GeometryError(f"cannot tell the patch size: no processor and unknown family '{family}'")
        return TokenGrid(*default)
    return TokenGrid(int(patch), int(merge), int(temporal or (default[2] if default else 2)))


@dataclass
class PromptImages:
    """The image tokens of one prompt row."""

    positions: np.ndarray  # int64 [P]: index in the (padded) input ids of each image token
    boxes: np.ndarray  # float32 [P, 4]: XYXY in original pixels of its image
    image: np.ndarray  # int16 [P]: which image of the prompt the token belongs to

    def __len__(self) -> int:
        return int(self.positions.shape[0])


def image_token_boxes(grid_thw: Sequence[int], original_size: tuple[float, float], grid: TokenGrid) -> np.ndarray:
    """Boxes (XYXY, original pixels) of one image's tokens in prompt order.

    ``grid_thw`` is the processor's ``(t, h, w)`` in patches, ``original_size``
    is ``(width, height)`` of the image as handed to the processor.
    """
    t, h, w = (int(v) for v in grid_thw)
    m = grid.merge_size
    if h % m or w % m:
        raise GeometryError(f"image grid {h}x{w} is not a multiple of the merge size {m}")
    width, height = (float(v) for v in original_size)
    sx = width / (w * grid.patch_size)  # original pixels per resized pixel, per axis
    sy = height / (h * grid.patch_size)
    rows, cols = h // m, w // m
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    r, c = r.ravel(), c.ravel()
    cell = grid.cell
    boxes = np.stack([c * cell * sx, r * cell * sy, (c + 1) * cell * sx, (r + 1) * cell * sy], axis=1)
    # still images have t = 1; a temporal grid repeats the same cells per time step
    return np.tile(boxes, (t, 1)).astype(np.float32)


def tokens_per_image(grid_thw: Sequence[int], grid: TokenGrid) -> int:
    t, h, w = (int(v) for v in grid_thw)
    return t * h * w // (grid.merge_size**2)


def prompt_images(
    input_ids: Sequence[int] | np.ndarray,
    image_token_id: int,
    grids_thw: Sequence[Sequence[int]] | np.ndarray,
    original_sizes: Sequence[tuple[float, float]],
    grid: TokenGrid,
    row: int | str = 0,
) -> PromptImages:
    """Every image token of one prompt row with its box in its image's original pixels.

    ``grids_thw`` and ``original_sizes`` list this row's images in prompt order.
    Raises GeometryError naming ``row`` when the token counts disagree.
    """
    ids = np.asarray(input_ids).reshape(-1)
    positions = np.flatnonzero(ids == image_token_id).astype(np.int64)
    grids = np.asarray(grids_thw, dtype=np.int64).reshape(-1, 3)
    if len(grids) != len(original_sizes):
        raise GeometryError(f"row {row}: {len(grids)} image grids but {len(original_sizes)} image sizes")
    counts = [tokens_per_image(g, grid) for g in grids]
    if sum(counts) != len(positions):
        raise GeometryError(
            f"row {row}: {len(positions)} image tokens in the prompt but the image grids "
            f"{grids.tolist()} need {sum(counts)}"
        )
    boxes = [image_token_boxes(g, size, grid) for g, size in zip(grids, original_sizes)]
    image = np.concatenate([np.full(n, k, dtype=np.int16) for k, n in enumerate(counts)]) if counts else \
        np.zeros(0, dtype=np.int16)
    return PromptImages(
        positions=positions,
        boxes=np.concatenate(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32),
        image=image,
    )


def batch_prompt_images(
    input_ids: np.ndarray,
    image_token_id: int,
    image_grid_thw: np.ndarray | None,
    original_sizes: Sequence[Sequence[tuple[float, float]]],
    grid: TokenGrid,
) -> list[PromptImages]:
    """``prompt_images`` for each row of a batch; ``image_grid_thw`` lists all rows' images in row order."""
    ids = np.asarray(input_ids)
    grids = np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3)
    out, used = [], 0
    for b, sizes in enumerate(original_sizes):
        n = len(sizes)
        if used + n > len(grids):
            raise GeometryError(f"row {b}: needs {n} image grids, only {len(grids) - used} left")
        out.append(prompt_images(ids[b], image_token_id, grids[used:used + n], sizes, grid, row=b))
        used += n
    if used != len(grids):
        raise GeometryError(f"{len(grids)} image grids for {used} images in the batch")
    return out


def region_weights(
    patch_boxes: np.ndarray,
    region_boxes: np.ndarray | Sequence[Sequence[float]],
    patch_image: np.ndarray | None = None,
    region_image: Sequence[int] | None = None,
) -> np.ndarray:
    """Fraction of each token's box inside each region: float32 ``[P, R]`` (``[P]`` for one box).

    A token counts for a region by the share of its area the region covers, so
    the weighted sum of per-token attention is the attention on the region.
    With ``patch_image`` / ``region_image`` a region only weighs tokens of its
    own image.
    """
    boxes = np.asarray(patch_boxes, dtype=np.float64).reshape(-1, 4)
    regions = np.asarray(region_boxes, dtype=np.float64)
    single = regions.ndim == 1
    regions = regions.reshape(-1, 4)
    ix0 = np.maximum(boxes[:, None, 0], regions[None, :, 0])
    iy0 = np.maximum(boxes[:, None, 1], regions[None, :, 1])
    ix1 = np.minimum(boxes[:, None, 2], regions[None, :, 2])
    iy1 = np.minimum(boxes[:, None, 3], regions[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    weights = np.divide(inter, area[:, None], out=np.zeros_like(inter), where=area[:, None] > 0)
    if patch_image is not None and region_image is not None:
        same = np.asarray(patch_image).reshape(-1, 1) == np.asarray(region_image).reshape(1, -1)
        weights = weights * same
    weights = weights.astype(np.float32)
    return weights[:, 0] if single else weights
