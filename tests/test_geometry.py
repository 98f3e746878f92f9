"""Image-token geometry against the real processors and vision towers of every tiny family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures.models import load
from peekaboo import geometry
from peekaboo.models.tiny import FAMILIES, build_processor

SIZES = [(150, 100), (33, 200), (20, 15), (640, 480)]  # odd, tall, below one cell, downscaled


def blank(size, value=128):
    return Image.new("RGB", size, (value, value, value))


def one_square(size, box, value=255):
    img = blank(size)
    arr = np.array(img)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = value
    return Image.fromarray(arr)


def encode(proc, images, text="Describe."):
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    prompt = proc.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                      add_generation_prompt=True)
    return proc(text=[prompt], images=images, return_tensors="pt")


@pytest.mark.parametrize("family", FAMILIES)
def test_boxes_tile_each_image_and_match_processor_grid(family):
    proc = build_processor(family)
    grid = geometry.token_grid(proc, family)
    assert (grid.patch_size, grid.merge_size) == geometry.FAMILY_GEOMETRY[family][:2]
    images = [blank(s) for s in SIZES]
    enc = encode(proc, images)
    thw = enc["image_grid_thw"].numpy()
    image_token = proc.tokenizer.convert_tokens_to_ids(proc.image_token)
    located = geometry.prompt_images(enc["input_ids"][0].numpy(), image_token, thw, [im.size for im in images], grid)
    assert len(located) == int((enc["input_ids"][0] == image_token).sum())
    for k, (w, h) in enumerate(SIZES):
        boxes = located.boxes[located.image == k].astype(np.float64)
        t, gh, gw = thw[k]
        assert len(boxes) == t * gh * gw // grid.merge_size**2
        # the tokens tile the original image: inside it, no overlap, full area
        assert boxes.min() >= -1e-4 and np.all(boxes[:, [2]] <= w + 1e-3) and np.all(boxes[:, [3]] <= h + 1e-3)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
        assert area == pytest.approx(w * h, rel=1e-5)
        # row-major over the merged grid: x grows within a row, rows go down
        cols = gw // grid.merge_size
        assert np.all(np.diff(boxes[:cols, 0]) > 0) and boxes[cols, 1] > boxes[0, 1]
        assert boxes[cols, 0] == pytest.approx(0)
    positions = located.positions
    assert np.all(np.diff(positions) > 0)


def test_batch_rows_shift_with_left_padding_and_split_images():
    proc = build_processor("qwen2_vl")
    grid = geometry.token_grid(proc, "qwen2_vl")
    a, b = [blank((150, 100))], [blank((60, 90)), blank((90, 60))]
    prompts = []
    for imgs in (a, b):
        content = [{"type": "image"} for _ in imgs] + [{"type": "text", "text": "Compare these images in detail."}]
        prompts.append(proc.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                add_generation_prompt=True))
    enc = proc(text=prompts, images=a + b, return_tensors="pt", padding=True, padding_side="left")
    image_token = proc.tokenizer.convert_tokens_to_ids(proc.image_token)
    rows = geometry.batch_prompt_images(enc["input_ids"].numpy(), image_token, enc["image_grid_thw"].numpy(),
                                        [[im.size for im in a], [im.size for im in b]], grid)
    for r, row in enumerate(rows):
        assert np.all(enc["input_ids"][r, row.positions].numpy() == image_token)
    assert set(rows[1].image.tolist()) == {0, 1} and set(rows[0].image.tolist()) == {0}
    with pytest.raises(geometry.GeometryError, match="row 0"):
        geometry.batch_prompt_images(enc["input_ids"].numpy(), image_token, enc["image_grid_thw"].numpy()[1:],
                                     [[(150, 100)], [(60, 90), (90, 60)]], grid)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_marked_patch_changes_exactly_the_token_whose_box_holds_it(family, tiny_models):
    """Blank image vs the same with one small square: the patch embeddings that change (grouped into
    merged tokens, as the vision merger folds them) belong to the token whose box holds the square."""
    model, proc = load(tiny_models[family])
    grid = geometry.token_grid(proc, family)
    size = (200, 120)
    square = (94, 50, 100, 56)  # 6 x 6 pixels
    embeddings = []
    hook = model.model.visual.patch_embed.register_forward_hook(lambda m, i, o: embeddings.append(o.detach()))
    encodings = []
    for img in (blank(size), one_square(size, square)):
        enc = encode(proc, [img])
        encodings.append(enc)
        with torch.no_grad():
            model.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"])
    hook.remove()
    m2 = grid.merge_size**2
    diff = (embeddings[1] - embeddings[0]).abs().reshape(-1, m2, embeddings[0].shape[-1]).amax(dim=(1, 2))
    changed = set(torch.nonzero(diff > 1e-5).flatten().tolist())
    boxes = geometry.image_token_boxes(encodings[0]["image_grid_thw"][0].tolist(), size, grid)
    cx, cy = (square[0] + square[2]) / 2, (square[1] + square[3]) / 2
    holder = int(np.flatnonzero((boxes[:, 0] <= cx) & (cx < boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy < boxes[:, 3]))[0])
    assert holder in changed
    # bicubic resizing may leak a pixel or two: every changed token touches the slightly grown square
    pad = 3.0
    for k in changed:
        x0, y0, x1, y1 = boxes[k]
        assert x0 < square[2] + pad and x1 > square[0] - pad and y0 < square[3] + pad and y1 > square[1] - pad
    # the processor's own pixel rows agree: the changed rows are the holder's patches
    rows = (encodings[1]["pixel_values"] - encodings[0]["pixel_values"]).abs().amax(-1)
    assert set((torch.nonzero(rows > 1e-6).flatten() // m2).tolist()) == changed


def test_region_weights_are_covered_fractions():
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20]], np.float32)
    w = geometry.region_weights(boxes, [[5, 0, 15, 10], [0, 0, 20, 20]])
    np.testing.assert_allclose(w, [[0.5, 1.0], [0.5, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(geometry.region_weights(boxes, [0, 5, 10, 15]), [0.5, 0.0, 0.5])
    # a region only weighs tokens of its own image
    w = geometry.region_weights(boxes, [[0, 0, 20, 20]], patch_image=np.array([0, 1, 0]), region_image=[1])
    np.testing.assert_allclose(w[:, 0], [0.0, 1.0, 0.0])


def test_family_of_every_tiny_config(tiny_models):
    from transformers import AutoConfig

    for family, path in tiny_models.items():
        assert geometry.family_of(AutoConfig.from_pretrained(path)) == family
    with pytest.raises(geometry.GeometryError, match="llama"):
        geometry.family_of(type("C", (), {"model_type": "llama"})())
