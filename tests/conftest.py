"""Shared test settings: offline hub, quiet tokenizers, small thread counts (2-core machines)."""

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# an empty hub cache of the tests' own: no test may depend on what this machine has downloaded
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="peekaboo-tests-hub-")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]

# One fixture convention: the fixture modules of tests/fixtures/ are registered here, once for the whole
# suite, so that a session fixture (the tiny models, the tiny end-to-end run) is built once per session
# and tests name fixtures as arguments without importing them. The same package's plain helpers (file
# writers, planted tables) are imported where used: ``from fixtures.items import write_jsonl``.
pytest_plugins = ["fixtures.models", "fixtures.items", "fixtures.crm", "fixtures.workflow"]


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a pinned dependency
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)
