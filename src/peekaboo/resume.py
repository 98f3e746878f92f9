"""Resuming a job from its finished batches: the partial folder beside an output, and what must match to resume.

A job that writes its output batch by batch (the trace store,
:mod:`peekaboo.tracestore`; the generations file, :mod:`peekaboo.generations`)
keeps each finished batch in a folder beside the output that is not a
Snakemake output, so that it survives a killed job; a re-run with the same
fingerprint (plan, config, code, model) skips those batches. This module holds
only that bookkeeping and imports nothing of the store (no zarr, no xarray), so
that the ``generate`` stage, which resumes its generations file through it, does
not have the store among its code inputs: editing the store re-runs ``traces``
only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from .logs import get_logger
from .provenance import canonical_json

log = get_logger("resume")


def partial_dir(output: str | Path) -> Path:
    """The resume folder of an output: ``shard-{i}.partial`` beside ``shard-{i}.zarr``; ``{name}.partial`` beside
    any other file (``shard-{i}.jsonl.partial``)."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".zarr") + ".partial")


def has_partial_batches(output: str | Path) -> bool:
    """Whether an output's resume folder holds batch files of an earlier run.

    A job that finds some identifies its model anew (``identify(..., fresh=True)``, no cached file hashes)
    before the plan comparison may keep a single batch: a resume never mixes two models' outputs.
    """
    folder = partial_dir(output)
    return folder.is_dir() and any(folder.glob("batch-*"))


class PartialBatches:
    """Finished batches of one output, kept in its partial folder so that a killed job resumes.

    ``fingerprint`` is everything that must match for a resume to be valid (the
    plan, config and code hashes, the model's id and identity); a folder left
    by a different one is discarded, and the log says what differed. A batch is finished when all its ``suffixes`` files exist:
    each is written atomically and the last one is written last.
    """

    def __init__(self, folder: str | Path, n_batches: int, fingerprint: Mapping[str, Any],
                 suffixes: Sequence[str], name: str):
        self.folder = Path(folder)
        self.name = name  # the output the batches make, for the log
        self.n_batches = int(n_batches)
        self.fingerprint = dict(fingerprint)
        self.suffixes = tuple(suffixes)

    def files(self, index: int) -> dict[str, Path]:
        return {s: self.folder / f"batch-{index:05d}{s}" for s in self.suffixes}

    def finished(self, index: int) -> bool:
        return all(p.is_file() for p in self.files(index).values())

    def start(self) -> set[int]:
        """Prepare the folder; the indices of batches already finished by an earlier run."""
        manifest = self.folder / "plan.json"
        wanted = canonical_json(self.fingerprint)
        if self.folder.exists():
            why = self._stale_reason(manifest, wanted)
            if why:
                log.warning("not resuming %s, discarding %s: %s", self.name, self.folder, why)
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not manifest.is_file():
            _write_atomic(manifest, wanted.encode())
        done = {k for k in range(self.n_batches) if self.finished(k)}
        if done:
            log.info("resuming %s: %d of %d batches already finished", self.name, len(done), self.n_batches)
        return done

    def _stale_reason(self, manifest: Path, wanted: str) -> str | None:
        """Why the partial folder's batches cannot be resumed (None when they can)."""
        if not manifest.is_file():
            return ("it holds no plan: the run that made it stopped before writing one "
                    "(a full disk or a kill at start-up)")
        try:
            found = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"its plan cannot be read ({exc})"
        if canonical_json(found) == wanted:
            return None
        labels = {"plan": "plan of batches", "config_hash": "config", "code_hash": "package code",
                  "model_id": "model source", "model_revision": "model (other weights)"}
        if not isinstance(found, dict):
            return f"its plan is not a JSON object ({type(found).__name__})"
        keys = [k for k in sorted(set(found) | set(self.fingerprint)) if found.get(k) != self.fingerprint.get(k)]
        why = f"its batches were made with a different {', '.join(labels.get(k, k) for k in keys)}"
        if "model_revision" in keys:  # the one a user must be able to check by hand: the two hashes
            why += (f": recorded {found.get('model_revision')}, the weights now are "
                    f"{self.fingerprint.get('model_revision')}")
        return why

    def write(self, index: int, contents: Mapping[str, bytes | Any]) -> None:
        """Persist one batch: ``contents[suffix]`` is bytes or a function writing to an open binary file."""
        for suffix, path in self.files(index).items():
            data = contents[suffix]
            if isinstance(data, (bytes, bytearray)):
                _write_atomic(path, bytes(data))
            else:
                tmp = path.with_name(path.name + ".tmp")
                with open(tmp, "wb") as fh:
                    data(fh)
                tmp.replace(path)

    def missing(self) -> list[int]:
        return [k for k in range(self.n_batches) if not self.finished(k)]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
