"""The workflow configuration: load, validate against the schema, fill defaults.

Used by the Snakefile at start-up and by anyone calling the package from a
notebook. Every error names the config key at fault, so a typo stops the run
before a single job starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from . import schema
from .models.identity import resolve_path  # noqa: F401 - where it lives: the boxes stage needs it without this module
from .schema import ConfigError

__all__ = ["ConfigError", "analyses_of", "datasets_for", "load", "load_yaml", "model_datasets", "validate"]


def load_yaml(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def validate(config: Mapping[str, Any], base_dir: str | Path | None = None, check_paths: bool = True) -> dict:
    """Validate ``config``, fill defaults, check cross references and dataset paths.

    Returns a new dict; raises ConfigError naming every key at fault.
    """
    cfg = schema.whole(config)
    problems = _cross_check(cfg)
    if check_paths:
        problems += _check_datasets(cfg, Path(base_dir or "."))
        problems += _check_models(cfg, Path(base_dir or "."))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return cfg


def analyses_of(spec: Mapping[str, Any]) -> list[str]:
    """The analyses a dataset entry feeds: its ``analyses``, or every one it can (crm only with masks)."""
    if spec.get("analyses") is not None:
        return list(spec["analyses"])
    every = schema.load_schema()["definitions"]["dataset"]["properties"]["analyses"]["items"]["enum"]
    return [a for a in every if a != "crm" or spec["masks"]]


def datasets_for(cfg: Mapping[str, Any], analysis: str) -> list[str]:
    """The datasets (in config order) that feed ``analysis``."""
    return [d for d, spec in cfg["datasets"].items() if analysis in spec["analyses"]]


def _cross_check(cfg: dict) -> list[str]:
    problems = []
    datasets = cfg["datasets"]
    for name, spec in datasets.items():
        if spec["analyses"] is not None and "crm" in spec["analyses"] and not spec["masks"]:
            problems.append(f"datasets.{name}.analyses: crm needs masked traces (masks: true)")
        spec["analyses"] = analyses_of(spec)  # filled in, so every stage reads the same list
    for name, model in cfg["models"].items():
        if model.get("engine") == "vllm" and not model.get("generate_separately", True):
            problems.append(f"models.{name}.engine: vllm generates in a job of its own; "
                            "generate_separately: false is for the transformers engine")
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


def imported_generations(cfg: Mapping[str, Any], model: str, dataset: str) -> str | None:
    """The imported generations file of (model, dataset) (``models.<m>.generations``), or None."""
    template = cfg["models"][model].get("generations")
    return template.replace("{dataset}", dataset) if template else None


def _check_models(cfg: dict, base_dir: Path) -> list[str]:
    """Every configured model source can be read: a checkpoint folder, or a hub id the local cache (or hub) knows.

    An imported generations file must exist for every dataset the model runs on.
    """
    from .datasets.boxes import MODEL_KINDS, box_kind
    from .models.identity import ModelSourceError, identify

    problems = []
    for name in cfg["models"]:
        for d in model_datasets(cfg, name):
            path = imported_generations(cfg, name, d)
            if path and not Path(resolve_path(path, base_dir)).is_file():
                problems.append(f"models.{name}.generations: no generations file {path} for dataset {d}")
    sources = [(f"models.{name}.source", model) for name, model in cfg["models"].items() if model.get("source")]
    sources += [(f"datasets.{name}.boxes.model.source", spec["boxes"]["model"])  # a grounding model or detector
                for name, spec in cfg["datasets"].items() if box_kind(spec["boxes"]) in MODEL_KINDS]
    for where, model in sources:  # a reference model has no source: trained by the workflow
        try:
            identify(resolve_path(model["source"], base_dir), model["revision"], where=where)
        except ModelSourceError as exc:
            problems.append(str(exc))
    return problems


def notices(cfg: Mapping[str, Any], base_dir: str | Path | None = None) -> list[str]:
    """What a valid config does that its author may not expect, one line each (the workflow prints them).

    Today: ``thinking: true`` on a model whose chat template does not read
    ``enable_thinking``, so that the prompt is the same with thinking on or off
    (the traces store records the prompt the model really got).
    """
    from .models.identity import hub_commit

    out = []
    base = Path(base_dir or ".")
    for name, model in cfg["models"].items():
        if not model.get("thinking") or not model.get("source"):
            continue
        folder = Path(resolve_path(model["source"], base)).expanduser()
        if not folder.is_dir():
            commit = hub_commit(model["source"], model["revision"])
            cached = _hub_snapshot(model["source"], commit) if commit else None
            if cached is None:
                continue
            folder = cached
        template = chat_template_text(folder)
        if template is None:
            out.append(f"models.{name}.thinking: true, but {model['source']} has no chat template to read it")
        elif "enable_thinking" not in template:
            opens = "<think>" in template
            out.append(f"models.{name}.thinking: true, but the chat template of {model['source']} does not read "
                       f"enable_thinking: the prompt is the same with thinking on or off"
                       + (" (the template itself opens a thinking block)" if opens else ""))
    return out


def chat_template_text(folder: Path) -> str | None:
    """The chat template(s) a checkpoint folder ships, as one text (None when it has none)."""
    import json

    texts = []
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        texts.append(jinja.read_text(encoding="utf-8"))
    for name in ("chat_template.json", "tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):  # [{name, template}, ...]
            texts += [t.get("template", "") for t in value if isinstance(t, dict)]
    return "\n".join(texts) if texts else None


def _hub_snapshot(repo_id: str, commit: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=commit)
    return Path(cached).parent if isinstance(cached, str) else None


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
