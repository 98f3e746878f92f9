"""Reference-model specs read from the validated config: the light part the workflow reads while it is parsed.

Nothing here imports torch, transformers or the panels generator, so that the
Snakefile can plan training jobs (which dataset, which model to start from,
how many cores) without loading them.
"""

from __future__ import annotations

from typing import Any, Mapping

from ... import schema

# the behaviours the schema accepts for reference.behaviour (docs/datasets.md describes each)
BEHAVIOURS: tuple[str, ...] = tuple(schema.load_schema()["definitions"]["reference"]["properties"]["behaviour"]["enum"])


# The small Qwen3-VL shape (overridable per model with reference.architecture).
ARCHITECTURE: dict[str, dict[str, Any]] = {
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "deepstack_visual_indexes": [1],
    },
}


class ReferenceSpecError(ValueError):
    """A reference-model spec is unusable; the message names the key."""


def training_spec(spec: Mapping[str, Any], where: str = "reference") -> dict[str, Any]:
    """The reference spec checked against the schema's ``reference`` definition, its defaults filled."""
    try:
        return schema.definition("reference", spec, where=where)
    except schema.ConfigError as exc:
        raise ReferenceSpecError(str(exc)) from None


def model_spec(cfg: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The ``reference`` entry of a model of the validated config; an error for models from a hub/path."""
    spec = cfg["models"][model].get("reference")
    if not spec:
        raise ReferenceSpecError(f"models.{model}: has no 'reference' entry, so reference/{model} cannot be trained")
    return dict(spec)


def training_dataset(cfg: Mapping[str, Any], model: str) -> str:
    """The panels dataset a reference model trains on: ``reference.dataset`` or the first panels dataset."""
    spec = model_spec(cfg, model)
    if spec.get("dataset"):
        return spec["dataset"]
    for name, entry in cfg["datasets"].items():
        if entry["adapter"] == "panels":
            return name
    raise ReferenceSpecError(f"models.{model}.reference: needs a panels dataset in datasets")


def training_options(cfg: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The panels options that shape training images.

    The test set's seed and size are left out, so that resizing the test set
    does not retrain the models (the options are the training rule's params).
    """
    options = dict(cfg["datasets"][training_dataset(cfg, model)].get("options") or {})
    for key in ("seed", "n_items", "counts"):
        options.pop(key, None)
    return options


def init_model(cfg: Mapping[str, Any], model: str) -> str | None:
    """The reference model this one is fine-tuned from (``reference.init_from``), or None."""
    return model_spec(cfg, model).get("init_from") or None


def job_threads(cfg: Mapping[str, Any], model: str) -> int:
    """Cores a training job occupies: torch threads plus batch-building workers."""
    spec = model_spec(cfg, model)
    return int(spec["threads"]) + int(spec["data_workers"])


# reference-entry keys that do not shape the weights: left out where shipped weights are matched to an entry
NOT_FOR_WEIGHTS = ("source", "data_workers")


def training_config(cfg: Mapping[str, Any], model: str) -> dict[str, Any]:
    """Everything a reference model's training reads: the train_reference rule's config param.

    Also what ``shipped/reference/manifest.json`` records for each shipped model
    and what a config that ships it must equal. ``reference.source`` is left
    out: it says where the weights come from, not how they were made.
    """
    spec = {k: v for k, v in model_spec(cfg, model).items() if k != "source"}
    entry = cfg["models"][model]
    return {
        "reference": spec,
        "options": training_options(cfg, model),
        "system_prompt": entry["system_prompt"],
        "thinking": entry["thinking"],
        "seed": cfg["seed"],
    }


def is_shipped(cfg: Mapping[str, Any], model: str) -> bool:
    """True when the model's weights are the shipped ones (``reference.source: shipped``)."""
    spec = cfg["models"][model].get("reference")
    return bool(spec) and spec.get("source", "train") == "shipped"
