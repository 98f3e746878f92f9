"""A model's identity is its content: folder hashes, hub commits, and validation of model sources."""

from __future__ import annotations

import json
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


def counting_full_hashes(monkeypatch) -> list[str]:
    """The files identify() hashes in full from now on (a cache hit reads only the content probe)."""
    hashed = []
    real = identity._sha256

    def counting(path):
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(identity, "_sha256", counting)
    return hashed


def test_file_hashes_are_cached_while_nothing_a_copy_cannot_keep_changed(tmp_path, monkeypatch):
    folder = checkpoint(tmp_path / "m")
    first = identify(folder).revision
    assert (tmp_path / "cache" / "file_hashes.json").is_file()
    hashed = counting_full_hashes(monkeypatch)
    assert identify(folder).revision == first
    assert hashed == []  # read from the cache, not hashed again
    # fresh=True (a job about to resume batches) hashes every file again, whatever the cache says
    assert identify(folder, fresh=True).revision == first
    assert "model.safetensors" in hashed and "config.json" in hashed
    # a rewrite with new bytes and a new mtime: hashed again, new identity
    hashed.clear()
    stat = (folder / "model.safetensors").stat()
    (folder / "model.safetensors").write_bytes(b"weights-9")
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert identify(folder).revision != first
    assert hashed == ["model.safetensors"]


@pytest.mark.parametrize("how", ["copied over", "rewritten in place"])
def test_same_size_weights_with_the_old_mtime_are_another_model(tmp_path, how):
    """What cp -p, rsync -t, tar and container builds do: other bytes of the same size under the old mtime."""
    folder = checkpoint(tmp_path / "m", b"weights-1" * 10000)
    first = identify(folder).revision
    weights = folder / "model.safetensors"
    old = weights.stat()
    new = b"weights-2" * 10000  # same size; differs at both ends and in the middle
    if how == "copied over":  # a new file renamed over the old one: a new inode
        (tmp_path / "new.safetensors").write_bytes(new)
        (tmp_path / "new.safetensors").replace(weights)
    else:  # the same inode, rewritten
        weights.write_bytes(new)
    os.utime(weights, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert weights.stat().st_size == old.st_size and weights.stat().st_mtime_ns == old.st_mtime_ns
    assert identify(folder).revision != first
    assert identify(folder).revision == identify(checkpoint(tmp_path / "other", new)).revision


def test_a_rewrite_the_status_does_not_show_is_caught_by_the_content_probe(tmp_path, monkeypatch):
    # ctime ticks coarsely: a rewrite within one tick keeps every status field; the head and tail bytes differ
    folder = checkpoint(tmp_path / "m", b"a" * 300_000)
    first = identify(folder).revision
    cache_file = tmp_path / "cache" / "file_hashes.json"
    cached = json.loads(cache_file.read_text())
    (folder / "model.safetensors").write_bytes(b"a" * 299_999 + b"b")  # only the last byte differs
    key = str((folder / "model.safetensors").resolve())
    cached[key]["stat"] = identity._stat_key((folder / "model.safetensors").stat())  # as if in the same tick
    cache_file.write_text(json.dumps(cached))
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
