"""A model's identity is its content: folder hashes, hub commits, and validation of model sources."""

from __future__ import annotations

import os

import pytest

import peekaboo.config as pcfg
from peekaboo.models import identity
from peekaboo.models.identity import ModelSourceError, identify

from fixtures.items import good_record, write_jsonl
from fixtures.workflow import hub_cache


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEEKABOO_CACHE", str(tmp_path / "cache"))


def checkpoint(folder, weights: bytes = b"weights-1"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "qwen3_vl"}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_a_folder_is_identified_by_its_weights_and_config(tmp_path):
    a = identify(checkpoint(tmp_path / "m"))
    assert a.kind == "local" and a.revision.startswith("sha256:")
    # what the training report says does not make another model
    (tmp_path / "m" / "training.json").write_text('{"seconds": 12.5}')
    (tmp_path / "m" / "README.md").write_text("notes")
    assert identify(tmp_path / "m") == a
    # the same files elsewhere are the same model
    assert identify(checkpoint(tmp_path / "copy")).revision == a.revision
    # other weights (even of the same size) are another model; so is another config
    checkpoint(tmp_path / "m", b"weights-2")
    b = identify(tmp_path / "m")
    assert b.revision != a.revision
    (tmp_path / "m" / "config.json").write_text('{"model_type": "qwen3_vl", "rope_theta": 10}')
    assert identify(tmp_path / "m").revision not in (a.revision, b.revision)


def test_file_hashes_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    folder = checkpoint(tmp_path / "m")
    first = identify(folder).revision
    assert (tmp_path / "cache" / "file_hashes.json").is_file()
    opened = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    assert identify(folder).revision == first
    assert not any(p.endswith(".safetensors") for p in opened)  # read from the cache, not hashed again
    # a rewrite with new bytes changes the mtime: hashed again, new identity
    stat = (folder / "model.safetensors").stat()
    (folder / "model.safetensors").write_bytes(b"weights-9")
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert identify(folder).revision != first


def test_a_hub_id_is_identified_by_the_commit_its_revision_resolves_to(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = hub_cache(tmp_path / "hub", "Qwen/Qwen3-VL-2B-Thinking")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = identify("Qwen/Qwen3-VL-2B-Thinking", "main")
    commit = (cache / "models--Qwen--Qwen3-VL-2B-Thinking" / "refs" / "main").read_text()
    assert found.kind == "hub" and found.revision == commit
    pinned = "0123456789abcdef0123456789abcdef01234567"
    assert identify("Qwen/Qwen3-VL-2B-Thinking", pinned).revision == pinned
    with pytest.raises(ModelSourceError, match=r"models\.x\.source: 'Qwen/Qwen3-VL-8B-Thinking' is neither"):
        identify("Qwen/Qwen3-VL-8B-Thinking", "main", where="models.x.source")


def test_unreadable_sources_name_the_key(tmp_path):
    with pytest.raises(ModelSourceError, match=r"models\.m: no model folder at .*gone"):
        identify(str(tmp_path / "gone"), where="models.m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="without a config.json"):
        identify(tmp_path / "empty", where="models.m")


def test_validation_fails_on_a_model_source_that_cannot_be_read(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [good_record("a")])
    raw = {
        "datasets": {"d": {"adapter": "jsonl", "options": {"path": "d.jsonl"}}},
        "models": {"local": {"source": "models/missing"}, "hub": {"source": "nobody/no-such-model"},
                   "ok": {"source": "models/ok"}},
    }
    checkpoint(tmp_path / "models" / "ok")
    with pytest.raises(pcfg.ConfigError) as err:
        pcfg.validate(raw, base_dir=tmp_path)
    text = str(err.value)
    assert "models.local.source: 'models/missing' is neither a model folder nor a hub id" in text
    assert "models.hub.source: 'nobody/no-such-model'" in text
    assert "models.ok" not in text


def test_the_identity_records_what_it_is(tmp_path):
    found = identify(checkpoint(tmp_path / "m"))
    assert found.as_dict() == {"source": str(tmp_path / "m"), "kind": "local", "revision": found.revision}
    assert identity.model_files(tmp_path / "m")[0].name == "config.json"
