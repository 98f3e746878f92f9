"""GPU placement for trace jobs on a workstation, and memory budgets for device maps.

Snakemake's ``--resources gpu=N`` bounds how many GPU jobs run at once but does
not say which GPU each one gets. :func:`claim_device` does that: each trace job
takes a free device from the pool, holds it with an OS file lock for as long as
it runs, and sees only that device through ``CUDA_VISIBLE_DEVICES``. The lock
is ``fcntl.flock`` on a per-device file, so the kernel releases it when the
process ends however it ends (exception, ``kill -9``, OOM killer): a crashed job
never leaves a device taken.

Under SLURM the scheduler assigns the GPU itself (and sets
``CUDA_VISIBLE_DEVICES``), so there :func:`claim_device` does nothing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peekaboo.logs import get_logger

log = get_logger("devices")

POOL_ENV = "PEEKABOO_GPUS"
LOCK_DIR_ENV = "PEEKABOO_GPU_LOCK_DIR"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"


class DeviceBusy(TimeoutError):
    """No device of the pool became free within the time the caller allowed."""


def _split_devices(text: str) -> list[str]:
    return [d.strip() for d in text.split(",") if d.strip()]


def device_pool(pool: Sequence[str | int] | str | None = None) -> list[str]:
    """The devices jobs on this machine share, as strings as CUDA_VISIBLE_DEVICES names them.

    In order of precedence: ``pool`` itself (a list or a comma-separated
    string), ``PEEKABOO_GPUS`` (comma-separated, e.g. ``0,1,3`` to leave GPU 2
    to someone else), the ``CUDA_VISIBLE_DEVICES`` list the job started with,
    torch's device count. Empty on a machine without GPUs.
    """
    if pool is not None:
        devices = _split_devices(pool) if isinstance(pool, str) else [str(d).strip() for d in pool]
    elif os.environ.get(POOL_ENV, "").strip():
        devices = _split_devices(os.environ[POOL_ENV])
    elif VISIBLE_ENV in os.environ:
        devices = _split_devices(os.environ[VISIBLE_ENV])
        # CUDA reads "-1" (or any invalid first entry) as "no device"
        if devices and devices[0].startswith("-"):
            devices = []
    else:
        devices = [str(i) for i in range(_machine_gpu_count())]
    if len(set(devices)) != len(devices):
        raise ValueError(f"device pool lists a device twice: {','.join(devices)}")
    for device in devices:
        if not re.fullmatch(r"[A-Za-z0-9_.:/-]+", device):
            raise ValueError(f"device pool entry {device!r} is not a GPU index, UUID or MIG id")
    return devices


def _machine_gpu_count() -> int:
    """How many GPUs the machine has, found without initialising CUDA in this process.

    CUDA reads CUDA_VISIBLE_DEVICES once, at initialisation: counting with
    ``torch.cuda`` here could do that (it falls back to the CUDA runtime when
    NVML is missing) and make the placement that follows ineffective. So
    count with nvidia-smi, or in a throwaway process.
    """
    try:
        import torch
    except ImportError:
        return 0
    if torch.version.cuda is None and torch.version.hip is None:
        return 0
    commands = [["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                [sys.executable, "-c", "import torch; print('\\n'.join(map(str, range(torch.cuda.device_count()))))"]]
    for command in commands:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        return len([line for line in out.splitlines() if line.strip()])
    return 0


def _visible_gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def default_lock_dir() -> Path:
    """Where the per-device lock files live: shared by every job of this user on this machine."""
    configured = os.environ.get(LOCK_DIR_ENV, "").strip()
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"peekaboo-gpu-locks-{os.getuid()}"


def _lock_path(lock_dir: Path, device: str) -> Path:
    return lock_dir / f"gpu-{re.sub(r'[:/]', '_', device)}.lock"


def _try_lock(lock_dir: Path, device: str) -> int | None:
    """An fd holding the device's lock, or None when another process holds it."""
    fd = os.open(_lock_path(lock_dir, device), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # who holds it, for a person looking at the lock dir; the lock itself is the flock
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _release(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _try_claim(lock_dir: Path, devices: Sequence[str], count: int) -> tuple[list[str], list[int]] | None:
    """All-or-nothing: ``count`` devices locked, or none (so two jobs never deadlock on halves)."""
    held: list[tuple[str, int]] = []
    for device in devices:
        fd = _try_lock(lock_dir, device)
        if fd is not None:
            held.append((device, fd))
            if len(held) == count:
                return [d for d, _ in held], [fd for _, fd in held]
    _release([fd for _, fd in held])
    return None


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


@contextmanager
def claim_device(
    pool: Sequence[str | int] | str | None = None,
    lock_dir: str | Path | None = None,
    *,
    count: int = 1,
    timeout: float | None = None,
    poll_seconds: float = 0.5,
) -> Iterator[str | None]:
    """Hold ``count`` free GPUs of the pool for the duration of the ``with`` block.

    Meant to wrap a trace job, with ``count`` its ``gpu`` resource:
    ``with claim_device(count=snakemake.resources.get("gpu", 1)): ...``.
    Yields the ``CUDA_VISIBLE_DEVICES`` value it set (the device id, or ids
    joined by commas), or None when it placed nothing: under SLURM (which
    assigns GPUs itself), on a machine without GPUs, and for ``count=0``. While the block runs
    the job sees only its devices, renumbered from 0; on leaving, also by an
    exception, the locks are released and ``CUDA_VISIBLE_DEVICES`` restored.

    Enter it before anything initialises CUDA in the process (model loading,
    ``torch.cuda.is_available()``): CUDA reads ``CUDA_VISIBLE_DEVICES`` once.

    When every device is taken it waits, polling every ``poll_seconds``, up to
    ``timeout`` seconds (None: no limit), then raises :class:`DeviceBusy`.
    ``lock_dir`` must be the same for every job sharing the GPUs (default:
    ``PEEKABOO_GPU_LOCK_DIR`` or a per-user folder in the temp dir).
    """
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")
    if count == 0:
        # a job configured without GPUs (resources.trace_gpus: 0) leaves them all to others
        log.info("the job asks for no GPU: running without device placement")
        yield None
        return
    if os.environ.get("SLURM_JOB_ID"):
        log.info("running under SLURM (job %s): the scheduler placed the GPUs (%s=%s)",
                 os.environ["SLURM_JOB_ID"], VISIBLE_ENV, os.environ.get(VISIBLE_ENV, "unset"))
        yield None
        return
    devices = device_pool(pool)
    if not devices:
        log.info("no GPU in the pool: running without device placement")
        yield None
        return
    if count > len(devices):
        raise ValueError(f"a job asks for {count} GPUs but the pool has {len(devices)}: {','.join(devices)}")
    if _cuda_initialised():
        raise RuntimeError("CUDA is already initialised in this process: claim_device must come before "
                           "any CUDA use, or CUDA_VISIBLE_DEVICES has no effect")
    lock_root = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_root.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    last_note = None
    while True:
        claimed = _try_claim(lock_root, devices, count)
        if claimed is not None:
            break
        waited = time.monotonic() - started
        if timeout is not None and waited >= timeout:
            raise DeviceBusy(f"no {count} free GPU(s) among {','.join(devices)} after {waited:.0f} s "
                             f"(locks in {lock_root})")
        if last_note is None or time.monotonic() - last_note >= 60:
            log.info("all GPUs of the pool %s are taken; waiting for one to be released", ",".join(devices))
            last_note = time.monotonic()
        time.sleep(poll_seconds)

    names, fds = claimed
    visible = ",".join(names)
    previous = os.environ.get(VISIBLE_ENV)
    os.environ[VISIBLE_ENV] = visible
    log.info("claimed GPU %s (pool %s)", visible, ",".join(devices))
    try:
        yield visible
    finally:
        if previous is None:
            os.environ.pop(VISIBLE_ENV, None)
        else:
            os.environ[VISIBLE_ENV] = previous
        _release(fds)
        log.info("released GPU %s", visible)


# ---------------------------------------------------------------------------
# memory budgets for accelerate's device map

_DEVICE_KEY = re.compile(r"\d+")
_NAMED_KEYS = {"cpu", "disk", "mps"}
EVERY_GPU_KEY = "gpus"


def parse_size(value: Any, where: str) -> int:
    """Bytes from an int or a size string such as ``70GiB``, ``500MB``, ``1.5GB``."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a size such as 70GiB, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{where}: size must be positive, got {value}")
        return value
    if isinstance(value, str):
        from accelerate.utils import convert_file_size_to_int

        try:
            size = convert_file_size_to_int(value.strip())
        except ValueError:
            size = -1
        if size > 0:
            return size
    raise ValueError(f"{where}: expected a size such as 70GiB, 500MB or a number of bytes, got {value!r}")


def max_memory_map(
    spec: Mapping[Any, Any] | None,
    n_gpus: int | None = None,
    where: str = "max_memory",
) -> dict[int | str, int] | None:
    """The ``max_memory`` argument of accelerate/transformers from a model's config entry.

    ``spec`` maps a GPU index (as the job sees it: 0 is its first visible
    device), ``cpu``, ``disk`` or ``mps`` to a budget, or ``gpus`` to the same
    budget for every visible GPU (an explicit index wins over it), e.g.
    ``{gpus: 70GiB, cpu: 200GiB}``. Sizes become bytes. ``n_gpus`` defaults
    to the number of GPUs the process sees. None stays None (accelerate then
    uses what is free). Errors name the key, prefixed by ``where``.
    """
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected a mapping of device to size, e.g. {{0: 70GiB, cpu: 200GiB}}, got {spec!r}")
    budget: dict[int | str, int] = {}
    every_gpu = None
    for key, value in spec.items():
        name = str(key).strip().lower()
        if name == EVERY_GPU_KEY:
            every_gpu = parse_size(value, f"{where}.{key}")
        elif _DEVICE_KEY.fullmatch(name):
            budget[int(name)] = parse_size(value, f"{where}.{key}")
        elif name in _NAMED_KEYS:
            budget[name] = parse_size(value, f"{where}.{key}")
        else:
            raise ValueError(f"{where}.{key}: unknown device; use a GPU index, {EVERY_GPU_KEY}, cpu, disk or mps")
    if every_gpu is not None:
        if n_gpus is None:
            n_gpus = _visible_gpu_count()
        for index in range(n_gpus):
            budget.setdefault(index, every_gpu)
    # accelerate expects GPUs first, in index order
    gpus = sorted(k for k in budget if isinstance(k, int))
    return {**{k: budget[k] for k in gpus}, **{k: v for k, v in budget.items() if not isinstance(k, int)}}
