"""A copy of the workflow that the real Snakefile runs from, for end-to-end tests that edit or date files."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_workflow(dest: Path) -> Path:
    """Copy the Snakefile, config.yaml, workflow/, src/ and envs/ into ``dest`` (caches left out); returns ``dest``."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, dest / name)
    for name in ("workflow", "src", "envs"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def hub_cache(root: Path, *repo_ids: str, files: dict[str, str] | None = None) -> Path:
    """A Hugging Face hub cache at ``root`` that holds ``repo_ids`` at revision main; point HF_HUB_CACHE at it.

    The layout is huggingface_hub's own (``models--org--name/refs/main`` naming
    the commit, ``snapshots/<commit>/`` holding the files), so that the hub
    ids of a config resolve offline as they do on a machine that downloaded
    the models. Each snapshot holds ``files`` (name -> text; default a
    config.json). The commit is derived from the repo id, so it is stable.
    """
    import hashlib

    for repo_id in repo_ids:
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        repo = root / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for name, text in (files or {"config.json": '{"model_type": "qwen3_vl"}'}).items():
            (snapshot / name).write_text(text)
    return root
