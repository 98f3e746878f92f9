"""Generation then replay: entropy/log-probabilities against the generation's raw logits, failures, OOM
splitting, sampling, the static cache, batches sorted by prompt length, replaying imported tokens."""

from __future__ import annotations

import functools

import json

import numpy as np
import pytest
import torch

from fixtures.models import full_length, load
from fixtures.models import sample_requests as requests
from peekaboo.datasets.base import Score
from peekaboo.generate import GenerationSettings, TraceGenerator, TraceRequest, decode_with_offsets, plan_batches
from peekaboo.trace_replay import TraceReplayer
from peekaboo.generations import Generation
from peekaboo.models.tiny import FAMILIES


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
@pytest.mark.parametrize("family", FAMILIES)
def test_entropy_and_logprob_equal_those_of_output_logits(family, batched, tiny_models, sample_images):
    torch.set_num_threads(1)
    model, processor = load(tiny_models[family])
    full_length(model, processor)
    reqs = requests(sample_images, batched)
    gen = TraceReplayer(model, processor, family, GenerationSettings(max_new_tokens=4))
    results = gen.generate(reqs)  # generated, then replayed: entropy and log-probability come from the replay
    batch, _ = gen.collate([gen.prepare(r) for r in reqs])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=gen.pad_id, eos_token_id=sorted(gen.eos_ids),
                             temperature=None, top_p=None, top_k=None)
    logits = torch.stack(out.logits, 1)  # [B, steps, V] raw float32 logits
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    chosen = out.sequences[:, batch["input_ids"].shape[1]:]
    for b, r in enumerate(results):
        np.testing.assert_array_equal(r.token_ids, chosen[b].numpy())
        np.testing.assert_allclose(r.entropy, entropy[b].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r.logprob, logp[b].gather(1, chosen[b][:, None])[:, 0].numpy(), atol=1e-5)
        assert r.truncated  # stopped by max_new_tokens, not by a stop token


def test_oom_splits_the_batch_and_records_it(tiny_models, sample_images, monkeypatch):
    """A real out-of-memory error cannot be produced on CPU: the decoder's forward (which generation and
    replay both run) is wrapped to raise torch.OutOfMemoryError for batches of more than one row, as CUDA
    would."""
    model, processor = load(tiny_models["qwen2_vl"])
    full_length(model, processor)
    reqs = requests(sample_images, batched=True) + [TraceRequest("r2", "Anything?", [sample_images[2]], [])]
    settings = GenerationSettings(max_new_tokens=3)
    alone = [TraceReplayer(model, processor, "qwen2_vl", settings).generate([r])[0] for r in reqs]
    decoder = model.model
    real_forward = decoder.forward
    calls = []

    @functools.wraps(real_forward)
    def forward(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        calls.append(rows)
        if rows > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", forward)
    split = TraceReplayer(model, processor, "qwen2_vl", settings).generate(reqs)
    assert calls[0] == 3 and 2 in calls  # 3 -> 2 + 1 -> 1 + 1 + 1, in generation and again in the replay
    # splits add up over both steps: two in generation and two in the replay for the first two rows
    assert [r.retries for r in split] == [4, 4, 2]
    for a, s in zip(alone, split):
        assert s.status == "ok"
        np.testing.assert_array_equal(a.token_ids, s.token_ids)
        np.testing.assert_allclose(a.image_attn, s.image_attn, atol=1e-6)

    @functools.wraps(real_forward)
    def always(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(decoder, "forward", always)
    failed = TraceReplayer(model, processor, "qwen2_vl", settings).generate(reqs[:1])[0]
    assert failed.status == "failed" and "out of memory" in failed.error and failed.retries == 1
    ids = TraceGenerator(model, processor, "qwen2_vl", settings).generate_ids(reqs[:1])[0]
    assert not ids.ok and "out of memory on a batch of one" in ids.error and ids.retries == 1


def test_failed_image_and_too_long_prompt_fail_alone(tiny_models, sample_images, tmp_path):
    model, processor = load(tiny_models["glm4v"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    reqs = [
        TraceRequest("ok", "What is this?", [sample_images[0]], []),
        TraceRequest("missing", "What is this?", [tmp_path / "nope.png"], []),
        TraceRequest("broken", "What is this?", [broken], []),
        TraceRequest("long", "Why? " * 400, [sample_images[0]], []),
        TraceRequest("ok2", "And this?", [sample_images[1]], []),
    ]
    gen = TraceReplayer(model, processor, "glm4v", GenerationSettings(max_new_tokens=3), context_length=300)
    results = {r.request.trace_id: r for r in gen.generate(reqs)}
    assert results["ok"].status == "ok" and results["ok2"].status == "ok"
    assert "could not be loaded" in results["missing"].error and "nope.png" in results["missing"].error
    assert results["broken"].status == "failed" and "broken.png" in results["broken"].error
    assert results["long"].status == "failed" and "context of 300" in results["long"].error
    # a prompt that fits but leaves little room is cut where the context ends, and says so
    prompt_len = gen.prepare(reqs[0]).encoding["input_ids"].shape[1]
    tight = TraceReplayer(model, processor, "glm4v", GenerationSettings(max_new_tokens=50),
                           context_length=prompt_len + 2)
    full_length(model, processor)
    tight.eos_ids = {int(e) for e in model.generation_config.eos_token_id}
    cut = tight.generate(reqs[:1])[0]
    assert cut.n_tokens == 2 and cut.truncated


def test_stop_token_ends_the_trace_untruncated(tiny_models, sample_images):
    model, processor = load(tiny_models["qwen3_vl"])
    full_length(model, processor)
    settings = GenerationSettings(max_new_tokens=6)
    first = TraceReplayer(model, processor, "qwen3_vl", settings).generate(requests(sample_images, False))[0]
    stop = int(first.token_ids[2])
    model.generation_config.eos_token_id = [stop]
    stopped = TraceReplayer(model, processor, "qwen3_vl", settings).generate(requests(sample_images, False))[0]
    k = int(np.flatnonzero(first.token_ids == stop)[0])
    assert stopped.n_tokens == k + 1 and not stopped.truncated
    np.testing.assert_array_equal(stopped.token_ids, first.token_ids[: k + 1])
    assert stopped.image_attn.shape[0] == k + 1 and stopped.entropy.shape == (k + 1,)


def test_sampling_is_seeded(tiny_models, sample_images):
    model, processor = load(tiny_models["qwen2_5_vl"])
    full_length(model, processor)
    reqs = requests(sample_images, batched=True)

    def sample(seed):
        settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, seed=seed)
        return [r.token_ids for r in TraceReplayer(model, processor, "qwen2_5_vl", settings).generate(reqs)]

    a, b, c = sample(1), sample(1), sample(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_scoring_and_text_offsets(tiny_models, sample_images):
    model, processor = load(tiny_models["qwen3_vl"])
    full_length(model, processor)
    seen = []

    def score(request, text, thinking_open=False):
        seen.append((request.trace_id, text))
        return Score(answer_text="A", correct=True, abstained=False)

    gen = TraceReplayer(model, processor, "qwen3_vl", GenerationSettings(max_new_tokens=6), score=score)
    result = gen.generate(requests(sample_images, False))[0]
    assert seen == [("r0", result.text)] and result.correct is True and result.answer_text == "A"
    starts, ends = result.token_char_start, result.token_char_end
    assert len(starts) == result.n_tokens and starts[0] == 0 and ends[-1] == len(result.text)
    assert all(s <= e for s, e in zip(starts, ends)) and all(e == s for e, s in zip(ends[:-1], starts[1:]))


@pytest.mark.parametrize("family", ["qwen3_vl", "glm46v"])
def test_a_chain_inside_the_thinking_block_the_prompt_opened_is_unparsed_and_truncated(tiny_models, sample_images,
                                                                                       family):
    """Thinking on: a template that opens the block in the prompt leaves the model's whole chain inside it until
    it writes the closing tag. The random tiny models never do, so nothing may be read as their answer."""
    from peekaboo.scoring import get_scorer

    model, processor = load(tiny_models[family])
    full_length(model, processor)
    scorer = get_scorer("mathvista")
    item = {"item_id": "q", "answer": "B", "answer_type": "multi_choice", "choices": ["1", "2", "3"],
            "meta": json.dumps({"question_type": "multi_choice", "answer_type": "text", "precision": None})}
    gen = TraceReplayer(model, processor, family, GenerationSettings.from_config({"max_new_tokens": 8}),
                         thinking=True, score=lambda request, text, thinking_open=False: scorer.score(
                             item, text, thinking_open=thinking_open))
    request = requests(sample_images, False)[0]
    opened = TraceGenerator.opens_thinking(gen.prompt_text(request))
    result = gen.generate([request])[0]
    assert opened == (family == "qwen3_vl")  # GLM-4.6V's template lets the model open the block itself
    if opened and "</think>" not in result.text:
        assert result.truncated and result.answer_text is None and result.correct is not True


def test_decode_offsets_with_split_characters(tiny_models):
    _, processor = load(tiny_models["qwen2_vl"])
    tok = processor.tokenizer
    ids = tok.encode("héllo wörld", add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    text, starts, ends = decode_with_offsets(tok, ids)
    assert text == "héllo wörld"
    assert len(starts) == len(ids) and ends[-1] == len(text) and starts[-1] == ends[-1]  # EOS spans nothing
    assert "".join(text[s:e] for s, e in zip(starts, ends)) == text
    assert all(a <= b for a, b in zip(ends, ends[1:]))


def test_static_cache_generates_the_same_tokens(tiny_models, sample_images):
    """The static cache (what generation.compile uses on CUDA; uncompiled on CPU) against the dynamic one,
    greedy, batched with left padding."""
    for family in ("qwen3_vl", "glm4v"):
        model, processor = load(tiny_models[family])
        full_length(model, processor)
        reqs = requests(sample_images, batched=True)
        settings = GenerationSettings(max_new_tokens=5)
        dynamic = TraceGenerator(model, processor, family, settings, static_cache=False).generate_ids(reqs)
        static = TraceGenerator(model, processor, family, settings, static_cache=True).generate_ids(reqs)
        assert [g.token_ids for g in static] == [g.token_ids for g in dynamic]
    # the config switch alone asks for it on CUDA only
    on_cpu = TraceGenerator(model, processor, "glm4v", GenerationSettings(max_new_tokens=5, compile=True))
    assert on_cpu.static_cache is False


def test_generated_ids_replayed_give_the_same_traces(tiny_models, sample_images):
    model, processor = load(tiny_models["qwen3_vl"])
    reqs = requests(sample_images, batched=True)
    full_length(model, processor)
    gen = TraceReplayer(model, processor, "qwen3_vl", GenerationSettings(max_new_tokens=6))
    first = list(gen.generate_ids(reqs[:1])[0].token_ids)
    k = next(k for k in range(1, len(first)) if first[k] not in first[:k])
    model.generation_config.eos_token_id = [first[k]]  # row 0 stops early on it
    gen = TraceReplayer(model, processor, "qwen3_vl", GenerationSettings(max_new_tokens=6))
    ids = gen.generate_ids(reqs)
    assert ids[0].finish_reason == "stop" and list(ids[0].token_ids) == first[:k + 1]
    assert ids[0].text == decode_with_offsets(processor.tokenizer, ids[0].token_ids)[0]
    together = gen.generate(reqs)
    replayed = gen.replay(reqs, ids)
    for a, b in zip(together, replayed):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        assert a.truncated == b.truncated and a.text == b.text
        for name in ("entropy", "logprob", "image_attn", "image_mass", "region_mass"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not together[0].truncated


def test_replay_refuses_tokens_the_model_cannot_take(tiny_models, sample_images):
    model, processor = load(tiny_models["qwen2_5_vl"])
    req = requests(sample_images, batched=False)[0]
    gen = TraceReplayer(model, processor, "qwen2_5_vl", GenerationSettings(max_new_tokens=4), context_length=400)
    prompt_len = gen.prepare(req).prompt_len
    text = "Step 1: the square is red.\nAnswer: A"
    cases = {
        "vocab": Generation("r0", token_ids=(5, gen.vocab_size + 3)),
        "long": Generation("r0", token_ids=(5,) * (400 - prompt_len + 1)),
        "fits": Generation("r0", token_ids=(5,) * (400 - prompt_len)),
        "long-text": Generation("r0", text="a" * (400 - prompt_len + 1)),
        "failed": Generation("r0", error="boom", retries=2),
        "text": Generation("r0", text=text, finish_reason="stop"),
    }
    out = dict(zip(cases, gen.replay([req] * len(cases), list(cases.values()))))
    assert out["vocab"].status == "failed" and f"token id {gen.vocab_size + 3} at position 1" in out["vocab"].error
    assert "does not fit the model's context of 400" in out["long"].error and "token ids" in out["long"].error
    assert out["fits"].status == "ok" and out["fits"].n_tokens == 400 - prompt_len and out["fits"].truncated
    assert "(text) of" in out["long-text"].error
    assert out["failed"].error == "boom" and out["failed"].retries == 2
    # a text is taken in the model tokenizer's own tokens, nothing added
    tokens = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert out["text"].token_ids.tolist() == tokens and out["text"].text == text and not out["text"].truncated
    assert np.isfinite(out["text"].entropy).all() and out["text"].image_attn.shape[0] == len(tokens)


def test_batches_sorted_by_prompt_length_keep_equal_lengths_in_order():
    reqs = [TraceRequest(f"t{k}", "q") for k in range(7)]
    lengths = [30, 10, 30, 0, 20, 10, 30]
    batches = plan_batches(reqs, 3, lengths)
    assert [[r.trace_id for r in b] for b in batches] == [["t3", "t1", "t5"], ["t4", "t0", "t2"], ["t6"]]
    assert [[r.trace_id for r in b] for b in plan_batches(reqs, 3)] == [["t0", "t1", "t2"], ["t3", "t4", "t5"],
                                                                       ["t6"]]
    with pytest.raises(ValueError, match="prompt lengths"):
        plan_batches(reqs, 3, lengths[:3])


def test_decode_offsets_are_those_of_growing_prefixes_in_linear_time(tiny_models):
    """Random byte-level tokens split characters everywhere: the run-by-run offsets equal those of decoding
    every growing prefix of the whole chain (the quadratic method they replace)."""
    from peekaboo.generate import prefix_offsets

    _, processor = load(tiny_models["qwen3_vl"])
    tok = processor.tokenizer
    rng = np.random.default_rng(0)

    def decode(part):
        return tok.decode(part, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    for n in (1, 7, 300):
        ids = rng.integers(0, len(tok), n).tolist()
        text, starts, ends = decode_with_offsets(tok, ids)
        assert (starts, ends) == prefix_offsets(decode, ids, text)
        assert "\ufffd" in text or n == 1


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl", "qwen2_vl", "glm4v", "glm46v"])
def test_text_only_questions_trace_alone_and_beside_image_questions(tiny_models, sample_images, tmp_path,
                                                                     family):
    """HallusionBench has questions without an image: a batch of them alone, or mixed with image questions, traces
    normally (no image tokens: empty attention on images) and its store is written like any other."""
    from peekaboo.generate import TraceRequest
    from peekaboo.tracestore import ShardWriter, open_traces, read_sidecars

    model, processor = load(tiny_models[family])
    full_length(model, processor)
    gen = TraceReplayer(model, processor, family, GenerationSettings(max_new_tokens=4))
    text_only = [TraceRequest(trace_id=f"t{i}", question="Is 2 + 2 equal to 4?", meta={}) for i in range(2)]
    mixed = [text_only[0]] + requests(sample_images, False)[:1]
    alone, together = gen.generate(text_only), gen.generate(mixed)
    assert all(r.status == "ok" and r.n_tokens == 4 for r in alone + together), [r.error for r in alone + together]
    assert alone[0].image_attn.shape[-1] == 0 and alone[0].image_mass.shape == (4, gen.n_layers, gen.n_heads)
    assert not alone[0].image_mass.any()  # no image tokens: no attention on images
    assert together[1].image_attn.shape[-1] > 0
    writer = ShardWriter(tmp_path / "s.zarr", tmp_path / "s.parquet", [["t0", "t1"]], n_layers=gen.n_layers,
                         n_heads=gen.n_heads, map_layers=gen.map_layers)
    writer.start()
    writer.write_batch(0, alone)
    store, sidecar = writer.finalize()
    assert (read_sidecars(sidecar)["status"] == "ok").all() and int(open_traces(store)["n_patches"].max()) == 0


def test_an_error_in_one_trace_fails_that_trace_only(tiny_models, sample_images, monkeypatch):
    model, processor = load(tiny_models["qwen3_vl"])
    full_length(model, processor)
    gen = TraceReplayer(model, processor, "qwen3_vl", GenerationSettings(max_new_tokens=4))
    import dataclasses

    batch = requests(sample_images, True)
    batch.append(dataclasses.replace(batch[0], trace_id="r2"))
    bad = batch[1].trace_id
    real = gen._replay_batch

    def breaks_on_the_bad_trace(items, retries):
        if any(it.prepared.request.trace_id == bad for it in items):
            raise ValueError("a request the model cannot take")
        return real(items, retries)

    monkeypatch.setattr(gen, "_replay_batch", breaks_on_the_bad_trace)
    results = gen.generate(batch)
    by_id = {r.request.trace_id: r for r in results}
    assert by_id[bad].status == "failed" and by_id[bad].error == "ValueError: a request the model cannot take"
    assert all(r.status == "ok" for t, r in by_id.items() if t != bad) and len(by_id) == len(batch) >= 3
