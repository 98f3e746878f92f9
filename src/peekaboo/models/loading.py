"""Load a VLM and its processor by hub id or local path, as a model entry of the config says.

``load_model(spec, path)`` reads the model entry's ``source`` / ``revision``
(or an explicit ``path``, e.g. a trained reference model), ``dtype``,
``attn_implementation``, ``device`` / ``device_map`` / ``max_memory`` and
``trust_remote_code`` (off unless the config turns it on), and returns the
model in eval mode, its processor, its geometry family and a :class:`ModelInfo`
for provenance. With ``HF_HUB_OFFLINE=1`` (or a local directory) nothing is
fetched: transformers reads the variable itself, and local directories are
opened with ``local_files_only``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from .. import geometry
from ..logs import get_logger

log = get_logger("loading")

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names the model and the config key."""


@dataclass
class ModelInfo:
    model_id: str  # hub id or path as configured
    revision: str  # requested revision (hub) or "local"
    commit: str | None  # the resolved commit hash, when the hub cache knows it
    family: str
    dtype: str
    attn_implementation: str
    device: str  # where inputs go (the first device of a device map)
    device_map: Any
    n_layers: int
    n_heads: int
    n_kv_heads: int
    context_length: int

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["device_map"] = None if self.device_map is None else str(self.device_map)
        return out


def resolve_device(device: str | None) -> str:
    """``auto`` -> cuda when available, else cpu; anything else as given."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _torch_dtype(name: str):
    import torch

    if name in (None, "auto"):
        return "auto"
    try:
        return getattr(torch, _DTYPES[name])
    except KeyError:
        raise ModelLoadError(f"dtype: unknown '{name}' (use auto, float32, float16 or bfloat16)") from None


def language_model(model) -> torch.nn.Module:
    """The text decoder of a VLM (``model.model.language_model`` in transformers 5)."""
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is None or not hasattr(lm, "layers"):
        raise ValueError(f"{type(model).__name__}: no language_model with decoder layers found")
    return lm


def load_model(
    spec: Mapping[str, Any],
    path: str | Path | None = None,
    *,
    device: str | None = None,
    name: str = "model",
):
    """(model, processor, family, info) for a model entry of the config.

    ``path`` overrides ``spec["source"]`` (reference models trained by the
    workflow); ``device`` overrides ``spec["device"]`` (the device a job was
    given). ``name`` is the model's name in the config, for error messages.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    source = str(path if path is not None else spec.get("source") or "")
    if not source:
        raise ModelLoadError(f"models.{name}: neither a path nor 'source' to load from")
    local = Path(source).expanduser().is_dir()
    revision = None if local else (spec.get("revision") or "main")
    trust = bool(spec.get("trust_remote_code", False))
    common: dict[str, Any] = {"trust_remote_code": trust}
    if local:
        source = str(Path(source).expanduser())
        common["local_files_only"] = True
    else:
        common["revision"] = revision
        if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0", "false", "False"):
            common["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except Exception as exc:
        raise ModelLoadError(f"models.{name}: cannot read the config of '{source}': {exc}") from exc
    family = spec.get("family") or "auto"
    if family == "auto":
        try:
            family = geometry.family_of(config)
        except geometry.GeometryError as exc:
            raise ModelLoadError(f"models.{name}.family: {exc}") from None
    elif family not in geometry.FAMILY_GEOMETRY:
        raise ModelLoadError(f"models.{name}.family: unknown family '{family}'")

    attn = spec.get("attn_implementation") or "sdpa"
    dtype_name = spec.get("dtype") or "float32"
    kwargs: dict[str, Any] = dict(common, dtype=_torch_dtype(dtype_name), attn_implementation=attn)
    device_map = spec.get("device_map")
    if device_map is not None:
        from ..devices import max_memory_map

        kwargs["device_map"] = device_map
        budget = max_memory_map(spec.get("max_memory"), where=f"models.{name}.max_memory")
        if budget is not None:
            kwargs["max_memory"] = budget
        if spec.get("offload_folder"):
            kwargs["offload_folder"] = spec["offload_folder"]
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(source, **common)
    except Exception as exc:
        raise ModelLoadError(f"models.{name}: cannot load '{source}': {exc}") from exc
    if device_map is None:
        model.to(resolve_device(device or spec.get("device")))
    model.eval()
    text = language_model(model).config
    info = ModelInfo(
        model_id=str(spec.get("source") or source),
        revision="local" if local else str(revision),
        commit=getattr(config, "_commit_hash", None),
        family=family,
        dtype=str(model.dtype).removeprefix("torch."),
        attn_implementation=attn,
        device=str(model.device),
        device_map=getattr(model, "hf_device_map", None) or device_map,
        n_layers=int(text.num_hidden_layers),
        n_heads=int(text.num_attention_heads),
        n_kv_heads=int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads),
        context_length=int(text.max_position_embeddings),
    )
    log.info("loaded %s (%s, family %s, %s, %s attention, device %s)", info.model_id, info.revision, family,
             info.dtype, attn, info.device)
    return model, processor, family, info
