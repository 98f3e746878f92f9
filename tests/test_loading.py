"""Model loading from a config entry: local paths, dtype, attention, device maps, remote code, offline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from peekaboo.models.loading import ModelLoadError, load_model


def test_local_tiny_model_with_settings(tiny_models):
    model, processor, family, info = load_model(
        {"dtype": "bfloat16", "attn_implementation": "eager", "device": "cpu"}, tiny_models["glm46v"], name="g")
    assert family == "glm46v" and type(model).__name__ == "Glm46VForConditionalGeneration"
    assert model.dtype == torch.bfloat16 and not model.training
    assert model.config.text_config._attn_implementation == "eager"
    assert type(processor).__name__ == "Glm46VProcessor"
    assert (info.revision, info.n_layers, info.n_heads, info.n_kv_heads) == ("local", 3, 4, 2)
    assert info.context_length == 4096 and info.dtype == "bfloat16" and info.device == "cpu"


def test_device_map_honours_the_memory_budget(tiny_models, tmp_path):
    spec = {"device_map": "auto", "max_memory": {"cpu": "300KB", "disk": "1GiB"},
            "offload_folder": str(tmp_path / "offload")}
    model, _, _, info = load_model(spec, tiny_models["qwen2_vl"])
    # ~1 MB of float32 weights and a 300 kB CPU budget: the rest must go to disk
    assert set(info.device_map.values()) == {"cpu", "disk"}
    assert model.hf_device_map == info.device_map


def test_remote_code_runs_only_when_the_config_allows_it(tiny_models, tmp_path):
    """A model folder whose config points at custom code: without trust_remote_code that code never runs."""
    path = tmp_path / "custom"
    shutil.copytree(tiny_models["qwen3_vl"], path)
    marker = tmp_path / "remote_code_ran"
    (path / "configuration_custom.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen3VLConfig\n"
        "class CustomConfig(Qwen3VLConfig):\n    model_type = 'custom_vlm'\n"
    )
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="custom_vlm", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="models.custom"):
        load_model({}, path, name="custom")
    assert not marker.exists()
    with pytest.raises(ModelLoadError):  # the custom model type is not a supported family
        load_model({"trust_remote_code": True}, path, name="custom")
    assert marker.read_text() == "ran"


def test_offline_hub_id_fails_fast_with_the_model_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"models\.big: cannot read the config of 'Qwen/Qwen3-VL-8B"):
        load_model({"source": "Qwen/Qwen3-VL-8B-Instruct-not-cached", "revision": "main"}, name="big")


def test_errors_name_the_key(tiny_models, tmp_path):
    with pytest.raises(ModelLoadError, match="models.m: neither a path nor 'source'"):
        load_model({}, name="m")
    with pytest.raises(ModelLoadError, match="models.m.family"):
        load_model({"family": "llava"}, tiny_models["qwen2_vl"], name="m")
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model({"dtype": "int8"}, tiny_models["qwen2_vl"], name="m")
