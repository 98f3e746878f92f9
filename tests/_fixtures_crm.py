"""Constructed trace sidecars, items and masks for the steps/alignment/CRM tests.

Rows carry the sidecar columns of docs/architecture.md ("Traces"); per-token
character offsets come from a simple tokenizer (words with their leading
whitespace, punctuation on its own), as a real tokenizer would give.
"""

from __future__ import annotations

import json
import logging
import re

import pandas as pd
import pytest

_TOKEN_RE = re.compile(r"[ \t]*(?:\w+|[^\w\s])|\s+")


def tokenize(text: str) -> tuple[list[int], list[int]]:
    """Per-token (start, end) character offsets covering ``text``, plus an end-of-sequence token."""
    starts, ends = [], []
    for m in _TOKEN_RE.finditer(text):
        starts.append(m.start())
        ends.append(m.end())
    starts.append(len(text))  # <|im_end|>: decodes to nothing
    ends.append(len(text))
    return starts, ends


def sidecar_row(
    model: str,
    dataset: str,
    item_id: str,
    variant: str,
    text: str | None,
    fill: str = "gray",
    answer_text: str | None = None,
    abstained: bool = False,
    status: str = "ok",
    truncated: bool = False,
) -> dict:
    fill = "none" if variant == "base" else fill
    mask_id = f"{item_id}|{variant}|{fill}"
    starts, ends = tokenize(text or "")
    return {
        "trace_id": f"{model}|{mask_id}",
        "model": model,
        "dataset": dataset,
        "item_id": item_id,
        "mask_id": mask_id,
        "variant": variant,
        "fill": fill,
        "trace_index": 0,
        "status": status,
        "error": None if status == "ok" else "CUDA error: device-side assert",
        "text": text if status == "ok" else None,
        "answer_text": answer_text,
        "correct": None,
        "abstained": abstained,
        "truncated": truncated,
        "n_tokens": len(starts),
        "token_char_start": starts,
        "token_char_end": ends,
        "retries": 0,
    }


def sidecar(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["trace_index"] = range(len(df))
    return df


def item_row(item_id: str, labels: list[str], gold_steps: list[dict] | None = None, dataset: str = "panels") -> dict:
    meta = {"gold_steps": gold_steps} if gold_steps is not None else {}
    return {
        "item_id": item_id,
        "dataset": dataset,
        "regions": [{"label": lab, "box": [0.0, 0.0, 64.0, 64.0], "image": 0} for lab in labels],
        "meta": json.dumps(meta),
    }


def masks_for(items: list[dict], fill: str = "gray") -> pd.DataFrame:
    rows = []
    for it in items:
        rows.append({"mask_id": f"{it['item_id']}|base|none", "item_id": it["item_id"], "variant": "base", "fill": "none", "region": None})
        for k in range(len(it["regions"])):
            for kind in ("drop", "ctrl"):
                v = f"{kind}:{k}"
                rows.append({"mask_id": f"{it['item_id']}|{v}|{fill}", "item_id": it["item_id"], "variant": v, "fill": fill, "region": k})
    return pd.DataFrame(rows)


@pytest.fixture
def peekaboo_log(caplog):
    """caplog that also sees the package's records when ``peekaboo.logs.to_file`` stopped their propagation."""
    logger = logging.getLogger("peekaboo")
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
