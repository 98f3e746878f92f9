"""The shard store: xarray-readable layout, sidecar, failed traces, resume after a kill."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from peekaboo import config as configuration
from peekaboo import generate, trace_replay, traces, tracestore


def validated_model(**entry) -> dict:
    """A model entry with the schema's defaults filled, as the workflow hands it to the stage."""
    cfg = {"datasets": {"toy": {"adapter": "jsonl", "options": {"path": "unused.jsonl"}}},
           "models": {"tiny": {"source": "unused", **entry}}}
    return configuration.validate(cfg, check_paths=False)["models"]["tiny"]


MODEL_SPEC = validated_model(dtype="float32", batch_size=2, generation={"max_new_tokens": 5})
TRACES_CFG = {"map_layers": [0, -1], "keep_heads": False, "chunk_traces": 2, "compression_level": 3}


def run(tiny_models, shard_info, out: Path, traces_cfg=TRACES_CFG, shard: int = 0, model_path=None,
        **extra):
    return traces.trace_shard(**shard_args(tiny_models, shard_info, traces_cfg, shard, model_path),
                              store_path=out / f"shard-{shard}.zarr", sidecar_path=out / f"shard-{shard}.parquet",
                              config_section={"traces": traces_cfg, "model": MODEL_SPEC}, code_files=None, **extra)


def shard_args(tiny_models, shard_info, traces_cfg=TRACES_CFG, shard: int = 0, model_path=None) -> dict:
    return dict(items_path=shard_info["items"], masks_path=shard_info["masks"], results_dir=shard_info["results"],
                model_name="tiny", model_spec={**MODEL_SPEC, "source": str(model_path or tiny_models["qwen3_vl"])},
                model_path=model_path or tiny_models["qwen3_vl"], dataset="toy",
                dataset_spec=shard_info["spec"], shard=shard, traces_cfg=traces_cfg, device="cpu")


def generation_args(tiny_models, shard_info, shard: int = 0, model_path=None) -> dict:
    """``shard_args`` as generating alone takes them (``generate.setup_shard``: nothing of the traces section)."""
    args = shard_args(tiny_models, shard_info, shard=shard, model_path=model_path)
    del args["traces_cfg"]
    return args


def generator_class(method: str) -> type:
    """The class whose ``method`` a job calls: the replay's (traces stage) or the generation's (generate stage)."""
    return trace_replay.TraceReplayer if method in ("generate", "replay") else generate.TraceGenerator


def kill_on_second_batch(monkeypatch, method: str) -> dict:
    """The job is killed (KeyboardInterrupt) when ``<generator class>.<method>`` is called for the second batch.

    Returns the call counter (``n``; set it past 2 to let a re-run go on) and the ``real`` method.
    """
    real = getattr(generator_class(method), method)
    calls = {"n": 0, "real": real}

    def dies_on_second_batch(self, requests):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("job killed")  # what a SIGINT/kill does to the running batch
        return real(self, requests)

    monkeypatch.setattr(generator_class(method), method, dies_on_second_batch)
    return calls


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_store_layout_and_sidecar(tiny_models, tiny_shard, tmp_path):
    store, sidecar = run(tiny_models, tiny_shard, tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plain open_zarr finds consolidated metadata, no fallback
        ds = xr.open_zarr(store)
    side = tracestore.read_sidecars([sidecar])
    # shard 0 = items q0, q1 (shard_size 2), each base + drop:0 + drop:1
    assert list(side["item_id"]) == ["q0"] * 3 + ["q1"] * 3
    assert list(side["variant"]) == ["base", "drop:0", "drop:1"] * 2
    assert list(side["trace_index"]) == list(range(6))
    assert list(ds["trace_id"].values) == list(side["trace_id"])
    assert side["trace_id"][0] == "tiny|q0|base|none"
    assert set(ds.sizes) == {"trace", "token", "layer", "map_layer", "head", "patch", "region", "box"}
    assert ds.sizes["layer"] == 3 and ds.sizes["head"] == 4 and ds.sizes["region"] == 2
    assert list(ds["map_layer"].values) == [0, 2]
    assert ds["image_attn"].dims == ("trace", "token", "map_layer", "patch")
    assert ds["image_attn"].dtype == np.float16 and ds["token_id"].dtype == np.int32
    assert ds.attrs["model_id"] and ds.attrs["family"] == "qwen3_vl" and ds.attrs["map_layers"] == [0, 2]
    assert "config_hash" in ds.attrs and "generation" in ds.attrs
    for t in range(6):
        n, p = int(ds["n_tokens"][t]), int(ds["n_patches"][t])
        assert n == side["n_tokens"][t] and 1 <= n <= 5
        assert (ds["token_id"][t, :n] >= 0).all() and (ds["token_id"][t, n:] == -1).all()
        assert np.isfinite(ds["entropy"][t, :n]).all() and np.isnan(ds["entropy"][t, n:]).all()
        assert len(side["token_char_end"][t]) == n
        # attention over image tokens is a part of a probability distribution
        mass = ds["image_mass"][t, :n].values.astype(np.float32)
        assert ((mass > 0) & (mass <= 1.001)).all()
        attn = ds["image_attn"][t, :n, :, :p].values.astype(np.float32)
        np.testing.assert_allclose(attn.sum(-1), mass[:, [0, 2]].mean(-1), rtol=2e-2, atol=1e-3)
        boxes = ds["patch_box"][t, :p].values
        assert (boxes[:, 2] > boxes[:, 0]).all() and np.isnan(ds["patch_box"][t, p:].values).all()
    assert (side["status"] == "ok").all()
    assert not (store.parent / "shard-0.partial").exists()


def test_failed_image_is_recorded_and_shard_goes_on(tiny_models, tiny_shard, tmp_path):
    masks = tracestore.tables.read_table(tiny_shard["masks"])
    broken = masks.loc[masks["mask_id"] == "q0|drop:1|gray", "image"].iloc[0]
    (tiny_shard["results"] / broken).write_bytes(b"not a png")
    _, sidecar = run(tiny_models, tiny_shard, tmp_path / "out")
    side = tracestore.read_sidecars(sidecar).set_index("mask_id")
    assert side.loc["q0|drop:1|gray", "status"] == "failed"
    assert "could not be loaded" in side.loc["q0|drop:1|gray", "error"]
    assert side.loc["q0|drop:1|gray", "n_tokens"] == 0
    assert (side.drop(index="q0|drop:1|gray")["status"] == "ok").all()


def test_resume_after_kill_gives_identical_store(tiny_models, tiny_shard, tmp_path, monkeypatch):
    clean_store, clean_side = run(tiny_models, tiny_shard, tmp_path / "clean")

    calls = kill_on_second_batch(monkeypatch, "generate")
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_models, tiny_shard, out)
    partial = out / "shard-0.partial"
    assert sorted(p.name for p in partial.glob("batch-*.json")) == ["batch-00000.json"]
    assert not (out / "shard-0.zarr").exists()

    calls["n"] = 10  # the re-run must only generate the two unfinished batches
    store, side = run(tiny_models, tiny_shard, out)
    assert calls["n"] == 12
    assert not partial.exists()
    assert tree(store) == tree(clean_store)
    a, b = xr.open_zarr(store), xr.open_zarr(clean_store)
    xr.testing.assert_identical(a.load(), b.load())
    assert tracestore.read_sidecars(side).equals(tracestore.read_sidecars(clean_side))


def test_resume_with_other_weights_discards_the_stale_batches(tiny_models, tiny_shard, tmp_path, monkeypatch,
                                                              caplog):
    """Retrained (or replaced) weights at the same path: the batches of the old model must not be resumed."""
    import shutil

    from peekaboo.models.tiny import build_tiny

    monkeypatch.setenv("PEEKABOO_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_models["qwen3_vl"], model)
    calls = kill_on_second_batch(monkeypatch, "generate")
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_models, tiny_shard, out, model_path=model)
    assert (out / "shard-0.partial" / "batch-00000.json").is_file()

    build_tiny("qwen3_vl", model, seed=1)  # the model is retrained: new weights at the same path
    calls["n"] = 10
    with caplog.at_level("INFO", logger="peekaboo"):
        store, side = run(tiny_models, tiny_shard, out, model_path=model)
    assert calls["n"] == 13  # every batch generated again with the new weights, none resumed
    assert "different model (other weights)" in caplog.text
    monkeypatch.setattr(trace_replay.TraceReplayer, "generate", calls["real"])
    clean_store, clean_side = run(tiny_models, tiny_shard, tmp_path / "clean", model_path=model)
    assert tree(store) == tree(clean_store)
    assert xr.open_zarr(store).attrs["model_revision"] == xr.open_zarr(clean_store).attrs["model_revision"]
    assert xr.open_zarr(store).attrs["model_revision"].startswith("sha256:")


def test_a_partial_folder_without_a_plan_says_so(tmp_path, caplog):
    # a disk that filled up while the first run wrote its plan: only the temporary file is there
    partial = tmp_path / "shard-0.partial"
    partial.mkdir()
    (partial / "plan.json.tmp").write_text('{"pl')
    writer = tracestore.ShardWriter(tmp_path / "shard-0.zarr", tmp_path / "shard-0.parquet", [["a"]],
                                    n_layers=1, n_heads=1, map_layers=[0])
    with caplog.at_level("INFO", logger="peekaboo"):
        assert writer.start() == set()
    assert "holds no plan" in caplog.text and "different" not in caplog.text
    assert (partial / "plan.json").is_file()


def test_stale_partial_from_other_config_is_discarded(tiny_models, tiny_shard, tmp_path):
    out = tmp_path / "out"
    partial = out / "shard-0.partial"
    partial.mkdir(parents=True)
    (partial / "plan.json").write_text("{}")
    (partial / "batch-00000.json").write_text("[]")
    (partial / "batch-00000.npz").write_bytes(b"")
    _, side = run(tiny_models, tiny_shard, out)
    assert len(tracestore.read_sidecars(side)) == 6


def test_open_traces_pads_and_concatenates_shards(tiny_models, tiny_shard, tmp_path):
    out = tmp_path / "out"
    s0, c0 = run(tiny_models, tiny_shard, out, shard=0)
    s1, c1 = run(tiny_models, tiny_shard, out, shard=1)  # item q2 only
    ds = tracestore.open_traces([s0, s1])
    side = tracestore.read_sidecars([c0, c1])
    assert ds.sizes["trace"] == 9 == len(side)
    assert list(ds["trace_id"].values) == list(side["trace_id"])
    one = xr.open_zarr(s1)
    n = int(one["n_patches"][0])
    np.testing.assert_array_equal(ds["patch_box"][6, :n].values, one["patch_box"][0, :n].values)
    assert (ds["token_id"].values[6:, one.sizes["token"]:] == -1).all()
    assert ds["token_id"].dtype == np.int32


def test_empty_shard_writes_an_empty_store(tiny_models, tiny_shard, tmp_path):
    store, side = run(tiny_models, tiny_shard, tmp_path / "out", shard=5)
    ds = xr.open_zarr(store)
    assert ds.sizes["trace"] == 0
    assert len(tracestore.read_sidecars(side)) == 0


def test_imported_own_token_ids_give_the_same_store(tiny_models, tiny_shard, tmp_path):
    """The project's own generation path writes a generations file (the import format); replaying that file
    gives the store that generating and replaying in one run gives: the same arrays and sidecar, byte for
    byte, a trace whose image cannot be read included. Only the store's attribute naming where the tokens
    came from differs."""
    masks = tracestore.tables.read_table(tiny_shard["masks"])
    broken = masks.loc[masks["mask_id"] == "q1|drop:0|gray", "image"].iloc[0]
    (tiny_shard["results"] / broken).write_bytes(b"not a png")
    store, sidecar = run(tiny_models, tiny_shard, tmp_path / "generated")
    setup = generate.setup_shard(**generation_args(tiny_models, tiny_shard))
    generations = generate.generate_shard(setup, tmp_path / "gens" / "shard-0.jsonl")
    lines = [json.loads(line) for line in generations.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == [r.generation_id for r in setup.requests]  # shard order
    assert lines[0]["id"] == "q0|base|none" and len(lines[0]["token_ids"]) == 5
    assert set(lines[0]) == {"id", "token_ids", "text", "finish_reason", "retries"}
    failed = next(line for line in lines if line["id"] == "q1|drop:0|gray")
    assert set(failed) == {"id", "error", "retries"} and "could not be loaded" in failed["error"]
    imported, imported_side = run(tiny_models, tiny_shard, tmp_path / "imported", generations_path=generations)
    a, b = tree(store), tree(imported)
    assert a.keys() == b.keys()
    assert {k for k in a if a[k] != b[k]} == {"zarr.json"}  # the root metadata, with the attributes
    assert sidecar.read_bytes() == imported_side.read_bytes()
    side = tracestore.read_sidecars(imported_side).set_index("mask_id")
    assert side.loc["q1|drop:0|gray", "status"] == "failed" and (side["status"] == "ok").sum() == 5
    x, y = xr.open_zarr(store), xr.open_zarr(imported)
    assert x.attrs.pop("generations") == "generated"
    assert y.attrs.pop("generations").startswith("from file: shard-0.jsonl (sha256 ")
    xr.testing.assert_identical(x.load(), y.load())


def test_text_import_and_bad_lines(tiny_models, tiny_shard, tmp_path):
    """Generations from other engines' formats: a text is replayed in the model tokenizer's tokens; bad
    lines fail their trace with the reason or are reported, and the rest of the shard goes on."""
    from peekaboo.models.loading import load_model

    _, processor, _, _ = load_model(MODEL_SPEC, tiny_models["qwen3_vl"], device="cpu")
    tok = processor.tokenizer
    text = "Step 1: the square is red.\nAnswer: A"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    path = tmp_path / "engine.jsonl"
    lines = [
        json.dumps({"id": "batch_req_1", "custom_id": "q0|base|none", "error": None,
                    "response": {"status_code": 200, "body": {"choices": [
                        {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}}}),
        json.dumps({"request_id": "q0|drop:0|gray",
                    "outputs": [{"text": text, "token_ids": ids, "finish_reason": "stop"}]}),
        json.dumps({"id": "q0|drop:1|gray", "text": ""}),
        json.dumps({"id": "q1|base|none", "output_ids": ids[:4], "meta_info": {"finish_reason": {"type": "length"}}}),
        json.dumps({"id": "q1|drop:0|gray", "text": "a" * 5000}),  # longer than the model's context of 4096
        json.dumps({"id": "zz|base|none", "text": "unknown item"}),
        json.dumps({"id": "q2|base|none", "text": "another shard's"}),
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "q1|drop:1|gray", "text": "\xff"}\n')
    store, sidecar = run(tiny_models, tiny_shard, tmp_path / "out", generations_path=path)
    side = tracestore.read_sidecars(sidecar).set_index("mask_id")
    ds = xr.open_zarr(store)
    ok = side[side["status"] == "ok"]
    assert list(ok.index) == ["q0|base|none", "q0|drop:0|gray", "q1|base|none"]
    t = list(ds["trace_id"].values).index("tiny|q0|base|none")
    assert ds["token_id"][t, :int(ds["n_tokens"][t])].values.tolist() == ids[:-1]  # the text's own tokens
    assert side.loc["q0|base|none", "text"] == text and not side.loc["q0|base|none", "truncated"]
    assert side.loc["q0|drop:0|gray", "n_tokens"] == len(ids) and side.loc["q0|drop:0|gray", "text"] == text
    assert side.loc["q1|base|none", "n_tokens"] == 4 and side.loc["q1|base|none", "truncated"]
    assert side.loc["q0|base|none", "answer_text"] == "A" and side.loc["q0|base|none", "correct"]
    assert "empty text" in side.loc["q0|drop:1|gray", "error"]
    assert "does not fit the model's context of 4096" in side.loc["q1|drop:0|gray", "error"]
    assert side.loc["q1|drop:1|gray", "error"].startswith("line 8: not valid UTF-8")
    assert (ds["n_tokens"].values[[list(ds["trace_id"].values).index(f"tiny|{m}")
                                    for m in side.index[side["status"] == "failed"]]] == 0).all()


def test_generations_file_resumes_after_kill(tiny_models, tiny_shard, tmp_path, monkeypatch):
    setup = generate.setup_shard(**generation_args(tiny_models, tiny_shard))
    clean = generate.generate_shard(setup, tmp_path / "clean" / "shard-0.jsonl").read_bytes()
    calls = kill_on_second_batch(monkeypatch, "generate_ids")
    path = tmp_path / "resumed" / "shard-0.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate.generate_shard(setup, path)
    assert not path.exists() and (path.parent / "shard-0.jsonl.partial" / "batch-00000.jsonl").is_file()
    calls["n"] = 10  # the re-run generates only the two unfinished batches
    assert generate.generate_shard(setup, path).read_bytes() == clean and calls["n"] == 12
    assert not (path.parent / "shard-0.jsonl.partial").exists()


def same_size_weights_under_the_old_mtime(model: Path, scratch: Path) -> None:
    """Replace ``model``'s weights by other weights of the same size and put the old mtime back (cp -p, rsync -t).

    A copy cannot keep the ctime; the weights are rewritten in place (the same inode), as ``cp -p`` onto an
    existing file does.
    """
    from peekaboo.models.tiny import build_tiny

    other = build_tiny("qwen3_vl", scratch, seed=1)
    for new in sorted(Path(other).glob("*.safetensors")):
        target = model / new.name
        old = target.stat()
        data = new.read_bytes()
        assert len(data) == old.st_size and data != target.read_bytes()
        target.write_bytes(data)
        os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
        assert target.stat().st_size == old.st_size and target.stat().st_mtime_ns == old.st_mtime_ns


def test_traces_resume_refuses_same_size_weights_under_the_old_mtime(tiny_models, tiny_shard, tmp_path, monkeypatch,
                                                                      caplog):
    """The issue's scenario for the traces stage: the weights are replaced as a copy keeping size and mtime does."""
    import shutil

    from peekaboo.models.identity import identify

    monkeypatch.setenv("PEEKABOO_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_models["qwen3_vl"], model)
    before = identify(model).revision
    calls = kill_on_second_batch(monkeypatch, "generate")
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_models, tiny_shard, out, model_path=model)
    assert (out / "shard-0.partial" / "batch-00000.json").is_file()

    same_size_weights_under_the_old_mtime(model, tmp_path / "other")
    calls["n"] = 10
    with caplog.at_level("INFO", logger="peekaboo"):
        store, _ = run(tiny_models, tiny_shard, out, model_path=model)
    assert calls["n"] == 13  # every batch generated again with the new weights, none resumed
    now = identify(model, fresh=True).revision
    assert now != before
    assert (f"not resuming shard-0.zarr, discarding {out / 'shard-0.partial'}: its batches were made with a "
            f"different model (other weights): recorded {before}, the weights now are {now}") in caplog.text
    assert "already finished" not in caplog.text
    assert xr.open_zarr(store).attrs["model_revision"] == now


def test_generate_resume_refuses_same_size_weights_under_the_old_mtime(tiny_models, tiny_shard, tmp_path,
                                                                        monkeypatch, caplog):
    """The issue's scenario for the generate stage (its run_stage, as the rule calls it): no line of the old
    weights is kept; the file is the one the new weights give from scratch."""
    import shutil

    from peekaboo import generating
    from peekaboo.stage import StageCall

    monkeypatch.setenv("PEEKABOO_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_models["qwen3_vl"], model)

    def call(path: Path) -> StageCall:
        return StageCall(
            inputs={"model": [], "items_table": [str(tiny_shard["items"])], "masks_table": [str(tiny_shard["masks"])]},
            outputs={"generations": str(path)},
            config={"model": {**MODEL_SPEC, "source": str(model)}, "dataset": tiny_shard["spec"]},
            results_dir=tiny_shard["results"], wildcards={"m": "tiny", "d": "toy", "i": "0"},
            resources={"gpu": 0})

    calls = kill_on_second_batch(monkeypatch, "generate_ids")
    path = tmp_path / "resumed" / "shard-0.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generating.run_stage(call(path))
    assert (path.parent / "shard-0.jsonl.partial" / "batch-00000.jsonl").is_file()

    same_size_weights_under_the_old_mtime(model, tmp_path / "other")
    calls["n"] = 10
    with caplog.at_level("INFO", logger="peekaboo"):
        generating.run_stage(call(path))
    assert calls["n"] == 13  # all three batches generated again
    assert "not resuming shard-0.jsonl" in caplog.text and "different model (other weights)" in caplog.text
    monkeypatch.setattr(generate.TraceGenerator, "generate_ids", calls["real"])
    clean = tmp_path / "clean" / "shard-0.jsonl"
    generating.run_stage(call(clean))
    assert path.read_bytes() == clean.read_bytes()


def test_a_resume_with_the_same_weights_hashes_them_anew_and_keeps_its_batches(tiny_models, tiny_shard, tmp_path,
                                                                                monkeypatch):
    from peekaboo.models import identity

    monkeypatch.setenv("PEEKABOO_CACHE", str(tmp_path / "cache"))
    calls = kill_on_second_batch(monkeypatch, "generate")
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_models, tiny_shard, out)
    hashed = []
    real = identity._sha256
    monkeypatch.setattr(identity, "_sha256", lambda p: hashed.append(p.name) or real(p))
    calls["n"] = 10
    run(tiny_models, tiny_shard, out)
    assert calls["n"] == 12  # the finished batch kept
    assert any(name.endswith(".safetensors") for name in hashed)  # the cache was not trusted for the resume
