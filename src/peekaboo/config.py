"""The workflow configuration: load, validate against the schema, fill defaults.

Used by the Snakefile at start-up and by anyone calling the package from a
notebook. Every error names the config key at fault, so a typo stops the run
before a single job starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

REPO_DIR = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_DIR / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


def load_yaml(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    return load_yaml(path)


def _with_defaults(validator_class):
    """A validator class that fills ``default`` values of absent properties while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft7Validator)


def key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        names = ", ".join(f"{where}.{e}" if error.absolute_path else e for e in extra)
        return f"unknown key {names}"
    if error.validator == "oneOf" and error.schema.get("oneOf") and "source" in str(error.schema):
        return f"{where}: give exactly one of 'source' (hub id or path) or 'reference' (trained by the workflow)"
    return f"{where}: {error.message}"


def validate(config: Mapping[str, Any], base_dir: str | Path | None = None, check_paths: bool = True) -> dict:
    """Validate ``config``, fill defaults, check cross references and dataset paths.

    Returns a new dict; raises ConfigError naming every key at fault.
    """
    cfg = copy.deepcopy(dict(config))
    schema = load_schema()
    errors = sorted(_Validator(schema).iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors))
    problems = _cross_check(cfg)
    if check_paths:
        problems += _check_datasets(cfg, Path(base_dir or "."))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return cfg


def _cross_check(cfg: dict) -> list[str]:
    problems = []
    datasets = cfg["datasets"]
    for name, model in cfg["models"].items():
        for d in model.get("datasets") or []:
            if d not in datasets:
                problems.append(f"models.{name}.datasets: unknown dataset '{d}' (known: {', '.join(datasets)})")
        ref = model.get("reference")
        if ref:
            ds = ref.get("dataset") or ""
            panels = [d for d, spec in datasets.items() if spec["adapter"] == "panels"]
            if ds and ds not in datasets:
                problems.append(f"models.{name}.reference.dataset: unknown dataset '{ds}'")
            elif ds and datasets[ds]["adapter"] != "panels":
                problems.append(f"models.{name}.reference.dataset: '{ds}' is not a panels dataset")
            elif not ds and not panels:
                problems.append(f"models.{name}.reference: needs a panels dataset in datasets")
            init = ref.get("init_from") or ""
            if init and (init not in cfg["models"] or not cfg["models"][init].get("reference")):
                problems.append(f"models.{name}.reference.init_from: '{init}' is not a reference model of this config")
    return problems


def _check_datasets(cfg: dict, base_dir: Path) -> list[str]:
    from .datasets.base import AdapterError, get_adapter

    problems = []
    for name, spec in cfg["datasets"].items():
        try:
            adapter = get_adapter(name, spec, seed=cfg["seed"], base_dir=base_dir)
            problems.extend(adapter.check())
        except AdapterError as exc:
            problems.append(str(exc))
        boxes = spec.get("boxes")
        if boxes:
            p = Path(boxes).expanduser()
            p = p if p.is_absolute() else base_dir / p
            if not p.is_file():
                problems.append(f"datasets.{name}.boxes: no such file {p}")
    return problems


def load(path: str | Path, check_paths: bool = True) -> dict:
    """Load and validate a config file; relative dataset paths resolve against the file's directory."""
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return validate(raw, base_dir=path.parent, check_paths=check_paths)


def model_datasets(cfg: Mapping[str, Any], model: str) -> list[str]:
    """The datasets a model runs on, in config order."""
    chosen = cfg["models"][model].get("datasets") or []
    return [d for d in cfg["datasets"] if not chosen or d in chosen]


def reference_dataset(cfg: Mapping[str, Any], model: str) -> str:
    ref = cfg["models"][model]["reference"]
    if ref.get("dataset"):
        return ref["dataset"]
    return next(d for d, spec in cfg["datasets"].items() if spec["adapter"] == "panels")
