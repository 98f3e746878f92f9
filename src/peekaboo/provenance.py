"""Provenance recorded with every output: config hash, code hash, package version.

The config hash covers only the config a stage reads (the rule's
``params.config``), so it changes exactly when the stage should re-run. The
code hash covers the package modules the stage can import (the rule's
``input.code``: the import closure of its module, ``peekaboo.stages``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import __version__

PACKAGE_DIR = Path(__file__).resolve().parent


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same object gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default, ensure_ascii=True)


def _default(obj: Any):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def config_hash(section: Any) -> str:
    """sha256 (first 16 hex digits) of a config section's canonical JSON."""
    return hashlib.sha256(canonical_json(section).encode()).hexdigest()[:16]


def code_hash(files: Iterable[str | Path]) -> str:
    """sha256 over the contents of the given files, keyed by their path inside the package."""
    h = hashlib.sha256()
    for f in sorted(str(x) for x in files):
        p = Path(f)
        try:
            key = str(p.resolve().relative_to(PACKAGE_DIR))
        except ValueError:
            key = p.name
        h.update(key.encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def record(
    config_section: Any = None,
    code_files: Iterable[str | Path] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The provenance dict stored with an output (parquet metadata, Zarr attributes, JSON)."""
    out: dict[str, Any] = {"package_version": __version__}
    if config_section is not None:
        out["config_hash"] = config_hash(config_section)
    if code_files is not None:
        out["code_hash"] = code_hash(code_files)
    out.update(extra)
    return out
