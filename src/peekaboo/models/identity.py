"""A model's identity is its content: the weights and configuration a trace was generated with.

- **A local folder** (a configured path, or a reference model the workflow
  trained): ``sha256:`` + a hash over the names and bytes of its weight,
  configuration, tokenizer and processor files (``MODEL_FILES``). Files that
  describe how the folder came about rather than what the model is (a training
  report, a README) do not count, so retraining to the same weights gives the
  same identity. Hashing a multi-gigabyte checkpoint takes a while, so the
  hash of each file is cached by its path, size and modification time
  (``$PEEKABOO_CACHE`` or ``~/.cache/peekaboo``; a cache that cannot be read
  or written is ignored).
- **A hub id**: the commit its revision resolves to in the local Hugging Face
  cache (the revision itself when it is already a full commit hash). Without
  network access (``HF_HUB_OFFLINE=1``, as on compute nodes), a model that is
  not in the cache cannot be identified, and cannot be loaded either.

The identity is recorded in every trace store's provenance (``model_revision``),
checked before a shard resumes (a mismatch discards the partial batches), and
a param of the traces rule, so that changed weights re-run the traces.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

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


def _read_cache() -> dict[str, list]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict[str, list]) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    except OSError:  # a read-only home: hashing still works, only slower next time
        pass


def _file_digest(path: Path, cache: dict[str, list]) -> tuple[str, bool]:
    """(sha256 of the file, whether it was computed now rather than read from the cache)."""
    stat = path.stat()
    key = str(path.resolve())
    hit = cache.get(key)
    if hit and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
        return hit[2], False
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    cache[key] = [stat.st_size, stat.st_mtime_ns, h.hexdigest()]
    return h.hexdigest(), True


def model_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder that make up the model, in a fixed order."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and MODEL_FILES.search(p.name) and p.name not in NOT_MODEL_FILES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def folder_digest(folder: str | Path) -> str:
    """``sha256:<hex>`` over the names and contents of a checkpoint folder's model files."""
    folder = Path(folder)
    files = model_files(folder)
    if not files:
        raise ModelSourceError(f"{folder}: no model files (weights, config) in this folder")
    cache = _read_cache()
    h = hashlib.sha256()
    changed = False
    for path in files:
        digest, computed = _file_digest(path, cache)
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


def identify(source: str | Path, revision: str | None = None, where: str = "model") -> ModelIdentity:
    """The identity of a model given by a local path or a hub id; ModelSourceError naming ``where`` if unreadable."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{where}: {text} is a folder without a config.json, not a model checkpoint")
        try:
            return ModelIdentity(text, "local", folder_digest(path))
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
