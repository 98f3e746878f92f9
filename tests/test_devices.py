"""GPU placement per job (peekaboo.devices), on CPU with a simulated device list.

The jobs are real separate processes holding real flock locks; only the GPUs
are simulated (PEEKABOO_GPUS=0,1): what is checked is which device each job
is given through CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from peekaboo import devices
from peekaboo.devices import DeviceBusy, claim_device, device_pool, max_memory_map

# A trace job stand-in: claims a device, reports what it got, then waits until
# told to finish (or to fail).
JOB = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from peekaboo.devices import claim_device
    lock_dir, report, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    with claim_device(lock_dir=lock_dir, timeout=60, poll_seconds=0.05) as device:
        report.write_text(f"{device} {os.environ.get('CUDA_VISIBLE_DEVICES')}")
        while not go.exists():
            time.sleep(0.02)
        if go.read_text() == "fail":
            raise RuntimeError("job failed")
    """
)


@pytest.fixture
def gpu_env(monkeypatch, tmp_path):
    """Two simulated GPUs, no SLURM, a private lock dir; returns the lock dir."""
    monkeypatch.setenv("PEEKABOO_GPUS", "0,1")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    lock_dir = tmp_path / "locks"
    monkeypatch.setenv("PEEKABOO_GPU_LOCK_DIR", str(lock_dir))
    return lock_dir


def start_job(lock_dir: Path, work: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    report, go = work / f"{name}.report", work / f"{name}.go"
    proc = subprocess.Popen([sys.executable, "-c", JOB, str(lock_dir), str(report), str(go)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, report, go


def wait_report(proc: subprocess.Popen, report: Path, seconds: float = 60) -> tuple[str, str]:
    deadline = time.monotonic() + seconds
    while not report.exists() or not report.read_text():
        if proc.poll() is not None:
            raise AssertionError(f"job exited early ({proc.returncode}): {proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("job did not report a device")
        time.sleep(0.02)
    device, visible = report.read_text().split()
    return device, visible


def finish(proc: subprocess.Popen, go: Path, how: str = "ok") -> int:
    go.write_text(how)
    return proc.wait(timeout=60)


def test_two_concurrent_jobs_get_different_devices(gpu_env, tmp_path):
    first = start_job(gpu_env, tmp_path, "first")
    second = start_job(gpu_env, tmp_path, "second")
    try:
        dev1, visible1 = wait_report(first[0], first[1])
        dev2, visible2 = wait_report(second[0], second[1])
        assert {dev1, dev2} == {"0", "1"}
        # each job sees exactly its own device
        assert (visible1, visible2) == (dev1, dev2)
        # and while both run, a third job finds nothing free
        with pytest.raises(DeviceBusy):
            with claim_device(timeout=0.2, poll_seconds=0.05):
                pass
    finally:
        assert finish(first[0], first[2]) == 0
        assert finish(second[0], second[2]) == 0


def test_device_reused_after_a_job_fails(gpu_env, tmp_path):
    proc, report, go = start_job(gpu_env, tmp_path, "failing")
    failed_device, _ = wait_report(proc, report)
    assert finish(proc, go, "fail") != 0
    # both devices are free again: claiming the whole pool succeeds at once
    with claim_device(count=2, timeout=0) as both:
        assert both.split(",") == ["0", "1"]
        assert failed_device in both.split(",")


def test_in_process_exception_releases_and_restores_env(gpu_env, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ValueError, match="boom"):
        with claim_device(timeout=0) as device:
            assert os.environ["CUDA_VISIBLE_DEVICES"] == device == "0"
            raise ValueError("boom")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    with claim_device(timeout=0) as device:
        assert device == "0"


def test_device_reused_after_a_job_is_killed(gpu_env, tmp_path):
    proc, report, go = start_job(gpu_env, tmp_path, "killed")
    killed_device, _ = wait_report(proc, report)
    other = "1" if killed_device == "0" else "0"
    # the killed job's device is held while it lives ...
    with claim_device(timeout=0) as device:
        assert device == other
        with pytest.raises(DeviceBusy):
            with claim_device(timeout=0.1, poll_seconds=0.05):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # ... and free once it is gone, without any cleanup on its side
        with claim_device(timeout=5, poll_seconds=0.05) as reused:
            assert reused == killed_device


def test_waiting_job_gets_the_device_when_it_is_released(gpu_env, tmp_path):
    with claim_device(count=2, timeout=0):
        waiting = start_job(gpu_env, tmp_path, "waiting")
        time.sleep(0.5)
        assert not waiting[1].exists() and waiting[0].poll() is None
    device, _ = wait_report(waiting[0], waiting[1])
    assert device in {"0", "1"}
    assert finish(waiting[0], waiting[2]) == 0


def test_job_without_gpus_claims_nothing(gpu_env):
    with claim_device(count=2, timeout=0):
        # every device is taken, yet a job asking for none runs at once and leaves the env alone
        with claim_device(count=0, timeout=0) as device:
            assert device is None
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    with pytest.raises(ValueError, match="0 or more"):
        with claim_device(count=-1):
            pass


def test_under_slurm_it_does_nothing(gpu_env, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with claim_device() as device:
        assert device is None
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert not gpu_env.exists()


def test_cpu_only_machine_yields_none(monkeypatch, tmp_path):
    monkeypatch.delenv("PEEKABOO_GPUS", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # the installed torch is a CPU build: no GPU is counted
    with claim_device(lock_dir=tmp_path / "locks") as device:
        assert device is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device_pool() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert device_pool() == []


def test_pool_precedence_and_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.delenv("PEEKABOO_GPUS", raising=False)
    assert device_pool() == ["2", "3"]
    monkeypatch.setenv("PEEKABOO_GPUS", "0, 5")
    assert device_pool() == ["0", "5"]
    assert device_pool([1, 2]) == ["1", "2"]
    assert device_pool("GPU-8f6c,MIG-GPU-8f6c/1/0") == ["GPU-8f6c", "MIG-GPU-8f6c/1/0"]
    with claim_device(pool="MIG-GPU-8f6c/1/0", lock_dir=tmp_path, timeout=0) as device:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == device == "MIG-GPU-8f6c/1/0"
    assert [p.name for p in tmp_path.iterdir()] == ["gpu-MIG-GPU-8f6c_1_0.lock"]
    with pytest.raises(ValueError, match="twice"):
        device_pool("0,0")
    with pytest.raises(ValueError, match="not a GPU index"):
        device_pool(["0; rm -rf /"])
    with pytest.raises(ValueError, match="asks for 3 GPUs"):
        with claim_device(pool="0,1", count=3):
            pass


def test_max_memory_map():
    assert max_memory_map(None) is None
    budget = max_memory_map({"gpus": "70GiB", 1: "10GiB", "cpu": "200GB"}, n_gpus=3)
    assert budget == {0: 70 * 2**30, 1: 10 * 2**30, 2: 70 * 2**30, "cpu": 200 * 10**9}
    assert list(budget) == [0, 1, 2, "cpu"]
    assert max_memory_map({"0": 1000, "disk": "1MiB"}) == {0: 1000, "disk": 2**20}
    with pytest.raises(ValueError, match=r"models.big.max_memory.gpu0: unknown device"):
        max_memory_map({"gpu0": "1GiB"}, where="models.big.max_memory")
    with pytest.raises(ValueError, match=r"max_memory.0: expected a size"):
        max_memory_map({0: "lots"})
    with pytest.raises(ValueError, match=r"max_memory.1: size must be positive"):
        max_memory_map({1: 0})


def test_lock_dir_default_is_per_user(monkeypatch):
    monkeypatch.delenv("PEEKABOO_GPU_LOCK_DIR", raising=False)
    assert devices.default_lock_dir().name == f"peekaboo-gpu-locks-{os.getuid()}"


TOY_SNAKEFILE = """
rule all:
    input: expand("held/{i}.txt", i=range(4))

rule trace:
    output: "held/{i}.txt"
    resources: gpu=1
    shell: "{PYTHON} -c \\"$JOB\\" {output}"
"""

TOY_JOB = textwrap.dedent(
    """
    import os, sys, time
    from peekaboo.devices import claim_device
    with claim_device(poll_seconds=0.05) as device:
        start = time.time()
        time.sleep(1.0)
        end = time.time()
    open(sys.argv[1], "w").write(f"{device} {os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')} {start} {end}")
    """
)


@pytest.mark.slow
def test_snakemake_trace_jobs_share_two_gpus_without_overlap(gpu_env, tmp_path):
    """Four GPU jobs at once under Snakemake (no --resources limit) on two simulated GPUs:
    never two on one device at the same time; the two that find both taken wait."""
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE.replace("{PYTHON}", sys.executable))
    env = dict(os.environ, JOB=TOY_JOB)
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "4", "--directory", str(tmp_path),
                          "--snakefile", str(tmp_path / "Snakefile")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    held = [(tmp_path / "held" / f"{i}.txt").read_text().split() for i in range(4)]
    by_device: dict[str, list[tuple[float, float]]] = {}
    for device, visible_after, start, end in held:
        # the claim was released and CUDA_VISIBLE_DEVICES restored once the job's block ended
        assert device in {"0", "1"} and visible_after == "unset"
        by_device.setdefault(device, []).append((float(start), float(end)))
    assert sorted(by_device) == ["0", "1"]
    for intervals in by_device.values():
        intervals.sort()
        assert all(prev_end <= next_start for (_, prev_end), (next_start, _) in zip(intervals, intervals[1:]))
    # and the jobs did run side by side, one per device
    assert any(s0 < e1 and s1 < e0 for s0, e0 in by_device["0"] for s1, e1 in by_device["1"])
