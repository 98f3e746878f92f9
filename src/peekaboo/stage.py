"""The stage contract: one entry shape for every stage, and the runner every rule script calls.

Every stage module (``peekaboo.stages.STAGE_MODULES``) has one entry::

    def run_stage(call: StageCall) -> None

``call`` holds the job's named inputs and outputs (paths), the part of the
validated config the stage reads (the rule's ``params.config``: changing it
re-runs the stage, and its hash goes into every output's provenance), the
results directory (paths inside tables are relative to it), the package source
files the stage runs (its import closure, the rule's ``input.code``: editing
one re-runs the stage, and their hash goes into the provenance), the job's
wildcards, threads and resources, and where its log goes.

Every rule script is the same three lines around a different module::

    import _bootstrap  # puts src/ on sys.path
    from peekaboo import crm
    from peekaboo.stage import run_from_snakemake

    def main(snakemake):
        run_from_snakemake(crm.run_stage, snakemake)

A notebook user builds a :class:`StageCall` by hand or calls the stage
module's library functions directly; neither needs Snakemake.

Stage code reads config values as ``call.config[section][key]``: the schema
(``peekaboo/config.schema.yaml``) is the one source of defaults, and
``peekaboo.config.validate`` fills them in before any stage runs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import logs, provenance, runlock

# set by the tests: fail a stage that ran package code its rule does not list as input.code
CHECK_CODE_ENV = "PEEKABOO_CHECK_CODE_INPUTS"


class StageInputError(KeyError):
    """A stage asked for an input or output its rule does not declare."""


@dataclass(frozen=True)
class StageCall:
    """Everything one stage job receives (see the module doc)."""

    inputs: Mapping[str, Sequence[str]]
    outputs: Mapping[str, str]
    config: Mapping[str, Any]
    results_dir: Path
    code: Sequence[str] = ()
    wildcards: Mapping[str, str] = field(default_factory=dict)
    threads: int = 1
    resources: Mapping[str, Any] = field(default_factory=dict)
    log: Path | None = None

    def paths(self, name: str) -> list[Path]:
        """Every path of the named input (a list; empty when the rule gave none)."""
        try:
            value = self.inputs[name]
        except KeyError:
            raise StageInputError(f"stage input '{name}' is not declared (have: {', '.join(self.inputs)})") from None
        return [Path(p) for p in ([value] if isinstance(value, (str, Path)) else value)]

    def path(self, name: str) -> Path:
        """The one path of the named input."""
        paths = self.paths(name)
        if len(paths) != 1:
            raise StageInputError(f"stage input '{name}' holds {len(paths)} paths, expected one")
        return paths[0]

    def output(self, name: str) -> Path:
        try:
            return Path(self.outputs[name])
        except KeyError:
            raise StageInputError(f"stage output '{name}' is not declared (have: {', '.join(self.outputs)})") from None

    def provenance(self, **extra: Any) -> dict[str, Any]:
        """The provenance record of this job's outputs: config hash, code hash, package version, ``extra``."""
        return provenance.record(dict(self.config), list(self.code), **extra)


def _named(namedlist) -> dict[str, Any]:
    """The named entries of a Snakemake input/output list (unnamed ones are left out)."""
    return {name: namedlist[name] for name in namedlist.keys()}


def from_snakemake(smk) -> StageCall:
    """The StageCall of a running Snakemake job (``snakemake`` in a rule script)."""
    inputs = {k: ([v] if isinstance(v, str) else list(v)) for k, v in _named(smk.input).items() if k != "code"}
    code = smk.input.get("code", []) if hasattr(smk.input, "get") else []
    code = [code] if isinstance(code, str) else list(code)
    params = smk.params
    return StageCall(
        inputs=inputs,
        outputs={k: str(v) for k, v in _named(smk.output).items()},
        config=dict(params.config),
        results_dir=Path(params.results),
        code=tuple(code),
        wildcards=dict(_named(smk.wildcards)),
        threads=int(smk.threads),
        resources={k: v for k, v in _named(smk.resources).items() if not k.startswith("_")},
        log=Path(smk.log[0]) if len(smk.log) else None,
    )


def loaded_package_files() -> set[str]:
    """Source files of every ``peekaboo`` module imported in this process."""
    out = set()
    for name, module in list(sys.modules.items()):
        if name == "peekaboo" or name.startswith("peekaboo."):
            path = getattr(module, "__file__", None)
            if path:
                out.add(str(Path(path).resolve()))
    return out


def check_code_inputs(code: Sequence[str]) -> list[str]:
    """Package files this process has imported that ``code`` (a rule's input.code) leaves out."""
    declared = {str(Path(p).resolve()) for p in code}
    return sorted(loaded_package_files() - declared)


def run(entry: Callable[[StageCall], Any], call: StageCall) -> Any:
    """Run a stage entry with its log going to ``call.log``; an uncaught error goes there too, with its traceback."""
    logs.to_file(call.log)
    log = logs.get_logger("stage")
    name = f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__name__', '?')}"
    try:
        result = entry(call)
        if os.environ.get(CHECK_CODE_ENV) and call.code:
            missing = check_code_inputs(call.code)
            if missing:
                raise RuntimeError(f"{name} ran package code its rule does not list in input.code: {', '.join(missing)}")
        return result
    except BaseException:
        log.exception("%s failed", name)
        raise


def run_from_snakemake(entry: Callable[[StageCall], Any], smk) -> Any:
    """What every rule script does: build the StageCall from the job, run the entry (see :func:`run`).

    First the results folder's lock (``peekaboo.runlock``): a job of one run must not write into a folder
    another run holds. Jobs run in their run's working directory.
    """
    call = from_snakemake(smk)
    runlock.check_job(call.results_dir, Path.cwd())
    return run(entry, call)
