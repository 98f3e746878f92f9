"""Tiny random-initialised VLMs for the trace tests, built once per session, and a small shard.

Import the fixtures into a test module with
``from _fixtures_models import tiny_models, tiny_shard  # noqa: F401``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from peekaboo.models.tiny import FAMILIES, build_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """family -> directory of a saved tiny model + processor (built once per test session)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: build_tiny(family, root / family, seed=0) for family in FAMILIES}


def load(path: Path, attn: str = "sdpa"):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation=attn, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(path)


def noise_png(path: Path, size=(150, 100), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), mode="RGB").save(path)
    return path


def write_dataset(root: Path, n_items: int = 3) -> tuple[Path, dict]:
    """A JSONL dataset of ``n_items`` items with two regions each; returns (jsonl, dataset spec)."""
    records = []
    for k in range(n_items):
        noise_png(root / "img" / f"{k}.png", size=(96 + 16 * k, 64 + 8 * k), seed=k)
        records.append({
            "id": f"q{k}", "image": f"img/{k}.png", "question": "Which colour is the square? Answer A or B.",
            "answer": "A", "choices": ["red", "blue"],
            "regions": [{"label": "square", "box": [2, 2, 30, 30]}, {"label": "circle", "box": [40, 20, 80, 60]}],
        })
    path = root / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    spec = {"adapter": "jsonl", "options": {"path": str(path)}, "task_type": None, "task_type_overrides": {},
            "boxes": None, "masks": True, "shard_size": 2, "limit": None}
    return path, spec


@pytest.fixture
def tiny_shard(tmp_path):
    """Items and masks tables built by the real items and masks stages on a 3-item JSONL dataset."""
    from peekaboo import items, masks
    from peekaboo.stage import StageCall

    _, spec = write_dataset(tmp_path / "src")
    results = tmp_path / "results"
    items.run_stage(StageCall(
        inputs={}, outputs={"table": str(results / "items/toy.parquet"), "rejects": str(results / "items/toy.rejects.parquet")},
        config={"dataset": spec, "seed": 0}, results_dir=results, wildcards={"d": "toy"}))
    masks_cfg = {"variants": ["drop"], "fills": ["gray"], "blur_radius": 12, "noise_std": 64,
                 "control_attempts": 50, "seed": 0}
    masks.run_stage(StageCall(
        inputs={"items_table": [str(results / "items/toy.parquet")]},
        outputs={"table": str(results / "masks/toy.parquet"), "skipped": str(results / "masks/toy.skipped.parquet")},
        config={"enabled": True, "masks": masks_cfg, "seed": 0}, results_dir=results, wildcards={"d": "toy"}))
    return {"results": results, "items": results / "items/toy.parquet", "masks": results / "masks/toy.parquet",
            "spec": spec}


def full_length(model, processor) -> None:
    """Stop only on a token the random model does not emit in these tests, so rows run to max_new_tokens."""
    token = "<|video_pad|>" if "<|video_pad|>" in processor.tokenizer.get_vocab() else "<|video|>"
    model.generation_config.eos_token_id = [processor.tokenizer.convert_tokens_to_ids(token)]


@pytest.fixture(scope="module")
def sample_images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("sample_images")
    return [noise_png(root / "a.png", (150, 100), 1), noise_png(root / "b.png", (60, 90), 2),
            noise_png(root / "c.png", (90, 64), 3)]


def sample_requests(images, batched: bool):
    """One request with one image and two regions; batched adds a longer two-image prompt, so the
    first row is left-padded."""
    from peekaboo.generate import TraceRequest

    first = TraceRequest("r0", "What is in the picture?", [images[0]],
                         [{"box": [0, 0, 75, 50], "image": 0}, {"box": [50, 20, 150, 100], "image": 0}])
    if not batched:
        return [first]
    second = TraceRequest("r1", "Compare the two pictures and say which one is brighter, step by step.",
                          [images[1], images[2]], [{"box": [0, 0, 30, 45], "image": 1}])
    return [first, second]
