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
