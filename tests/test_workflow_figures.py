"""The figures rule: `snakemake figures` is a target, and editing figures.py re-runs that rule only.

Runs Snakemake dry runs on a copy of the workflow whose every output exists
(empty files stand in for results; a dry run never reads them), so only
modification times decide what would re-run.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.workflow import copy_workflow

SNAKEMAKE = [sys.executable, "-m", "snakemake"]

pytestmark = pytest.mark.slow


def _snakemake(repo: Path, *args: str) -> str:
    out = subprocess.run([*SNAKEMAKE, "-s", str(repo / "Snakefile"), "-d", str(repo), "--cores", "1", *args],
                         cwd=repo, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(repo / "src")})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def _jobs(text: str) -> set[str]:
    return {line.split()[1].rstrip(":") for line in text.splitlines() if line.startswith("rule ")}


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory):
    repo = tmp_path_factory.mktemp("wf")
    copy_workflow(repo)
    summary = _snakemake(repo, "--summary")
    future = time.time() + 100
    outputs = []
    for line in summary.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 3 or parts[0] == "output_file" or not parts[0].startswith("results/"):
            continue
        path = repo / parts[0]
        directory = path.suffix in ("", ".zarr")
        (path if directory else path.parent).mkdir(parents=True, exist_ok=True)
        if not directory:
            path.touch()
        outputs.append(path)
    for path in outputs:  # every output newer than every source file: nothing to do
        os.utime(path, (future, future))
    return repo, future


def test_nothing_to_do_when_every_output_is_newer(workflow_copy):
    repo, _ = workflow_copy
    assert _jobs(_snakemake(repo, "-n")) == set()


def test_editing_figures_code_reruns_only_the_figures_rule(workflow_copy):
    repo, future = workflow_copy
    source = repo / "src" / "peekaboo" / "figures.py"
    before = source.stat().st_mtime
    os.utime(source, (future + 100, future + 100))
    try:
        assert _jobs(_snakemake(repo, "-n")) == {"figures", "all"}
        assert _jobs(_snakemake(repo, "-n", "figures")) == {"figures"}
    finally:
        os.utime(source, (before, before))
