"""Shipped reference models: trained weights that come with the project, checked by hash when they are used.

Training on a CPU is not bit-reproducible from one processor to another, and
the planted behaviours are the truth the default run's checks judge, so the
default run does not train its reference models: it uses the ones under
``shipped/reference/<model>/``, made by the project's own ``train_reference``
rule (``scripts/ship_reference.py``). ``shipped/reference/manifest.json``
records how they were made (the command, the commit, the machine) and, per
model, the training config (``spec.training_config``: what the rule read) and
every file's sha256.

A model whose entry says ``reference.source: shipped`` is copied into
``reference/<model>`` by the ``ship_reference`` rule, which checks every file's
hash first (a file that differs from the manifest fails the run, naming the
file); the workflow checks while it is parsed that the model's config entry is
the one the weights were trained from (``check_config``).

Light: read while the workflow is parsed (json and hashlib only).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from ...logs import get_logger
from .spec import NOT_FOR_WEIGHTS

log = get_logger("reference")

# the shipped models' folder, relative to the workflow's root (the folder of the Snakefile)
SHIPPED_DIR = Path("shipped") / "reference"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class ShippedModelError(ValueError):
    """A shipped reference model is missing, altered or does not match the config; the message names the file or key."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_dir(root: str | Path) -> Path:
    """The shipped models' folder of the workflow rooted at ``root``."""
    return Path(root) / SHIPPED_DIR


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of the shipped models in ``folder`` (``shipped/reference``)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShippedModelError(f"{path}: no manifest of shipped reference models (scripts/ship_reference.py writes it)") from None
    except json.JSONDecodeError as exc:
        raise ShippedModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise ShippedModelError(f"{path}: has no 'models' mapping")
    return manifest


def model_entry(manifest: Mapping[str, Any], model: str, folder: str | Path) -> dict[str, Any]:
    """The manifest's entry of ``model``: its training config and its files' hashes."""
    entry = manifest["models"].get(model)
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict) or "config" not in entry:
        shipped = ", ".join(sorted(manifest["models"])) or "none"
        raise ShippedModelError(
            f"models.{model}.reference.source is 'shipped', but {Path(folder) / MANIFEST} ships no model '{model}' "
            f"(it ships: {shipped}); set source: train, or ship it with scripts/ship_reference.py"
        )
    return entry


def model_files(folder: str | Path, model: str, entry: Mapping[str, Any]) -> list[Path]:
    """The shipped files of ``model`` (the manifest's list, in its order)."""
    return [Path(folder) / model / name for name in sorted(entry["files"])]


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(config)
    out["reference"] = {k: v for k, v in dict(config.get("reference") or {}).items() if k not in NOT_FOR_WEIGHTS}
    return out


def _differences(shipped: Any, wanted: Any, where: str) -> list[str]:
    if isinstance(shipped, Mapping) and isinstance(wanted, Mapping):
        out: list[str] = []
        for key in sorted(set(shipped) | set(wanted), key=str):
            here = f"{where}.{key}" if where else str(key)
            if key not in wanted:
                out.append(f"{here}: the shipped model was trained with {shipped[key]!r}, this config has no such key")
            elif key not in shipped:
                out.append(f"{here}: this config has {wanted[key]!r}, the shipped model's training had no such key")
            else:
                out += _differences(shipped[key], wanted[key], here)
        return out
    # JSON keeps no tuples: compare lists with lists
    norm = lambda v: json.loads(json.dumps(v))  # noqa: E731
    if norm(shipped) != norm(wanted):
        return [f"{where}: the shipped model was trained with {shipped!r}, this config has {wanted!r}"]
    return []


def check_config(entry: Mapping[str, Any], config: Mapping[str, Any], model: str, folder: str | Path) -> None:
    """Fail unless ``config`` (``spec.training_config`` of the model) is the one the shipped weights were made from.

    Keys that do not shape the weights (``spec.NOT_FOR_WEIGHTS``) are not compared.
    """
    diffs = _differences(_comparable(entry["config"]), _comparable(config), "")
    if diffs:
        raise ShippedModelError(
            f"models.{model}.reference: source is 'shipped', but the shipped weights ({Path(folder) / model}) were not "
            f"trained from this entry: " + "; ".join(diffs)
            + ". Set source: train to train this entry, or ship new weights with scripts/ship_reference.py"
        )


def verify(folder: str | Path, model: str, entry: Mapping[str, Any]) -> None:
    """Fail, naming the file, unless every shipped file of ``model`` exists with the manifest's sha256."""
    for path, name in zip(model_files(folder, model, entry), sorted(entry["files"])):
        if not path.is_file():
            raise ShippedModelError(f"{path}: shipped file of reference model '{model}' is missing")
        digest = sha256(path)
        if digest != entry["files"][name]:
            raise ShippedModelError(
                f"{path}: sha256 {digest} does not match {entry['files'][name]} in {Path(folder) / MANIFEST}: the "
                f"shipped reference model '{model}' was altered (restore it with git, or ship new weights with "
                f"scripts/ship_reference.py)"
            )


def install(folder: str | Path, model: str, entry: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Copy the shipped ``model`` into ``out_dir`` after checking every file's hash, and check the copies too."""
    verify(folder, model, entry)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in model_files(folder, model, entry):
        dst = out_dir / src.name
        shutil.copyfile(src, dst)
        if sha256(dst) != entry["files"][src.name]:
            raise ShippedModelError(f"{dst}: the copy of {src} does not have the manifest's sha256")
        written.append(dst)
    return written


def ship(
    trained: Mapping[str, tuple[str | Path, Mapping[str, Any]]],
    folder: str | Path,
    *,
    made: Mapping[str, Any],
    keep: Iterable[str] = (),
) -> dict[str, Any]:
    """Put trained reference models into the shipped ``folder`` and write its manifest.

    ``trained`` maps each model to (its trained folder, its training config).
    ``made`` records how they were made (command, commit, machine); ``keep``
    names models of the present manifest to keep as they are. Every other
    model of the folder is removed.
    """
    folder = Path(folder)
    old = load_manifest(folder)["models"] if (folder / MANIFEST).exists() else {}
    models: dict[str, Any] = {m: old[m] for m in keep if m in old}
    for name, (source, config) in trained.items():
        source = Path(source)
        # not Snakemake's .snakemake_timestamp of a directory output
        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ShippedModelError(f"{source}: no trained model to ship")
        report = json.loads((source / "training.json").read_text()) if (source / "training.json").exists() else {}
        target = folder / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for path in files:
            shutil.copyfile(path, target / path.name)
        probe = (report.get("probe") or {}).get("final") or {}
        models[name] = {
            "config": json.loads(json.dumps(config)),
            "steps": report.get("steps"),
            "probe": {k: probe.get(k) for k in ("accuracy", "token_accuracy") if k in probe},
            "training_provenance": report.get("provenance"),
            "files": {p.name: sha256(target / p.name) for p in files},
        }
    for stale in folder.iterdir() if folder.exists() else []:
        if stale.is_dir() and stale.name not in models:
            shutil.rmtree(stale)
    manifest = {"version": MANIFEST_VERSION, **dict(made), "models": dict(sorted(models.items()))}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False, default=str) + "\n")
    return manifest


def run_stage(call) -> None:
    """The ``ship_reference`` rule: copy the shipped model ``m`` into ``output.model`` after checking its hashes.

    ``config``: ``entry`` (the model's manifest entry, read while the workflow was
    parsed); input ``manifest``: the manifest, whose entry must still be the same.
    """
    name = call.wildcards["m"]
    manifest_path = call.path("manifest")
    folder = manifest_path.parent
    entry = model_entry(load_manifest(folder), name, folder)
    if json.loads(json.dumps(entry)) != json.loads(json.dumps(call.config["entry"])):
        raise ShippedModelError(f"{manifest_path}: the entry of '{name}' changed while the workflow ran; run again")
    written = install(folder, name, entry, call.output("model"))
    log.info("%s: %d shipped files checked (sha256) and copied from %s", name, len(written), folder / name)
