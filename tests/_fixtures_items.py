"""Small on-disk datasets for the items/masks tests: PNGs drawn with PIL, JSONL files, configs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from peekaboo.datasets.base import Adapter, RawItem, Score


def textured_png(path: Path, size=(64, 48), seed: int = 0) -> Path:
    """An RGB PNG with varied pixels (a blur or gray fill visibly changes any box in it)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path)
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """One line per record; a str record is written as is (to plant broken lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def good_record(item_id: str, image: str = "img/a.png", **extra) -> dict:
    rec = {
        "id": item_id,
        "image": image,
        "question": "What colour is the square?",
        "answer": "red",
        "choices": ["red", "blue"],
        "regions": [{"label": "square", "box": [4, 4, 20, 20]}, {"label": "circle", "box": [30, 10, 50, 30]}],
    }
    rec.update(extra)
    return rec


def jsonl_spec(path: Path, **extra) -> dict:
    """A dataset entry as the validated config holds it (defaults filled)."""
    spec = {
        "adapter": "jsonl",
        "options": {"path": str(path)},
        "task_type": None,
        "task_type_overrides": {},
        "boxes": None,
        "masks": True,
        "shard_size": 256,
        "limit": None,
    }
    spec.update(extra)
    return spec


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by relative path (logs excluded: they hold timestamps)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "logs" not in p.relative_to(root).parts and ".snakemake" not in p.parts:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class ListAdapter(Adapter):
    """An adapter over in-memory records (``options["records"]``): lets tests hand the items
    stage bytes, PIL images and odd ids through the real adapter interface."""

    name = "testlist"

    def count(self) -> int:
        return len(self.options["records"])

    def records(self):
        yield from self.options["records"]

    def score(self, item, response) -> Score:
        return Score(answer_text=response, correct=response == item["answer"])


def list_spec(records: list, **extra) -> dict:
    spec = jsonl_spec(Path("unused"), **extra)
    spec["adapter"] = "testlist"
    spec["options"] = {"records": records}
    return spec


def raw(item_id: str, images: list, regions=(), **extra) -> RawItem:
    return RawItem(
        item_id=item_id,
        question="Which shape?",
        answer="A",
        answer_type="multi_choice",
        choices=["square", "circle"],
        images=list(images),
        regions=list(regions),
        **extra,
    )


@pytest.fixture
def list_adapter(monkeypatch):
    """Registers ListAdapter as adapter 'testlist' for the duration of a test."""
    from peekaboo.datasets import base

    monkeypatch.setitem(base._ADAPTERS, "testlist", f"{__name__}:ListAdapter")
    return ListAdapter
