"""Reading table cells: the one place that says what an empty cell, a list cell and an item's meta are.

Tables read back from parquet leave a cell empty as None, pandas' NA or a
float NaN, and hand list cells over as numpy arrays; adapters read published
files that also leave fields out as blank strings. Each helper has one
behaviour; where two are needed, two names say how they differ.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd


def is_missing(value: Any) -> bool:
    """None, pandas' NA or a float NaN: how a table read back leaves a cell empty."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def is_blank(value: Any) -> bool:
    """A missing cell (:func:`is_missing`) or a string of whitespace: how published files leave a field out."""
    return is_missing(value) or (isinstance(value, str) and not value.strip())


def as_list(value: Any) -> list:
    """A list cell (``regions``, ``images``, ``choices``) as a list; [] when missing."""
    return [] if is_missing(value) else list(value)


def json_list(value: Any) -> list:
    """A list cell that may also hold its list as JSON text (hand-written tables); [] when missing or blank."""
    if isinstance(value, str):
        return json.loads(value) if value.strip() else []
    return as_list(value)


def parse_meta(raw: Any) -> dict[str, Any]:
    """An item's ``meta`` (JSON text in the items table, a mapping on a RawItem) as a dict; {} when empty.

    Raises ValueError or TypeError when it is neither JSON text nor a mapping.
    """
    if is_blank(raw):
        return {}
    if isinstance(raw, str):
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise TypeError(f"meta is JSON {type(value).__name__}, not an object")
        return value
    if isinstance(raw, Mapping):
        return dict(raw)
    raise TypeError(f"meta is a {type(raw).__name__}, not JSON text or a mapping")


def optional_bool(value: Any) -> bool | None:
    """A nullable boolean cell: None when missing, else its truth value."""
    return None if is_missing(value) else bool(value)


def optional_int(value: Any) -> int | None:
    """A nullable integer cell: None when missing, else the integer."""
    return None if is_missing(value) else int(value)
