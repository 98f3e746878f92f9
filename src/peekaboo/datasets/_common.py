"""Helpers shared by the real-benchmark adapters (MathVista, HallusionBench, MMMU-Pro, VisArgs).

Reading the published files (JSON, parquet shards with ``{bytes, path}`` image
structs), checking list and integer fields, and option letters, so that each
adapter's module holds only its dataset's own format. The scorers
(``peekaboo.scoring``) read an item's choices with ``text_list`` too; nothing
here scores.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..cells import is_blank
from ..jsonlines import duplicate_key, load_marked

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
    """A dataset's whole-file JSON; objects that repeat a key are marked (``peekaboo.jsonlines.duplicate_key``)."""
    return load_marked(path)


def duplicate_reason(record: Any) -> str | None:
    """The reject reason of a record that repeats a key (json would keep the last value silently); None if none."""
    key = duplicate_key(record)
    return None if key is None else f"duplicate key {key!r}: the record holds it twice"


def image_source(value: Any, search_dirs: Sequence[Path]) -> bytes | Path | None:
    """An image as stored in a published file: a ``{bytes, path}`` struct, raw bytes, or a relative path.

    Embedded bytes win; a path is looked up under each of ``search_dirs`` (the
    first that exists), else the first candidate is returned so that the items
    stage reports the missing file by name. None when the field holds nothing.
    """
    if is_blank(value):
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
# fields that must hold what their name says (a wrong type is rejected, never read with another meaning)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def text_list(value: Any, field: str) -> list[str] | None:
    """A list field (choices, options, premises) as strings; None when left out.

    A string, a mapping or any other non-list raises ValueError naming the
    field (a string would otherwise be read as a list of its characters), as
    does an element that is not text or a number.
    """
    if is_blank(value):
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{field} is a {type(value).__name__} ({_shown(value)}), not a list")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ValueError(f"{field} holds a {type(v).__name__} ({_shown(v)}), not text")
    return [str(v) for v in value]


def integer(value: Any, field: str) -> int:
    """An integer field: an int, an integral float (parquet stores integers beside nulls as floats) or an
    integer written as text ("3"); anything else ("3.5", "three", 0.5) raises ValueError naming the field."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{field} {_shown(value)} is not an integer")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    raise ValueError(f"{field} {_shown(value)} is not an integer")


def letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]
