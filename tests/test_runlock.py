"""The results folder's lock (peekaboo.runlock): who holds it, refusals naming the holder, stale locks cleared."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace

import pytest

from peekaboo import runlock


def gone_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(results, holder: runlock.Holder) -> None:
    results.mkdir(parents=True, exist_ok=True)
    runlock.lock_path(results).write_text(json.dumps(asdict(holder)))


def test_the_lock_names_its_holder_and_is_given_back_only_by_it(tmp_path):
    results = tmp_path / "results"
    me = runlock.acquire(results, tmp_path / "checkout", tmp_path / "work")
    assert runlock.read(results) == me
    assert (me.host, me.pid) == (socket.gethostname(), os.getpid())
    assert me.checkout == str((tmp_path / "checkout").resolve()) and me.workdir == str((tmp_path / "work").resolve())
    assert me.pid_start is not None and runlock.alive(me) is True
    with pytest.raises(runlock.ResultsLocked) as err:  # a second run, even from this host
        runlock.acquire(results, tmp_path / "other", tmp_path / "other")
    assert str(err.value).startswith(
        f"results folder {results} is being written by the run of checkout {me.checkout} (working directory "
        f"{me.workdir}; host {me.host}, pid {me.pid}, started {me.started}). One run at a time writes")
    assert str(err.value).endswith(f"If that run is gone, delete {runlock.lock_path(results)}.")
    assert not runlock.release(results, replace(me, run_id="another run"))  # not its lock: left alone
    assert runlock.read(results) == me
    assert runlock.release(results, me) and runlock.read(results) is None
    assert sorted(p.name for p in results.iterdir()) == []  # no temporary file left behind


def test_a_lock_whose_process_is_gone_is_cleared_with_a_message(tmp_path):
    results = tmp_path / "results"
    dead = runlock.Holder(host=socket.gethostname(), pid=gone_pid(), started="2026-01-01T00:00:00+00:00",
                          checkout="/elsewhere/checkout", workdir="/elsewhere/checkout", run_id="old")
    plant(results, dead)
    assert runlock.alive(dead) is False
    said = []
    me = runlock.acquire(results, tmp_path, tmp_path, warn=said.append)
    assert runlock.read(results) == me
    assert said == [f"cleared a stale lock on {results} left by the run of checkout /elsewhere/checkout (working "
                    f"directory /elsewhere/checkout; host {dead.host}, pid {dead.pid}, started "
                    "2026-01-01T00:00:00+00:00): that process is gone (a killed run)"]


def test_a_reused_pid_is_not_the_holder(tmp_path):
    # the holder's pid now belongs to a process that started at another time (this one)
    results = tmp_path / "results"
    reused = runlock.Holder(host=socket.gethostname(), pid=os.getpid(), started="2026-01-01T00:00:00+00:00",
                            checkout="/c", workdir="/c", run_id="old", pid_start="1")
    assert runlock.alive(reused) is False
    plant(results, reused)
    said = []
    runlock.acquire(results, tmp_path, tmp_path, warn=said.append)
    assert len(said) == 1 and "cleared a stale lock" in said[0]


def test_a_lock_taken_on_another_host_is_never_cleared_from_here(tmp_path):
    results = tmp_path / "results"
    remote = runlock.Holder(host="login-2", pid=gone_pid(), started="2026-01-01T00:00:00+00:00",
                            checkout="/c", workdir="/c", run_id="remote")
    plant(results, remote)
    assert runlock.alive(remote) is None
    with pytest.raises(runlock.ResultsLocked, match="host login-2, .*on another host: whether it still runs cannot "
                                                    "be checked from here"):
        runlock.acquire(results, tmp_path, tmp_path)
    assert runlock.read(results) == remote


def test_an_unreadable_lock_is_cleared_with_a_message(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    runlock.lock_path(results).write_text("{half a lo")
    said = []
    me = runlock.acquire(results, tmp_path, tmp_path, warn=said.append)
    assert runlock.read(results) == me
    assert len(said) == 1 and said[0].startswith(f"clearing {runlock.lock_path(results)}: ")
    assert "is not a readable run lock" in said[0]


def test_a_job_writes_only_under_its_own_runs_lock(tmp_path, caplog):
    results = tmp_path / "results"
    runlock.check_job(results, tmp_path / "a")  # no lock: a stage run by hand goes on
    mine = runlock.acquire(results, tmp_path / "a", tmp_path / "a")
    runlock.check_job(results, tmp_path / "a")  # its own run's lock
    with pytest.raises(runlock.ResultsLocked) as err:
        runlock.check_job(results, tmp_path / "b")
    assert str(err.value) == (f"this job (working directory {(tmp_path / 'b').resolve()}) writes into {results}, "
                              f"which {mine.describe()} is writing; refused")
    # a killed run's lock does not stop a job (the next run clears it); the job's log says so
    plant(results, replace(mine, pid=gone_pid()))
    with caplog.at_level("WARNING", logger="peekaboo"):
        runlock.check_job(results, tmp_path / "b")
    assert "holds a stale lock" in caplog.text


def test_running_elsewhere_names_a_live_other_run_only(tmp_path):
    results = tmp_path / "results"
    assert runlock.running_elsewhere(results) is None
    mine = runlock.acquire(results, tmp_path, tmp_path)
    assert runlock.running_elsewhere(results) is None  # this process's own lock
    other = replace(mine, pid=os.getppid(), pid_start=None)
    plant(results, other)
    assert runlock.running_elsewhere(results) == other
    plant(results, replace(mine, pid=gone_pid()))
    assert runlock.running_elsewhere(results) is None
