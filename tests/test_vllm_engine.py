"""vLLM itself (not the stand-in): the generate stage with engine: vllm on a tiny Qwen3-VL, against transformers.

Needs vLLM's environment, `scripts/setup_env.sh --engine vllm` (.venv-vllm; about 3 minutes and 3.5 GB with
the CPU build): without it every test here is skipped with the reason. Run them alone with
`pytest -m vllm`. vLLM's CPU attention takes text head sizes of 32 to 512, so the tiny model here has a head
size of 32 (the other tests' tiny models have 16). float32 on both engines, greedy.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from peekaboo import tables

REPO = Path(__file__).resolve().parents[1]
PYTHON = Path(os.environ.get("PEEKABOO_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))


def _vllm_missing() -> str | None:
    if not PYTHON.exists():
        return f"no vLLM environment at {PYTHON} (scripts/setup_env.sh --engine vllm makes it)"
    proc = subprocess.run([str(PYTHON), "-I", "-c", "import vllm"], capture_output=True, text=True, timeout=600)
    if proc.returncode:
        return f"vLLM does not import in {PYTHON}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


pytestmark = [pytest.mark.vllm, pytest.mark.skipif(bool(_vllm_missing()), reason=_vllm_missing() or "")]


@pytest.fixture(scope="module")
def servable_tiny(tmp_path_factory):
    from peekaboo.models.tiny import build_tiny

    return build_tiny("qwen3_vl", tmp_path_factory.mktemp("tiny-vllm") / "qwen3-vl-h32", seed=0,
                      text={"hidden_size": 128})


def test_vllm_greedy_ids_equal_transformers_and_replay_to_the_same_traces(tiny_shard, servable_tiny, tmp_path,
                                                                          monkeypatch):
    import torch
    import xarray as xr

    from fixtures.models import load
    from peekaboo.generate import GenerationSettings, TraceGenerator, shard_requests
    from test_engines import generate_vllm, trace
    import test_tracestore

    torch.set_num_threads(1)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU: the tiny model needs little
    spec = test_tracestore.validated_model(dtype="float32", batch_size=2, generation={"max_new_tokens": 24},
                                           engine="vllm", vllm={"python": str(PYTHON), "max_model_len": 2048,
                                                                "max_num_seqs": 8})
    models = {"qwen3_vl": servable_tiny}
    path = generate_vllm(tiny_shard, models, tmp_path / "vllm", spec)
    lines = {x["id"]: x for x in map(json.loads, path.read_text().splitlines())}
    assert lines and all("error" not in x for x in lines.values()), [x.get("error") for x in lines.values()]
    # transformers' greedy ids for the same requests, one at a time
    model, processor = load(servable_tiny)
    items, masks = tables.read_table(tiny_shard["items"]), tables.read_table(tiny_shard["masks"])
    requests = shard_requests(items, masks, 0, 2, "tiny", "toy", tiny_shard["results"])
    gen = TraceGenerator(model, processor, "qwen3_vl", GenerationSettings(max_new_tokens=24))
    ours = {g.id: g for r in requests for g in gen.generate_ids([r])}
    equal = [rid for rid in lines if tuple(lines[rid]["token_ids"]) == ours[rid].token_ids]
    print(f"vLLM greedy ids equal to transformers': {len(equal)} of {len(lines)}")
    assert len(equal) == len(lines), {rid: (lines[rid]["token_ids"], ours[rid].token_ids) for rid in lines
                                      if rid not in equal}
    # and the replay of vLLM's generations equals the transformers engine's traces
    monkeypatch.setattr(test_tracestore, "MODEL_SPEC", {**test_tracestore.MODEL_SPEC,
                                                        "generation": {**test_tracestore.MODEL_SPEC["generation"],
                                                                       "max_new_tokens": 24}})
    own_store, _ = trace(models, tiny_shard, tmp_path / "own")
    v_store, v_sidecar = trace(models, tiny_shard, tmp_path / "replayed", generations_path=path)
    side = tables.read_table(v_sidecar)
    assert (side["status"] == "ok").all()
    print(f"largest |replay - vLLM| log-probability: {side['engine_logprob_diff'].max():.2e}")
    assert (side["engine_logprob_diff"] < 1e-3).all()
    a, b = xr.open_zarr(own_store), xr.open_zarr(v_store)
    for name in ("token_id", "logprob", "image_attn", "region_mass"):
        np.testing.assert_allclose(np.asarray(a[name]), np.asarray(b[name]), atol=1e-5, err_msg=name)


def run_batch(requests: Path, out: Path, model: Path, *extra: str) -> Path:
    """vLLM's batch runner on a requests file, as a user runs it (float32, the tiny model's context). Through its
    module: vllm-cpu's `vllm` command looks for the distribution `vllm` and fails (PackageNotFoundError)."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([str(PYTHON), "-m", "vllm.entrypoints.openai.run_batch", "-i", str(requests), "-o", str(out),
                           "--model", str(model), "--dtype", "float32", "--max-model-len", "2048", *extra],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_vllm_run_batch_on_the_requests_file_imports_as_it_is_and_a_drifted_template_is_caught(
        tiny_shard, servable_tiny, tmp_path, monkeypatch):
    """The requests target's file through `vllm run_batch` itself: every line accepted, the output imported as it
    is, replayed to the transformers engine's traces; run with another chat template (--chat-template), every
    trace fails by the prompt check."""
    import xarray as xr

    from peekaboo import schema
    from peekaboo.engines import write_batch_requests
    from peekaboo.generate import shard_requests
    from test_engines import trace
    import test_tracestore

    items, masks = tables.read_table(tiny_shard["items"]), tables.read_table(tiny_shard["masks"])
    requests = shard_requests(items, masks, 0, 2, "tiny", "toy", tiny_shard["results"])
    path = write_batch_requests(requests, tmp_path / "requests.jsonl", model=str(servable_tiny),
                                settings=schema.definition("generation", {"max_new_tokens": 24}), thinking=False,
                                system_prompt=None)
    out = run_batch(path, tmp_path / "out.jsonl", servable_tiny)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["response"]["status_code"] for x in lines] == [200] * len(requests)
    monkeypatch.setattr(test_tracestore, "MODEL_SPEC", {**test_tracestore.MODEL_SPEC,
                                                        "generation": {**test_tracestore.MODEL_SPEC["generation"],
                                                                       "max_new_tokens": 24}})
    models = {"qwen3_vl": servable_tiny}
    own_store, _ = trace(models, tiny_shard, tmp_path / "own")
    v_store, v_sidecar = trace(models, tiny_shard, tmp_path / "imported", generations_path=out)
    side = tables.read_table(v_sidecar)
    assert (side["status"] == "ok").all(), side["error"].tolist()
    print(f"run_batch: largest |replay - vLLM| log-probability: {side['engine_logprob_diff'].max():.2e}")
    assert (side["engine_logprob_diff"] < 1e-3).all()
    a, b = xr.open_zarr(own_store), xr.open_zarr(v_store)
    for name in ("token_id", "logprob", "image_attn", "region_mass"):
        np.testing.assert_allclose(np.asarray(a[name]), np.asarray(b[name]), atol=1e-5, err_msg=name)
    # a template read from another file: the model's, with a system turn it does not have
    drifted = tmp_path / "drifted.jinja"
    drifted.write_text("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                       + (Path(servable_tiny) / "chat_template.jinja").read_text())
    out = run_batch(path, tmp_path / "drifted.jsonl", servable_tiny, "--chat-template", str(drifted))
    _, d_sidecar = trace(models, tiny_shard, tmp_path / "drifted", generations_path=out)
    side = tables.read_table(d_sidecar)
    assert (side["status"] == "failed").all()
    # the system turn's first letter against the user turn's, right after <|im_start|>
    assert side["error"].str.match(r"prompt check: the engine's prompt differs from the processor's at token 1: "
                                   r"engine \d+ 's', processor \d+ 'u' \(engine \d+ tokens, processor \d+\)$").all()


def test_a_model_the_cpu_kernels_cannot_serve_fails_the_job_with_vllms_root_cause(tiny_shard, tmp_path, monkeypatch):
    """The tiny Qwen3-VL of head size 16 (the reference models' head size): vLLM's CPU build starts it and dies at
    the first step; the generate job fails naming the model and the root cause, instead of writing a
    generations file of dead-engine errors."""
    from peekaboo.engines import EngineError
    from peekaboo.models.tiny import build_tiny
    from test_engines import generate_vllm
    import test_tracestore

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model = build_tiny("qwen3_vl", tmp_path / "h16", seed=0)
    spec = test_tracestore.validated_model(dtype="float32", engine="vllm",
                                           vllm={"python": str(PYTHON), "max_model_len": 1024})
    with pytest.raises(EngineError, match=r"models\.tiny: vLLM could not run .*h16: the engine died while "
                                          r"generating: EngineDeadError.*\(root cause: Unsupported CPU attention "
                                          r"configuration: head_dim=16"):
        generate_vllm(tiny_shard, {"qwen3_vl": model}, tmp_path / "gen", spec)
    assert not (tmp_path / "gen" / "shard-0.generations.jsonl").exists()
