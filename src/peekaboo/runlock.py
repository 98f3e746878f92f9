"""One writer per results folder: the lock a workflow run holds on the ``results:`` folder it writes into.

Snakemake's own lock covers its working directory, not the configured
results folder, so two checkouts (or two working directories) pointed at one
absolute results folder would write the same shards at once. The run
therefore takes ``<results>/.peekaboo-run.lock`` when it starts executing
(Snakemake's ``onstart``: never for a dry run, never in a spawned job, which
runs with ``--no-hooks``) and removes it when it ends (``onsuccess`` /
``onerror``). The file names the holder: host, process id, start time,
checkout (the Snakefile's folder) and working directory.

- A second run on the same folder is refused before it runs a job, with a
  message naming the holder.
- A lock whose process is gone (same host; a pid that now belongs to another
  process counts as gone) is the remains of a killed run: the next run clears
  it with a message and takes it. A lock taken on another host cannot be
  checked from here and is never cleared automatically.
- Every stage job (``peekaboo.stage.run_from_snakemake``) checks the lock
  before it writes: a job whose working directory is not the holder's is
  refused. Jobs run as their own processes, on other hosts under SLURM, so
  they do not take the lock themselves; they run in the run's working
  directory on a shared file system, which is what they are checked by.
  A job finding no lock at all (a stage run by hand, ``--no-hooks``) goes on.

The file is created with its content complete (written to a temporary file,
then hard-linked to the lock's name, which fails if the name exists: atomic
on local file systems and on NFS).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .logs import get_logger

log = get_logger("runlock")

LOCK_NAME = ".peekaboo-run.lock"


class ResultsLocked(RuntimeError):
    """Another run holds the results folder; the message names it."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: str  # UTC, ISO 8601
    checkout: str  # the folder of the Snakefile that runs
    workdir: str  # Snakemake's working directory: where its jobs run
    run_id: str
    pid_start: str | None = None  # the process's start (from /proc): a reused pid is not the holder

    def describe(self) -> str:
        return (f"the run of checkout {self.checkout} (working directory {self.workdir}; host {self.host}, "
                f"pid {self.pid}, started {self.started})")


def lock_path(results: str | Path) -> Path:
    return Path(results) / LOCK_NAME


def _process_start(pid: int) -> str | None:
    """When a process started, in clock ticks since boot (Linux /proc); None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after its closing parenthesis
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def alive(holder: Holder) -> bool | None:
    """Whether the holder's process still runs: None when that cannot be told (another host)."""
    if holder.host != socket.gethostname():
        return None
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    if holder.pid_start is not None:
        start = _process_start(holder.pid)
        if start is not None and start != holder.pid_start:
            return False  # the pid was reused by a process that started later
    return True


def read(results: str | Path) -> Holder | None:
    """The lock's holder; None when there is no lock. ValueError when the file is not a lock this module wrote."""
    path = lock_path(results)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return Holder(**{k: data[k] for k in Holder.__dataclass_fields__ if k in data})
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a readable run lock ({exc})") from None


def _this_run(checkout: str | Path, workdir: str | Path) -> Holder:
    pid = os.getpid()
    return Holder(host=socket.gethostname(), pid=pid,
                  started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  checkout=str(Path(checkout).resolve()), workdir=str(Path(workdir).resolve()),
                  run_id=uuid.uuid4().hex, pid_start=_process_start(pid))


def acquire(results: str | Path, checkout: str | Path, workdir: str | Path,
            warn: Callable[[str], Any] | None = None) -> Holder:
    """Take the results folder's lock for this process; ResultsLocked naming the holder when another run has it.

    A lock left by a run whose process is gone (same host) is cleared, with a warning naming it (to ``warn``:
    the package's log by default; the workflow passes Snakemake's).
    """
    warn = warn or log.warning
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    path = lock_path(results)
    me = _this_run(checkout, workdir)
    tmp = path.with_name(f"{LOCK_NAME}.{me.host}.{me.pid}.tmp")
    tmp.write_text(json.dumps(asdict(me), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    try:
        for _ in range(3):  # a lock cleared or released between two looks is looked at again
            try:
                os.link(tmp, path)
                return me
            except FileExistsError:
                pass
            try:
                other = read(results)
            except ValueError as exc:
                warn(f"clearing {path}: {exc}")
                path.unlink(missing_ok=True)
                continue
            if other is None:
                continue
            state = alive(other)
            if state is False:
                warn(f"cleared a stale lock on {results} left by {other.describe()}: that process is gone "
                     "(a killed run)")
                path.unlink(missing_ok=True)
                continue
            unknown = " (on another host: whether it still runs cannot be checked from here)" if state is None else ""
            raise ResultsLocked(
                f"results folder {results} is being written by {other.describe()}{unknown}. One run at a time "
                f"writes a results folder: wait for that run, or give this one another `results:` folder. "
                f"If that run is gone, delete {path}.")
        raise ResultsLocked(f"could not take the lock {path}: it changed hands three times while looked at")
    finally:
        tmp.unlink(missing_ok=True)


def release(results: str | Path, holder: Holder) -> bool:
    """Remove the lock if ``holder`` still holds it; whether it did."""
    try:
        current = read(results)
    except ValueError:
        return False
    if current is None or current.run_id != holder.run_id:
        return False
    lock_path(results).unlink(missing_ok=True)
    return True


def check_job(results: str | Path, workdir: str | Path) -> None:
    """What every stage job does before it writes: ResultsLocked when another run's lock is on the folder.

    The lock must be absent or held by the run of this working directory (see the module doc).
    """
    try:
        holder = read(results)
    except ValueError as exc:
        raise ResultsLocked(f"{exc}; delete it if no run is writing {results}") from None
    if holder is None or Path(holder.workdir) == Path(workdir).resolve():
        return
    if alive(holder) is False:  # a killed run's lock: the next run clears it; it does not stop this job
        log.warning("%s holds a stale lock on %s (that process is gone)", holder.describe(), results)
        return
    raise ResultsLocked(f"this job (working directory {Path(workdir).resolve()}) writes into {results}, which "
                        f"{holder.describe()} is writing; refused")


def running_elsewhere(results: str | Path) -> Holder | None:
    """The holder of the results folder's lock when it is another live (or unverifiable) run; None otherwise."""
    try:
        holder = read(results)
    except ValueError:
        return None
    if holder is None or (holder.host == socket.gethostname() and holder.pid == os.getpid()):
        return None
    return holder if alive(holder) is not False else None
