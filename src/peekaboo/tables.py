"""Deterministic parquet tables with provenance in their key-value metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .provenance import canonical_json

META_KEY = b"peekaboo"


def write_table(
    df: pd.DataFrame,
    path: str | Path,
    provenance: Mapping[str, Any] | None = None,
    schema: pa.Schema | None = None,
) -> Path:
    """Write ``df`` to ``path`` without the index; same frame and provenance give the same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df.reset_index(drop=True), schema=schema, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = canonical_json(dict(provenance or {})).encode()
    table = table.replace_schema_metadata(meta)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", write_statistics=True)
    tmp.replace(path)
    return path


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    return pq.read_table(path, columns=columns).to_pandas()


def read_provenance(path: str | Path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(META_KEY)
    return json.loads(raw) if raw else {}


def empty_frame(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype="object") for c in columns})
