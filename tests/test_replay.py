"""Teacher-forced replay on every tiny family: equal to eager attention and to the generation's own scores.

The replay once also equalled decode-time capture (the Recorder it replaced,
removed since): every array, every family, batched and unbatched, to 2.9e-6 in
float32 (commit "replay: teacher-forced capture in one forward pass").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures.models import full_length, load
from fixtures.models import sample_requests as requests
from peekaboo import capture, replay
from peekaboo.generate import GenerationSettings, TraceGenerator
from peekaboo.trace_replay import TraceReplayer
from peekaboo.models.tiny import FAMILIES

N_NEW = 6


def replay_of(gen: TraceGenerator, reqs, generated, chunk_mb=1024.0, map_layers="all", keep_heads=True):
    """Replay ``generated`` (token ids per request) with the generator's prompts and batching."""
    prepared = [gen.prepare(r) for r in reqs]
    batch, offsets = gen.collate(prepared)
    images = capture.BatchImages.from_rows([p.images.positions + off for p, off in zip(prepared, offsets)],
                                           [p.weights for p in prepared])
    rb = replay.replay_inputs(batch, generated, gen.pad_id, images)
    return replay.Replayer(gen.model, map_layers, keep_heads, chunk_mb=chunk_mb).run(rb), prepared, offsets


def eager_generation(eager, gen: TraceGenerator, reqs):
    """Eager generation with output_attentions and output_logits: per step, per layer, the attention row
    that produced the step's token [B, H, K], and the raw logits [B, steps, V]."""
    batch, _ = gen.collate([gen.prepare(r) for r in reqs])
    with torch.no_grad():
        out = eager.generate(**batch, max_new_tokens=N_NEW, do_sample=False, output_attentions=True,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=gen.pad_id,
                             eos_token_id=sorted(gen.eos_ids), temperature=None, top_p=None, top_k=None)
    rows = [[layer[:, :, -1, :] for layer in step] for step in out.attentions]
    return out.sequences[:, batch["input_ids"].shape[1]:], rows, torch.stack(out.logits, 1)


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
@pytest.mark.parametrize("family", FAMILIES)
def test_replay_equals_eager_attention_and_generation_scores(family, batched, tiny_models, sample_images):
    """Every layer's recorded rows against eager ``output_attentions=True`` during generation, and entropy and
    log-probability against the generation's raw logits, in float32 to 1e-4. Batched: the prompts are
    left-padded, and the second row's chain is replayed two tokens shorter, so its rows are padded on the
    right. Chunks of one query row (attention and LM head), so that chunking is exercised."""
    torch.set_num_threads(1)
    model, processor = load(tiny_models[family], "sdpa")
    eager, _ = load(tiny_models[family], "eager")
    full_length(model, processor)
    full_length(eager, processor)
    reqs = requests(sample_images, batched)
    gen = TraceGenerator(model, processor, family, GenerationSettings(max_new_tokens=N_NEW))
    tokens, rows, logits = eager_generation(eager, gen, reqs)
    plain = gen.generate_ids(reqs)  # SDPA generation chooses the same tokens as eager in float32
    for b, g in enumerate(plain):
        assert list(g.token_ids) == tokens[b].tolist() and g.finish_reason == "length"
    lengths = [N_NEW] + [N_NEW - 2] * (len(reqs) - 1)
    generated = [tokens[b, :n].tolist() for b, n in enumerate(lengths)]
    replayed, prepared, offsets = replay_of(gen, reqs, generated, chunk_mb=0.002)
    assert replay.Replayer(model, chunk_mb=0.002).rows_per_chunk(2 * 4 * len(reqs) * 4 * 100) == 1
    logp = torch.log_softmax(logits.float(), -1)
    for b, (prep, n) in enumerate(zip(prepared, lengths)):
        positions = torch.as_tensor(prep.images.positions + offsets[b])
        weights = torch.as_tensor(prep.weights)
        P, R = len(positions), weights.shape[1]
        assert P > 0 and R > 0
        np.testing.assert_allclose(replayed["entropy"][b, :n], (-(logp[b].exp() * logp[b]).sum(-1))[:n].numpy(),
                                   atol=1e-4, rtol=1e-4)
        chosen = logp[b].gather(1, tokens[b][:, None])[:, 0]
        np.testing.assert_allclose(replayed["logprob"][b, :n], chosen[:n].numpy(), atol=1e-4, rtol=1e-4)
        for t in range(n):
            for layer in range(gen.n_layers):
                probs = rows[t][layer][b][:, positions].float()  # [H, P]
                np.testing.assert_allclose(replayed["image_attn_heads"][b, t, layer, :, :P], probs.numpy(), atol=1e-4)
                np.testing.assert_allclose(replayed["image_attn"][b, t, layer, :P], probs.mean(0).numpy(), atol=1e-4)
                np.testing.assert_allclose(replayed["image_mass"][b, t, layer], probs.sum(-1).numpy(), atol=1e-4)
                np.testing.assert_allclose(replayed["region_mass"][b, t, layer, :R],
                                           (probs.mean(0) @ weights).numpy(), atol=1e-4)


def test_chunk_size_does_not_change_the_result(tiny_models, sample_images):
    model, processor = load(tiny_models["qwen2_5_vl"])
    full_length(model, processor)
    reqs = requests(sample_images, batched=True)
    gen = TraceGenerator(model, processor, "qwen2_5_vl", GenerationSettings(max_new_tokens=7))
    generated = [list(g.token_ids) for g in gen.generate_ids(reqs)]
    whole, _, _ = replay_of(gen, reqs, generated)
    chunked, _, _ = replay_of(gen, reqs, generated, chunk_mb=0.01)  # a few rows per chunk
    assert set(whole) == set(chunked) == {"entropy", "logprob", "image_attn", "image_attn_heads", "image_mass",
                                          "region_mass"}
    for name in whole:
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_mean_map_is_the_layer_mean_and_subsets_pick_layers(tiny_models, sample_images):
    model, processor = load(tiny_models["qwen3_vl"])
    full_length(model, processor)
    reqs = requests(sample_images, batched=True)
    settings = GenerationSettings(max_new_tokens=3)
    every = TraceReplayer(model, processor, "qwen3_vl", settings, map_layers="all", keep_heads=True).generate(reqs)
    mean = TraceReplayer(model, processor, "qwen3_vl", settings, map_layers="mean", keep_heads=True).generate(reqs)
    last = TraceReplayer(model, processor, "qwen3_vl", settings, map_layers=[-1]).generate(reqs)
    for a, m, l in zip(every, mean, last):
        assert m.image_attn.shape[1] == 1 and l.image_attn.shape[1] == 1 and l.image_attn_heads is None
        np.testing.assert_allclose(m.image_attn[:, 0], a.image_attn.mean(1), atol=1e-6)
        np.testing.assert_allclose(m.image_attn_heads[:, 0], a.image_attn_heads.mean(1), atol=1e-6)
        np.testing.assert_allclose(l.image_attn[:, 0], a.image_attn[:, -1], atol=1e-7)
        # region and image mass keep every layer whatever the map keeps
        np.testing.assert_allclose(m.region_mass, a.region_mass, atol=1e-7)
        assert m.image_mass.shape[1] == 3
    with pytest.raises(ValueError, match="out of range"):
        capture.resolve_map_layers([7], 3)


def test_replay_across_a_device_map_with_offloaded_layers(tiny_models, sample_images, tmp_path):
    """Layers split over devices by accelerate's device map. A CPU-only machine has one torch device,
    so layers 1-2 are offloaded to disk: accelerate's hooks then move weights and inputs per layer,
    the same machinery that moves them between GPUs, and the replay must see the same numbers."""
    from peekaboo.models.loading import load_model

    path = tiny_models["qwen3_vl"]
    device_map = {"model.visual": "cpu", "model.language_model.embed_tokens": "cpu",
                  "model.language_model.layers.0": "cpu", "model.language_model.layers.1": "disk",
                  "model.language_model.layers.2": "disk", "model.language_model.norm": "cpu",
                  "model.language_model.rotary_emb": "cpu", "lm_head": "cpu"}
    whole, processor, family, _ = load_model({"dtype": "float32"}, path, device="cpu")
    split, _, _, info = load_model({"dtype": "float32", "device_map": device_map,
                                    "offload_folder": str(tmp_path / "offload")}, path)
    assert info.device_map["model.language_model.layers.1"] == "disk"
    assert hasattr(split.model.language_model.layers[1], "_hf_hook")
    reqs = requests(sample_images, batched=True)
    settings = GenerationSettings(max_new_tokens=4)
    a = TraceReplayer(whole, processor, family, settings, map_layers="all").generate(reqs)
    b = TraceReplayer(split, processor, family, settings, map_layers="all").generate(reqs)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.token_ids, y.token_ids)
        np.testing.assert_allclose(x.image_attn, y.image_attn, atol=1e-6)
        np.testing.assert_allclose(x.image_mass, y.image_mass, atol=1e-6)
        np.testing.assert_allclose(x.entropy, y.entropy, atol=1e-5)


DEVICES = [pytest.param("cpu", torch.float32, id="cpu-float32"),
           pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=pytest.mark.skipif(
               not torch.cuda.is_available(), reason="needs a CUDA device (the half-precision matmul path)"))]


@pytest.mark.parametrize("device,dtype", DEVICES)
@pytest.mark.parametrize("mask", ["none", "bool-padding", "bool-one-row", "bool-window", "float-per-head"])
def test_chunk_probabilities_follow_the_mask_with_grouped_heads(mask, device, dtype):
    """A chunk of query rows against softmax(q k^T * scale + mask) written out with repeated keys over
    every key, in float64 from the same (possibly half-precision) q and k: keys past the chunk left out
    by causality, the log-normaliser over all keys, the mask broadcast over heads, grouped heads. Causal
    masks with key padding take the folded key bias; others (a sliding window, additive per-head masks) are
    applied in full."""
    gen = torch.Generator().manual_seed(3)
    B, H, n_kv, S, D = 3, 6, 2, 11, 8
    query = torch.randn(B, H, S, D, generator=gen).to(device, dtype)
    key = torch.randn(B, n_kv, S, D, generator=gen).to(device, dtype)
    keep = torch.ones(S, S).tril().bool()[None, None].repeat(B, 1, 1, 1)
    keep[1, :, :, :3] = False  # row 1 left-padded by three
    attention_mask = {"none": None,  # SDPA ran causal without a mask
                      "bool-padding": keep,
                      "bool-one-row": keep[:1],  # one mask shared by the whole batch
                      "bool-window": keep & torch.ones(S, S).triu(-4).bool(),  # each row sees its last 5 keys
                      "float-per-head": torch.where(keep, 0.0, float("-inf")).expand(B, H, S, S)
                      + torch.randn(B, H, S, S, generator=gen)}[mask]
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    positions = torch.tensor([[0, 2, 3, 4], [1, 4, 5, 6], [1, 2, 3, 5]], device=device)
    start, stop = 6, 9
    chunk_mask = replay.ChunkMask.of(attention_mask, start, stop)
    assert (chunk_mask.key_bias is not None) == (mask.startswith("bool-") and mask != "bool-window")
    assert (chunk_mask.full is not None) == (mask in ("bool-window", "float-per-head"))
    probs = replay.chunk_probs(query, key, chunk_mask, 0.3, start, stop, positions)
    assert probs.shape == (B, H, stop - start, 4) and probs.dtype == torch.float32

    q, k = query.double().cpu(), key.double().cpu().repeat_interleave(H // n_kv, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * 0.3
    if attention_mask is None:
        scores = scores.masked_fill(~torch.ones(S, S).tril().bool(), float("-inf"))
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask.cpu(), float("-inf"))
    else:
        scores = scores + attention_mask.cpu().double()
    expected = torch.softmax(scores, -1)[:, :, start:stop]  # over every key of the sequence
    expected = torch.gather(expected, -1, positions.cpu()[:, None, None, :].expand(B, H, stop - start, 4))
    np.testing.assert_allclose(probs.cpu().numpy(), expected.numpy(), atol=1e-6 if dtype == torch.float32 else 1e-5)
    if mask == "bool-padding":  # keys 0-2 of row 1 are padding: its first image column points at key 1
        assert float(probs[1, :, :, 0].abs().max()) == 0.0


def test_replay_inputs_pad_shorter_chains_on_the_right():
    images = capture.BatchImages.from_rows([np.array([1, 2]), np.array([2])], [np.zeros((2, 0)), np.zeros((1, 0))])
    prompt = {"input_ids": torch.tensor([[5, 6, 7, 8], [0, 0, 7, 8]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]),
              "mm_token_type_ids": torch.tensor([[0, 1, 1, 0], [0, 0, 1, 0]]),
              "pixel_values": torch.zeros(3, 4)}
    rb = replay.replay_inputs(prompt, [[10, 11, 12], [20]], pad_id=0, images=images)
    # the last generated token is never an input; the second row has none to feed
    assert rb.inputs["input_ids"].tolist() == [[5, 6, 7, 8, 10, 11], [0, 0, 7, 8, 0, 0]]
    assert rb.inputs["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]]
    assert rb.inputs["mm_token_type_ids"].tolist() == [[0, 1, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]]
    assert rb.first_row == 3 and rb.n_rows == 3 and rb.generated.tolist() == [[10, 11, 12], [20, 0, 0]]
    assert rb.inputs["pixel_values"] is prompt["pixel_values"]
    with pytest.raises(ValueError, match="at least one generated token"):
        replay.replay_inputs(prompt, [[10], []], pad_id=0, images=images)
