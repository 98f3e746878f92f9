"""Attention capture on every tiny family: unchanged tokens, probabilities equal to eager attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _fixtures_models import full_length, load, tiny_models  # noqa: F401
from _fixtures_models import sample_images  # noqa: F401
from _fixtures_models import sample_requests as requests
from peekaboo import capture
from peekaboo.generate import GenerationSettings, TraceGenerator
from peekaboo.models.tiny import FAMILIES

N_NEW = 5


def eager_rows(eager, gen: TraceGenerator, reqs):
    """Per row, per generated token, per layer: the eager attention row over the whole context."""
    prepared = [gen.prepare(r) for r in reqs]
    batch, offsets = gen.collate(prepared)
    with torch.no_grad():
        out = eager.generate(**batch, max_new_tokens=N_NEW, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True, pad_token_id=gen.pad_id,
                             eos_token_id=sorted(gen.eos_ids), temperature=None, top_p=None, top_k=None)
    # out.attentions[step][layer]: [B, H, q, K]; the last query row produced the step's token
    rows = [[layer[:, :, -1, :] for layer in step] for step in out.attentions]
    return out.sequences[:, batch["input_ids"].shape[1]:], rows, prepared, offsets


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
@pytest.mark.parametrize("family", FAMILIES)
def test_capture_keeps_tokens_and_equals_eager_probabilities(family, batched, tiny_models, sample_images):  # noqa: F811
    torch.set_num_threads(1)
    model, processor = load(tiny_models[family], "sdpa")
    eager, _ = load(tiny_models[family], "eager")
    full_length(model, processor)
    full_length(eager, processor)
    reqs = requests(sample_images, batched)
    settings = GenerationSettings(max_new_tokens=N_NEW)
    plain = TraceGenerator(model, processor, family, settings, capture_attention=False).generate(reqs)
    gen = TraceGenerator(model, processor, family, settings, map_layers="all", keep_heads=True)
    captured = gen.generate(reqs)
    assert model.config.text_config._attn_implementation == "sdpa"  # switched back after capture
    for p, c in zip(plain, captured):
        assert c.status == "ok" and c.n_tokens == N_NEW
        np.testing.assert_array_equal(c.token_ids, p.token_ids)

    tokens, rows, prepared, offsets = eager_rows(eager, gen, reqs)
    for b, (c, prep) in enumerate(zip(captured, prepared)):
        np.testing.assert_array_equal(tokens[b].numpy(), c.token_ids)  # same chain, so same rows compared
        positions = torch.as_tensor(prep.images.positions + offsets[b])
        weights = torch.as_tensor(prep.weights)
        assert len(positions) > 0
        for t in range(N_NEW):
            for layer in range(gen.n_layers):
                probs = rows[t][layer][b][:, positions].float()  # [H, P]
                np.testing.assert_allclose(c.image_attn_heads[t, layer], probs.numpy(), atol=1e-4)
                np.testing.assert_allclose(c.image_attn[t, layer], probs.mean(0).numpy(), atol=1e-4)
                np.testing.assert_allclose(c.image_mass[t, layer], probs.sum(-1).numpy(), atol=1e-4)
                np.testing.assert_allclose(c.region_mass[t, layer], (probs.mean(0) @ weights).numpy(), atol=1e-4)


def test_mean_map_is_the_layer_mean_and_subsets_pick_layers(tiny_models, sample_images):  # noqa: F811
    model, processor = load(tiny_models["qwen3_vl"])
    full_length(model, processor)
    reqs = requests(sample_images, batched=True)
    settings = GenerationSettings(max_new_tokens=3)
    every = TraceGenerator(model, processor, "qwen3_vl", settings, map_layers="all").generate(reqs)
    mean = TraceGenerator(model, processor, "qwen3_vl", settings, map_layers="mean").generate(reqs)
    last = TraceGenerator(model, processor, "qwen3_vl", settings, map_layers=[-1]).generate(reqs)
    for a, m, l in zip(every, mean, last):
        assert m.image_attn.shape[1] == 1 and l.image_attn.shape[1] == 1
        np.testing.assert_allclose(m.image_attn[:, 0], a.image_attn.mean(1), atol=1e-6)
        np.testing.assert_allclose(l.image_attn[:, 0], a.image_attn[:, -1], atol=1e-7)
        # region and image mass keep every layer whatever the map keeps
        np.testing.assert_allclose(m.region_mass, a.region_mass, atol=1e-7)
        assert m.image_mass.shape[1] == 3
    with pytest.raises(ValueError, match="out of range"):
        capture.resolve_map_layers([7], 3)


def test_capture_across_a_device_map_with_offloaded_layers(tiny_models, sample_images, tmp_path):  # noqa: F811
    """Layers split over devices by accelerate's device map. A CPU-only machine has one torch device,
    so layers 1-2 are offloaded to disk: accelerate's hooks then move weights and inputs per layer,
    the same machinery that moves them between GPUs, and the capture must see the same numbers."""
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
    a = TraceGenerator(whole, processor, family, settings, map_layers="all").generate(reqs)
    b = TraceGenerator(split, processor, family, settings, map_layers="all").generate(reqs)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.token_ids, y.token_ids)
        np.testing.assert_allclose(x.image_attn, y.image_attn, atol=1e-6)
        np.testing.assert_allclose(x.image_mass, y.image_mass, atol=1e-6)


DEVICES = [pytest.param("cpu", torch.float32, id="cpu-float32"),
           pytest.param("cuda", torch.bfloat16, id="cuda-bfloat16", marks=pytest.mark.skipif(
               not torch.cuda.is_available(), reason="needs a CUDA device (the half-precision matmul path)"))]


@pytest.mark.parametrize("device,dtype", DEVICES)
@pytest.mark.parametrize("mask", ["none", "bool-padding", "bool-one-row", "float-per-head"])
def test_last_row_probabilities_follow_the_mask_with_grouped_heads(mask, device, dtype):
    """The captured row against softmax(q k^T * scale + mask) written out with repeated keys, in
    float64 from the same (possibly half-precision) q and k: the folded scale, the mask made into a
    bias once per forward pass (broadcast over batch rows and head groups) and the grouped heads."""
    gen = torch.Generator().manual_seed(3)
    B, H, n_kv, Q, K, D = 3, 6, 2, 2, 9, 8
    query = torch.randn(B, H, Q, D, generator=gen).to(device, dtype)
    key = torch.randn(B, n_kv, K, D, generator=gen).to(device, dtype)
    keep = torch.ones(B, 1, Q, K, dtype=torch.bool)
    keep[1, :, :, :3] = False  # row 1 left-padded by three
    attention_mask = {"none": None,
                      "bool-padding": keep,
                      "bool-one-row": keep[:1],  # one mask row shared by the whole batch
                      "float-per-head": torch.randn(B, H, Q, K, generator=gen)}[mask]
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    mask_bias = capture.MaskBias()
    grouped = capture._last_row_probs(mask_bias, query, key, attention_mask, scaling=0.3)
    assert grouped.shape == (B * n_kv, H // n_kv, K)
    probs = grouped.view(B, H, K)

    q, k = query[:, :, -1].double().cpu(), key.double().cpu().repeat_interleave(H // n_kv, dim=1)
    scores = torch.einsum("bhd,bhkd->bhk", q, k) * 0.3
    if attention_mask is not None:
        row = attention_mask[:, :, -1].cpu()
        scores = scores + (torch.where(row, 0.0, float("-inf")).double() if row.dtype == torch.bool else row)
    expected = torch.softmax(scores, -1)
    assert probs.dtype == torch.float32
    np.testing.assert_allclose(probs.cpu().numpy(), expected.numpy(), atol=1e-6)
    if mask == "bool-padding":
        assert float(probs[1, :, :3].abs().max()) == 0.0
    # the same mask object again (the next layer of the same forward pass) reuses the bias
    assert capture._last_row_probs(mask_bias, query, key, attention_mask, scaling=0.3).equal(grouped)
