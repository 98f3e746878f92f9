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


def _local_ref(root: dict, sub: dict) -> dict:
    """Follow ``{"$ref": "#/definitions/x"}`` inside the schema (the only refs it uses)."""
    seen = 0
    while isinstance(sub, dict) and isinstance(sub.get("$ref"), str) and sub["$ref"].startswith("#/") and seen < 16:
        target: Any = root
        for part in sub["$ref"][2:].split("/"):
            target = target[part]
        sub, seen = target, seen + 1
    return sub


def _with_defaults(validator_class, root: dict):
    """A validator class that fills ``default`` values of absent properties while validating.

    A property given as ``{$ref: ...}`` takes the default of the definition it
    points to (``generation: {$ref: "#/definitions/generation"}``), so nested
    defaults are filled too.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if name in instance or not isinstance(sub, dict):
                    continue
                target = sub if "default" in sub else _local_ref(root, sub)
                if isinstance(target, dict) and "default" in target:
                    instance[name] = copy.deepcopy(target["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def key_path(parts) -> str:
    """``datasets.mine.regions[0]``: dotted keys, list positions in brackets."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _brief(schema: Any) -> str:
    """A few words for what a sub-schema accepts, for oneOf/anyOf messages."""
    if not isinstance(schema, dict):
        return "?"
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) if v is not None else "null" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"a list of {_brief(schema.get('items', {})).removeprefix('a ').removeprefix('an ')}s"
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind:
        return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
    return "a value matching the schema"


def _describe(error: jsonschema.ValidationError) -> str:
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        names = ", ".join(f"{where}.{e}" if error.absolute_path else e for e in extra)
        return f"unknown key {names}"
    if error.validator == "oneOf" and error.schema.get("oneOf") and "source" in str(error.schema):
        return f"{where}: give exactly one of 'source' (hub id or path) or 'reference' (trained by the workflow)"
    if error.validator in ("oneOf", "anyOf"):
        options = " or ".join(_brief(sub) for sub in error.validator_value)
        return f"{where}: {error.instance!r} is not valid here; expected {options}"
    return f"{where}: {error.message}"


def validate(config: Mapping[str, Any], base_dir: str | Path | None = None, check_paths: bool = True) -> dict:
    """Validate ``config``, fill defaults, check cross references and dataset paths.

    Returns a new dict; raises ConfigError naming every key at fault.
    """
    cfg = copy.deepcopy(dict(config))
    schema = load_schema()
    errors = sorted(_with_defaults(jsonschema.Draft7Validator, schema)(schema).iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
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
    from .datasets.boxes import file_path

    problems = []
    for name, spec in cfg["datasets"].items():
        try:
            adapter = get_adapter(name, spec, seed=cfg["seed"], base_dir=base_dir)
            problems.extend(adapter.check())
        except AdapterError as exc:
            problems.append(str(exc))
        boxes = file_path(spec["boxes"])  # a hand-made file; boxes made by a model are the boxes stage's output
        if boxes:
            p = Path(boxes).expanduser()
            p = p if p.is_absolute() else base_dir / p
            if not p.is_file():
                key = "boxes" if isinstance(spec["boxes"], str) else "boxes.path"
                problems.append(f"datasets.{name}.{key}: no such file {p}")
    return problems


def load(path: str | Path, check_paths: bool = True, base_dir: str | Path | None = None) -> dict:
    """Load and validate a config file.

    Relative dataset paths resolve against ``base_dir``, by default the working
    directory, as in a Snakemake run started from the repository root.
    """
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return validate(raw, base_dir=Path(base_dir) if base_dir else Path.cwd(), check_paths=check_paths)


def model_datasets(cfg: Mapping[str, Any], model: str) -> list[str]:
    """The datasets a model runs on, in config order."""
    chosen = cfg["models"][model].get("datasets") or []
    return [d for d in cfg["datasets"] if not chosen or d in chosen]
