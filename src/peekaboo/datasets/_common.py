"""Helpers shared by the real-benchmark adapters (MathVista, HallusionBench, MMMU-Pro, VisArgs).

Reading the published files (JSON, parquet shards with ``{bytes, path}`` image
structs) and finding the final answer in a thinking model's response, so that
each adapter's module holds only its dataset's own format and scoring rules.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..answers import final_answer_text

# ----------------------------------------------------------------------------
# files


def parquet_files(path: Path) -> list[Path]:
    """A parquet file, or every ``*.parquet`` under a directory (HF shards), in name order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet") if p.is_file())
    return [path]


def parquet_count(path: Path) -> int:
    """Rows in a parquet file or shard directory, from the footers only (cheap)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))


def parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    files = parquet_files(path)
    return list(pq.ParquetFile(files[0]).schema_arrow.names) if files else []


def iter_parquet(path: Path, batch_size: int = 32) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1 across all shards, row as a dict) without loading whole files (images are large)."""
    import pyarrow.parquet as pq

    row = 0
    for f in parquet_files(path):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
            for record in batch.to_pylist():
                row += 1
                yield row, record


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def item_meta(item: Mapping[str, Any]) -> dict[str, Any]:
    """An items-table row's ``meta`` (JSON text there, a dict on a RawItem) as a dict."""
    meta = item.get("meta")
    if isinstance(meta, str):
        return json.loads(meta) if meta.strip() else {}
    return dict(meta or {})


def is_missing(value: Any) -> bool:
    """None, NaN or an empty string: the ways the published files leave a field out."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def image_source(value: Any, search_dirs: Sequence[Path]) -> bytes | Path | None:
    """An image as stored in a published file: a ``{bytes, path}`` struct, raw bytes, or a relative path.

    Embedded bytes win; a path is looked up under each of ``search_dirs`` (the
    first that exists), else the first candidate is returned so that the items
    stage reports the missing file by name. None when the field holds nothing.
    """
    if is_missing(value):
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        data = value.get("bytes")
        if data:
            return bytes(data)
        return image_source(value.get("path"), search_dirs)
    rel = str(value).strip()
    if rel.startswith("./"):
        rel = rel[2:]
    p = Path(rel).expanduser()
    if p.is_absolute():
        return p
    candidates = [d / p for d in search_dirs] + [d / p.name for d in search_dirs]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0] if candidates else p


# ----------------------------------------------------------------------------
# responses

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_GLM_BOX_RE = re.compile(r"<\|begin_of_box\|>(.*?)<\|end_of_box\|>", re.DOTALL)
_ANSWER_TAG_RE = re.compile(r"</?answer>", re.IGNORECASE)
_MARKER_RE = re.compile(r"(?:final\s+)?answer\s*[:：]", re.IGNORECASE)


def answer_body(response: Any) -> str:
    """The part of a response after its reasoning block.

    Thinking models write ``reasoning</think>answer`` (the opening tag is often
    part of the prompt). Text after the last ``</think>``; the whole response
    when there is no thinking block; the empty string when a block was opened
    but never closed (the chain was cut off before any answer). GLM's
    ``<answer>`` tags are dropped.
    """
    if response is None:
        return ""
    s = str(response)
    low = s.lower()
    if _THINK_CLOSE in low:
        s = s[low.rfind(_THINK_CLOSE) + len(_THINK_CLOSE) :]
    elif _THINK_OPEN in low:
        return ""
    return _ANSWER_TAG_RE.sub("", s).strip()


def _last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (braces may nest), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def final_answer(response: Any) -> tuple[str, bool]:
    r"""(final answer text, whether it was explicitly marked) of a response.

    In order: GLM's ``<|begin_of_box|>...<|end_of_box|>``, the last
    ``\boxed{...}``, the text after the last ``Answer:`` (via
    ``peekaboo.answers.final_answer_text``), else the last non-empty line
    (unmarked). Only the text after the reasoning block is searched.
    """
    body = answer_body(response)
    if not body:
        return "", False
    boxes = _GLM_BOX_RE.findall(body)
    if boxes:
        return boxes[-1].strip(), True
    boxed = _last_boxed(body)
    if boxed is not None:
        return boxed, True
    marked = bool(_MARKER_RE.search(body))
    return final_answer_text(body), marked


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]
