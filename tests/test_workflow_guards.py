"""The workflow's guards, run through the real Snakefile: weights replaced by a copy that keeps size and mtime are
planned again, and two checkouts cannot write one results folder at once (peekaboo.runlock)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fixtures.workflow import copy_workflow, planned_rules, run_snakemake
from peekaboo import runlock
from peekaboo.models.tiny import build_tiny


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEEKABOO_CACHE", str(tmp_path / "cache"))  # the jobs' and the parse's file-hash cache


def write_config(work: Path, results: Path | str, models: dict | None = None) -> None:
    raw = {
        "results": str(results),
        "seed": 3,
        "datasets": {"panels": {"adapter": "panels", "options": {"seed": 7, "n_items": 3}, "shard_size": 3}},
        # a reference model: nothing to read at parse time, and nothing trained unless a target needs it
        "models": models or {"ref": {"reference": {"behaviour": "grounded", "steps": 2}}},
        "resources": {"trace_gpus": 0},
    }
    (work / "config.test.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def snakemake(work: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config.test.yaml",
                           *args], cwd=work, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc


def test_weights_replaced_under_the_old_size_and_mtime_are_planned_again(tmp_path):
    """The issue's scenario: cp -p / rsync -t of other weights of the same size kept the old hash (a cached one)."""
    (tmp_path / "work").mkdir()
    work = copy_workflow(tmp_path / "work")
    model = Path(build_tiny("qwen2_5_vl", work / "models" / "tiny", seed=0))
    write_config(work, "results", {"tiny": {"source": "models/tiny", "generation": {"max_new_tokens": 4},
                                            "batch_size": 4}})
    target = "results/traces/tiny/panels/shard-0.generations.jsonl"
    run_snakemake(work, "--", target)
    assert "Nothing to be done" in run_snakemake(work, "-n", "--", target)
    assert not runlock.lock_path(work / "results").exists()  # given back at the end; a dry run takes none

    other = Path(build_tiny("qwen2_5_vl", tmp_path / "other", seed=1))
    for new in sorted(other.glob("*.safetensors")):
        old = (model / new.name).stat()
        data = new.read_bytes()
        assert len(data) == old.st_size and data != (model / new.name).read_bytes()
        (model / new.name).write_bytes(data)
        os.utime(model / new.name, ns=(old.st_atime_ns, old.st_mtime_ns))
    out = run_snakemake(work, "-n", "--", target)
    assert "generate" in planned_rules(out), out[-3000:]
    assert not runlock.lock_path(work / "results").exists()


def wait_for_lock(results: Path, proc: subprocess.Popen, timeout: float = 300) -> runlock.Holder:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = runlock.read(results) if runlock.lock_path(results).is_file() else None
        if holder is not None:
            return holder
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it took the lock: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("the run took no lock")


def start(work: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config.test.yaml",
                             *args], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: the test kills it and its jobs


def test_two_checkouts_cannot_write_one_results_folder(tmp_path):
    """The issue's scenario: two clones with the same absolute results folder; the second is refused, naming the
    first (host, pid, start, checkout); a dry run is not; a lock left by a killed run is cleared."""
    results = tmp_path / "shared-results"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = copy_workflow(tmp_path / "a"), copy_workflow(tmp_path / "b")
    for work in (a, b):
        write_config(work, results)
    target = str(results / "items" / "panels.parquet")

    first = start(a, "--", target)
    try:
        holder = wait_for_lock(results, first)
        os.kill(first.pid, signal.SIGSTOP)  # the first run holds the folder, mid-run
        assert (holder.pid, holder.host) == (first.pid, socket.gethostname())
        assert holder.checkout == str(a.resolve()) and holder.workdir == str(a.resolve())

        # (forced: the first run's job, not stopped, may have written the target already)
        second = snakemake(b, "--forcerun", "items", "--", target, check=False)
        text = second.stdout + second.stderr
        assert second.returncode != 0
        assert (f"results folder {results} is being written by the run of checkout {a.resolve()} (working "
                f"directory {a.resolve()}; host {holder.host}, pid {holder.pid}, started {holder.started})") in text
        assert "IncompleteFilesException" not in text

        # a dry run neither takes the lock nor is refused; it says who writes the folder
        dry = snakemake(b, "-n", "--", target)
        assert "is being written by the run of checkout" in dry.stdout + dry.stderr
        assert runlock.read(results) == holder

        # a job of the second checkout that runs anyway (hooks off: no lock taken) is refused by the job's check.
        # It targets a dataset the first run does not touch: forcing the first run's own target would let
        # Snakemake delete that job's outputs before the job (and its check) even starts.
        other = yaml.safe_load((b / "config.test.yaml").read_text())
        other["datasets"]["other"] = {**other["datasets"]["panels"]}
        (b / "config.test.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
        forced = snakemake(b, "--no-hooks", "--", str(results / "items" / "other.parquet"), check=False)
        text = forced.stdout + forced.stderr
        assert forced.returncode != 0
        assert f"this job (working directory {b.resolve()}) writes into {results}" in text
        assert f"pid {holder.pid}" in text and "refused" in text
    finally:
        os.kill(first.pid, signal.SIGCONT)
        out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-4000:]
    assert not runlock.lock_path(results).exists()  # given back at the end of the run

    # a run killed outright leaves its lock; the next run clears it, says so, and runs
    killed = start(a, "--forcerun", "items", "--", target)
    stale = wait_for_lock(results, killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    assert runlock.read(results) == stale and runlock.alive(stale) is False
    after = snakemake(b, "--forcerun", "items", "--", target)
    text = after.stdout + after.stderr
    assert (f"cleared a stale lock on {results} left by the run of checkout {a.resolve()} (working directory "
            f"{a.resolve()}; host {stale.host}, pid {stale.pid}, started {stale.started}): that process is gone "
            "(a killed run)") in text
    assert not runlock.lock_path(results).exists()
