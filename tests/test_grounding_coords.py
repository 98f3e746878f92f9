"""Coordinates to original pixels, on non-square images of several sizes, against the processors' own resize."""

import numpy as np
import pytest
from PIL import Image

from fixtures.grounding import official_resize
from peekaboo import geometry
from peekaboo.grounding import coords
from peekaboo.grounding.coords import NORM_1000, PIXELS, RESIZED_PIXELS, BoxReject, ImageFrame
from peekaboo.grounding.phrases import detector_phrases, keyword_phrases, question_stem
from peekaboo.models.tiny import build_processor

SIZES = [(150, 100), (33, 200), (640, 480), (20, 15), (1001, 97)]  # wide, tall, downscaled, tiny, extreme


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen2_vl", "glm46v"])
def test_processed_size_is_the_processors_resize(family):
    processor = build_processor(family, max_image_tokens=256)
    for width, height in SIZES:
        image = Image.new("RGB", (width, height), (50, 100, 150))
        size = coords.processed_size(processor, image, family)
        assert size == official_resize(family, processor, width, height), (family, width, height)
        # and what the chat-formatted prompt gets: image_grid_thw of the full processor call
        text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                               {"type": "text", "text": "x"}]}], tokenize=False,
                                             add_generation_prompt=True)
        _, gh, gw = processor(text=[text], images=[image], return_tensors="np")["image_grid_thw"][0]
        patch = geometry.token_grid(processor, family).patch_size
        assert size == (gw * patch, gh * patch)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "glm46v"])
def test_a_token_cell_in_resized_pixels_maps_to_that_tokens_box_in_the_traces_geometry(family):
    """The same geometry as the traces stage: a box on one merged token's cell lands on that token's box."""
    processor = build_processor(family, max_image_tokens=256)
    grid = geometry.token_grid(processor, family)
    for width, height in SIZES:
        image = Image.new("RGB", (width, height))
        rw, rh = coords.processed_size(processor, image, family)
        token_boxes = geometry.image_token_boxes((1, rh // grid.patch_size, rw // grid.patch_size), (width, height),
                                                 grid)
        cols = rw // grid.cell
        for k in (0, len(token_boxes) // 2, len(token_boxes) - 1):
            r, c = divmod(k, cols)
            cell = [c * grid.cell, r * grid.cell, (c + 1) * grid.cell, (r + 1) * grid.cell]
            mapped = coords.to_pixels(cell, RESIZED_PIXELS, ImageFrame(width, height, rw, rh))
            assert mapped == pytest.approx(token_boxes[k].tolist(), abs=0.006), (family, width, height, k)


@pytest.mark.parametrize("width, height", SIZES)
def test_norm1000_and_resized_pixels_map_by_their_own_extent(width, height):
    frame = ImageFrame(width, height, 2 * width + 28, height + 56)
    assert coords.to_pixels([0, 0, 1000, 1000], NORM_1000, frame) == (0.0, 0.0, float(width), float(height))
    assert coords.to_pixels([250, 500, 750, 1000], NORM_1000, frame) == pytest.approx(
        (0.25 * width, 0.5 * height, 0.75 * width, float(height)), abs=0.005)
    rw, rh = frame.resized_width, frame.resized_height
    assert coords.to_pixels([0, 0, rw, rh], RESIZED_PIXELS, frame) == (0.0, 0.0, float(width), float(height))
    x = coords.to_pixels([rw / 2, rh / 4, rw, rh / 2], RESIZED_PIXELS, frame)
    assert x == pytest.approx((width / 2, height / 4, width, height / 2), abs=0.005)


def test_boxes_off_the_grid_or_without_area_are_rejected_not_clipped():
    frame = ImageFrame(200, 100, 224, 112)
    outside = coords.to_pixels([0, 0, 1001, 10], NORM_1000, frame, "frag", 3)
    assert isinstance(outside, BoxReject) and outside.kind == "box outside image" and outside.box == 3
    assert "0-1000 grid" in outside.detail and outside.fragment == "frag"
    # Qwen2.5-VL answering in original pixels past the resized width is an answer in the wrong system
    assert coords.to_pixels([10, 10, 225, 50], RESIZED_PIXELS, frame).kind == "box outside image"
    assert coords.to_pixels([-1, 10, 20, 50], RESIZED_PIXELS, frame).kind == "box outside image"
    for box in ([10, 10, 10, 50], [30, 10, 20, 50], [10, 50, 20, 50]):
        assert coords.to_pixels(box, NORM_1000, frame).kind == "degenerate box", box
    assert coords.to_pixels([0, 0, float("nan"), 1], NORM_1000, frame).kind == "unparseable answer"
    # a box that rounds to no area in original pixels: 0.001 of a 200-pixel side is 0.2 px, 1e-6 rounds away
    assert coords.to_pixels([0, 0, 1e-6, 5], NORM_1000, frame).kind == "degenerate box"
    with pytest.raises(ValueError, match="resized size"):
        coords.to_pixels([0, 0, 1, 1], RESIZED_PIXELS, ImageFrame(10, 10))


def test_detector_boxes_are_clipped_and_rejected_only_when_nothing_is_inside():
    frame = ImageFrame(90, 40)
    assert coords.clip_to_image([-5.0, 30.0, 95.0, 56.0], frame) == (0.0, 30.0, 90.0, 40.0)
    assert coords.clip_to_image([11.437, 11.26, 33.8, 33.57], frame) == (11.44, 11.26, 33.8, 33.57)
    below = coords.clip_to_image([10, 56, 30, 80], frame, "f", 2)
    assert isinstance(below, BoxReject) and below.kind == "box outside image" and below.box == 2
    assert coords.clip_to_image([10, 10, 10, 20], frame).kind == "degenerate box"
    assert coords.clip_to_image([0, 0, 90.004, 40.001], frame) == (0.0, 0.0, 90.0, 40.0)
    assert ImageFrame(90, 40).extent(PIXELS) == (90.0, 40.0)


def test_keyword_phrases_are_runs_of_content_words_in_order():
    q = "Is the right orange circle the same size as the left orange circle?"
    assert keyword_phrases(q, 4) == ["right orange circle", "size", "left orange circle"]
    assert keyword_phrases(q, 2) == ["right orange circle", "size"]
    # a run longer than four words keeps its last four (the head noun)
    assert keyword_phrases("Where is the big old rusty red toy truck?", 4) == ["rusty red toy truck"]
    hint = ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
            "Question: What is the total volume of the measuring cup?\nChoices:\n(A) 97\n(B) 102")
    assert question_stem(hint) == "What is the total volume of the measuring cup?"
    assert keyword_phrases(hint, 4) == ["total volume", "measuring cup"]
    mmmu = ("Compare [image 2] with [image 1]. What mass balances the beam?\nA. 10 kg\nB. 20 kg\n"
            "Answer with the option letter from the given choices directly.")
    assert keyword_phrases(mmmu, 4) == ["mass balances", "beam"]
    assert keyword_phrases("Find $m\\angle H$", 4) == []  # LaTeX and single letters give nothing
    assert detector_phrases("What is 3 + 4?", "keywords", 4) == []


def test_question_phrases_are_the_stem_without_full_stops():
    q = "Look at the chart. Which bar is tallest?\n(A) red\n(B) blue"
    assert detector_phrases(q, "question", 4) == ["Look at the chart Which bar is tallest?"]
    with pytest.raises(ValueError, match="keywords or question"):
        detector_phrases(q, "nouns", 4)


def test_processed_size_grid_is_a_multiple_of_the_cell():
    processor = build_processor("qwen3_vl")
    w, h = coords.processed_size(processor, Image.new("RGB", (333, 77)), "qwen3_vl")
    assert w % 32 == 0 and h % 32 == 0 and np.isclose(w / h, 333 / 77, rtol=0.35)
