"""The config schema shipped with the package: the one source of every default, and filling them.

``config.schema.yaml`` (package data, so that it is found wherever the package
is installed) documents every key of the workflow's config with its type and
default. ``peekaboo.config.validate`` checks a whole config against it; the
functions here fill and check one part (a top-level section such as
``collapse``, or a definition such as a model's ``reference`` entry), so that a
notebook user can call a library function with only the keys they want to
change and get the workflow's defaults for the rest, from the same file.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

import jsonschema
import yaml

class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


# package data, so that validation works wherever the package is installed, not only in a checkout
SCHEMA_RESOURCE = "config.schema.yaml"


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files("peekaboo").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _parsed() -> dict:
    # parsed once per process: filling a section or definition is called per fit in some stages
    return yaml.safe_load(_schema_text())


def load_schema() -> dict:
    """The config schema shipped with the package: every key, its type, its default (the one source of defaults).

    A copy of its own for each caller, who may change it.
    """
    return copy.deepcopy(_parsed())


def _local_ref(root: dict, sub: dict) -> dict:
    """Follow ``{"$ref": "#/definitions/x"}`` inside the schema (the only refs it uses)."""
    seen = 0
    while isinstance(sub, dict) and isinstance(sub.get("$ref"), str) and sub["$ref"].startswith("#/") and seen < 16:
        target: Any = root
        for part in sub["$ref"][2:].split("/"):
            target = target[part]
        sub, seen = target, seen + 1
    return sub


def filling_validator(validator_class, root: dict):
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


def describe_error(error: jsonschema.ValidationError, prefix: str = "") -> str:
    where = key_path(([prefix] if prefix else []) + list(error.absolute_path))
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        names = ", ".join(f"{where}.{e}" if error.absolute_path or prefix else e for e in extra)
        return f"unknown key {names}"
    if error.validator == "oneOf" and error.schema.get("oneOf") and "source" in str(error.schema):
        return f"{where}: give exactly one of 'source' (hub id or path) or 'reference' (trained by the workflow)"
    if error.validator in ("oneOf", "anyOf"):
        options = " or ".join(_brief(sub) for sub in error.validator_value)
        return f"{where}: {error.instance!r} is not valid here; expected {options}"
    return f"{where}: {error.message}"


def _validator(root: dict, sub: dict):
    """A default-filling validator for ``sub``, a part of ``root`` whose ``$ref``s point into ``root``."""
    schema = {"definitions": root.get("definitions", {}), **sub}
    return filling_validator(jsonschema.Draft7Validator, root)(schema)


def _fill(sub: dict, values: Mapping[str, Any] | None, where: str) -> dict:
    """A deep copy of ``values`` checked against ``sub``, its absent keys filled with their defaults."""
    out = copy.deepcopy(dict(values or {}))
    errors = sorted(_validator(_parsed(), sub).iter_errors(out), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(describe_error(e, where) for e in errors))
    return out


def whole(config: Mapping[str, Any]) -> dict:
    """A whole config checked against the schema, every absent key filled with its default."""
    return _fill(_parsed(), config, "")


def section(name: str, values: Mapping[str, Any] | None = None) -> dict:
    """Top-level config section ``name`` (``collapse``, ``selective``, ...) with its defaults filled and checked."""
    schema = _parsed()
    try:
        sub = schema["properties"][name]
    except KeyError:
        raise ConfigError(f"unknown config section {name!r}") from None
    return _fill(_local_ref(schema, sub), values, name)


def definition(name: str, values: Mapping[str, Any] | None = None, where: str | None = None) -> dict:
    """A value of the schema's definition ``name`` (``reference``, ``generation``, ...) with defaults filled and checked.

    ``where`` names the value in error messages (e.g. ``models.grounded.reference``).
    """
    schema = _parsed()
    try:
        sub = schema["definitions"][name]
    except KeyError:
        raise ConfigError(f"unknown schema definition {name!r}") from None
    return _fill(sub, values, where or name)


def default(definition_name: str, key: str) -> Any:
    """The schema's default of one key of a definition (``default("model", "batch_size")``)."""
    try:
        return copy.deepcopy(_parsed()["definitions"][definition_name]["properties"][key]["default"])
    except KeyError:
        raise ConfigError(f"the schema has no default for {definition_name}.{key}") from None
