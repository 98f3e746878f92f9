"""A model's identity is its content: the weights and configuration a trace was generated with.

- **A local folder** (a configured path, or a reference model the workflow
  trained): ``sha256:`` + a hash over the names and bytes of its weight,
  configuration, tokenizer and processor files (``MODEL_FILES``). Files that
  describe how the folder came about rather than what the model is (a training
  report, a README) do not count, so retraining to the same weights gives the
  same identity. Hashing a multi-gigabyte checkpoint takes a while, so the
  hash of each file is cached (``$PEEKABOO_CACHE`` or ``~/.cache/peekaboo``;
  a cache that cannot be read or written is ignored) under what a copy cannot
  keep: besides the path, size and modification time (which ``cp -p``,
  ``rsync -t``, ``tar`` and ``os.utime`` put back), the file's device, inode
  and status-change time (ctime: set by the kernel on every write, rename
  and utime, never settable by a copy) and a sha256 of its first and last
  64 KiB. Any of them differing hashes the file again.
- **A hub id**: the commit its revision resolves to in the local Hugging Face
  cache (the revision itself when it is already a full commit hash). Without
  network access (``HF_HUB_OFFLINE=1``, as on compute nodes), a model that is
  not in the cache cannot be identified, and cannot be loaded either.

The identity is recorded in every trace store's provenance (``model_revision``)
and in the plan of every partial output (generations file, trace store), and is
a param of the generate and traces rules, so that changed weights re-run them.
A job that finds finished batches to resume hashes the weights anew, without
the cache (``identify(..., fresh=True)``), and resumes only if that identity is
the one its partial output recorded; otherwise the batches are discarded.

A configured source becomes the folder or hub id to identify and load through
:func:`resolve_path`, which lives here rather than in :mod:`peekaboo.config` so
that a stage (boxes) can resolve its model without the config validation among
its code inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# what a checkpoint folder holds that decides the model's outputs
MODEL_FILES = re.compile(
    r"(\.safetensors|\.bin|\.pt|\.pth|\.gguf|\.json|\.jinja|\.model|\.tiktoken|\.txt|\.py)$"
)
# ... and what it may hold beside them that does not
NOT_MODEL_FILES = {"training.json", "README.md", "peekaboo_tiny.json"}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ModelSourceError(ValueError):
    """A model's source cannot be read; the message names the config key."""


@dataclass(frozen=True)
class ModelIdentity:
    source: str  # hub id or local path as configured
    kind: str  # local or hub
    revision: str  # sha256:<hex> for a folder, the resolved commit for a hub id

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "kind": self.kind, "revision": self.revision}


def _cache_path() -> Path:
    root = os.environ.get("PEEKABOO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "peekaboo")
    return Path(root) / "file_hashes.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict[str, Any]) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    except OSError:  # a read-only home: hashing still works, only slower next time
        pass


# bytes read from each end of a file for the cache's content probe: cheap, and it catches a copy that kept the
# file's size and times (the header of a safetensors file names its tensors, the tail holds the last weights)
PROBE_BYTES = 1 << 16


def _probe(path: Path, size: int) -> str:
    """sha256 of a file's first and last ``PROBE_BYTES`` (the whole file when it is smaller)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(PROBE_BYTES))
        if size > PROBE_BYTES:
            fh.seek(max(PROBE_BYTES, size - PROBE_BYTES))
            h.update(fh.read(PROBE_BYTES))
    return h.hexdigest()


def _stat_key(stat: os.stat_result) -> list[int]:
    """What the cache compares of a file's status: size and mtime (a copy can keep them), device, inode and ctime
    (it cannot)."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_dev, stat.st_ino]


def _file_digest(path: Path, cache: dict[str, Any], use_cache: bool = True) -> tuple[str, bool]:
    """(sha256 of the file, whether it was computed now rather than read from the cache)."""
    stat = path.stat()
    key = str(path.resolve())
    hit = cache.get(key)
    status = _stat_key(stat)
    if use_cache and isinstance(hit, dict) and hit.get("stat") == status:
        # the status matches: a same-size rewrite within one ctime tick is still caught by the content probe
        if hit.get("probe") == _probe(path, stat.st_size):
            return hit["sha256"], False
    digest = _sha256(path)
    # the status taken before reading: a file rewritten while it was hashed is hashed again next time
    cache[key] = {"stat": status, "probe": _probe(path, stat.st_size), "sha256": digest}
    return digest, True


def _sha256(path: Path) -> str:
    """sha256 of a whole file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def model_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder that make up the model, in a fixed order."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and MODEL_FILES.search(p.name) and p.name not in NOT_MODEL_FILES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def folder_digest(folder: str | Path, use_cache: bool = True) -> str:
    """``sha256:<hex>`` over the names and contents of a checkpoint folder's model files.

    ``use_cache=False`` hashes every file anew (and refreshes the cache): what a resume does.
    """
    folder = Path(folder)
    files = model_files(folder)
    if not files:
        raise ModelSourceError(f"{folder}: no model files (weights, config) in this folder")
    cache = _read_cache()
    h = hashlib.sha256()
    changed = False
    for path in files:
        digest, computed = _file_digest(path, cache, use_cache)
        changed |= computed
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + digest.encode() + b"\0")
    if changed:
        _write_cache(cache)
    return "sha256:" + h.hexdigest()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def hub_commit(repo_id: str, revision: str = "main") -> str | None:
    """The commit ``revision`` of ``repo_id`` resolves to: from the local cache, else (online) from the hub."""
    if _COMMIT.match(revision or ""):
        return revision
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    if _offline():
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision).sha
    except Exception:  # no network, no such repo or revision, no access: unidentifiable
        return None


def resolve_path(value: str, base_dir: Path) -> str:
    """A configured path resolved against ``base_dir`` when relative and present there; hub ids stay as given."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    return str(base_dir / p) if (base_dir / p).exists() else value


def identify(source: str | Path, revision: str | None = None, where: str = "model",
             fresh: bool = False) -> ModelIdentity:
    """The identity of a model given by a local path or a hub id; ModelSourceError naming ``where`` if unreadable.

    ``fresh``: hash a local folder's files anew rather than trust the cache (a job about to resume batches).
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{where}: {text} is a folder without a config.json, not a model checkpoint")
        try:
            return ModelIdentity(text, "local", folder_digest(path, use_cache=not fresh))
        except ModelSourceError as exc:
            raise ModelSourceError(f"{where}: {exc}") from None
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or not text:
        raise ModelSourceError(f"{where}: no model folder at {text}")
    commit = hub_commit(text, revision or "main")
    if commit is None:
        how = "in the local Hugging Face cache (HF_HUB_OFFLINE is set)" if _offline() else \
            "in the local Hugging Face cache or on the hub"
        raise ModelSourceError(f"{where}: '{text}' is neither a model folder nor a hub id found {how} at "
                               f"revision {revision or 'main'}; download it first or give a local path")
    return ModelIdentity(text, "hub", commit)
