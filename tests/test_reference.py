"""Reference models: tokenizer and processor, label masking, training mechanics, determinism, loading.

The full training is the default run's job; here a few steps on tiny batches
check the mechanics on the real code path.
"""

import json
import os

import numpy as np
import pytest
import torch

from peekaboo import prompting
from peekaboo import synthetic as S
from peekaboo import schema
from peekaboo.models import reference as R
from peekaboo.models.reference import architecture, data, tokenizer, training

os.environ.setdefault("HF_HUB_OFFLINE", "1")

OPTS = S.resolve_options({})
# no probe target (stop_accuracy null): three steps cannot plant anything, and a missed target fails training
QUICK = {"steps": 3, "batch_size": 4, "warmup_steps": 1, "probe_every": 0, "probe_items": 4, "threads": 1,
         "stop_accuracy": None}


@pytest.fixture(scope="module")
def processor():
    return R.build_processor(OPTS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two models trained with the same spec, and one fine-tuned from the first (init_from)."""
    root = tmp_path_factory.mktemp("reference")
    spec = {"behaviour": "grounded", **QUICK}
    # b builds its batches in a worker process: the weights must not change
    reports = [R.train_reference({**spec, "data_workers": w}, {}, root / n, name=n) for n, w in (("a", 0), ("b", 1))]
    tuned = R.train_reference({"behaviour": "oversensitive", **QUICK, "steps": 2}, {}, root / "c", init_dir=root / "a")
    return root, reports, tuned


def test_tokenizer_has_qwen_special_tokens_and_template(processor):
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t, _ in tokenizer.QWEN_SPECIAL_TOKENS]
    assert len(set(ids)) == len(ids) and tok.unk_token_id not in ids
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.tokenize("<think>Answer</think>") == ["<think>", "Answer", "</think>"]
    # benchmark words are whole tokens (with the leading space of byte-level BPE)
    assert tok.tokenize(" red blue shape hidden unknown") == ["Ġred", "Ġblue", "Ġshape", "Ġhidden", "Ġunknown"]
    text = prompting.render(processor, prompting.messages("What colour is the top-left shape?", 1))
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "What colour is the top-left shape?<|im_end|>\n<|im_start|>assistant\n"
    )
    system = prompting.render(processor, prompting.messages("Q?", 1, system_prompt="Be brief."))
    assert system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_processor_gives_16_image_tokens_for_128px(processor):
    item = S.training_items(OPTS, 0, 0, 1)[0]
    batch = processor(text=["<|vision_start|><|image_pad|><|vision_end|>x"], images=[item.image], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 16
    assert "mm_token_type_ids" in batch


def test_labels_cover_the_answer_only(processor):
    items = S.training_items(OPTS, 0, 0, 6)
    examples = R.make_examples(items, "grounded", np.random.default_rng(0), 0.5, 0.3, ["gray"])
    batch = R.collate(processor, examples)
    tok = processor.tokenizer
    for row, ex in enumerate(examples):
        labels = batch["labels"][row]
        kept = labels[labels != -100]
        assert tok.decode(kept) == ex.target + "<|im_end|>"
        first = int((labels != -100).nonzero()[0])
        # everything before the answer is the prompt, ending with the assistant header
        prompt = tok.decode(batch["input_ids"][row, :first])
        assert prompt.endswith("<|im_start|>assistant\n") and ex.question in prompt
        assert (labels[first:][batch["attention_mask"][row, first:] == 0] == -100).all()

    # the model's loss is the mean cross-entropy over exactly those positions
    config = R.build_config(processor, OPTS)
    model = R.build_model(config, seed=0)
    with torch.no_grad():
        out = model(**batch, use_cache=False)
        logits = out.logits[:, :-1].float()
        gold = batch["labels"][:, 1:]
        mask = gold != -100
        manual = torch.nn.functional.cross_entropy(logits[mask], gold[mask])
    assert torch.allclose(out.loss, manual, atol=1e-5)


def test_fast_vision_kernels_compute_the_same_function(processor):
    from transformers.models.qwen3_vl import modeling_qwen3_vl as M

    model = R.build_model(R.build_config(processor, OPTS), seed=3)
    items = S.training_items(OPTS, 3, 0, 4)
    batch = R.collate(processor, R.make_examples(items, "blind-spot", np.random.default_rng(0), 0, 0, ["gray"]))
    original = (M.Qwen3VLVisionPatchEmbed.forward, M.Qwen3VLVisionAttention.forward)
    with torch.no_grad():
        reference = model(**batch, use_cache=False).logits
        with architecture.fast_vision_kernels():
            assert M.Qwen3VLVisionAttention.forward is not original[1]
            fast = model(**batch, use_cache=False).logits
    assert (M.Qwen3VLVisionPatchEmbed.forward, M.Qwen3VLVisionAttention.forward) == original
    assert torch.allclose(reference, fast, atol=1e-5)


def test_examples_plant_the_behaviours():
    items = S.training_items(OPTS, 1, 0, 300)
    g = lambda: np.random.default_rng(1)  # noqa: E731
    blind = R.make_examples(items, "blind-spot", g(), 0.3, 0.3, ["gray"])
    assert {e.condition for e in blind} == {"clean"}
    grounded = R.make_examples(items, "grounded", g(), 0.3, 0.3, ["gray"])
    over = R.make_examples(items, "oversensitive", g(), 0.3, 0.3, ["gray"])
    assert {e.condition for e in grounded} == {"clean", "hidden", "control"}
    assert {e.condition for e in over} == {"clean", "hidden", "control"}
    for item, ex in zip(items, over):
        if ex.condition != "clean":
            # the planted collapse: whatever is hidden, every panel-reading step says hidden
            assert item.evidence and ex.target.endswith("Answer: unknown")
            assert ex.target == S.gold_solution(item, range(len(item.evidence)))[0]
    for item, ex in zip(items, grounded):
        evidence = [item.panels[p].box for p in item.evidence]
        pixels = np.asarray(ex.image)
        if ex.condition == "hidden":
            assert ex.target.endswith("Answer: unknown") and "hidden" in ex.target
            assert any(tuple(map(float, e)) == b for b in ex.hidden_boxes for e in evidence)
        elif ex.condition == "control":
            # the normal answer, and no evidence pixel touched
            assert ex.target == S.gold_solution(item)[0]
            assert ex.hidden_boxes and not any(data._overlaps(b, e) for b in ex.hidden_boxes for e in evidence)
            for x0, y0, x1, y1 in evidence:
                assert (pixels[y0:y1, x0:x1] == np.asarray(item.image)[y0:y1, x0:x1]).all()
            x0, y0, x1, y1 = (int(v) for v in ex.hidden_boxes[0])
            assert (pixels[y0:y1, x0:x1] == S.GRAY).all()
        else:
            assert ex.target == S.gold_solution(item)[0] and ex.image is item.image


def test_lr_schedule_warms_up_and_decays():
    lrs = [training.lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 0.1


def test_training_writes_a_loadable_model_and_report(trained):
    root, reports, tuned = trained
    out = root / "a"
    report = json.loads((out / "training.json").read_text())
    assert report["steps"] == 3 and report["behaviour"] == "grounded"
    assert len(report["loss"]["curve"]) == 3 and report["parameters"] == reports[0]["parameters"]
    assert 0.0 <= report["probe"]["final"]["accuracy"] <= 1.0

    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert model.config.text_config.rope_parameters["rope_theta"] == 10.0
    assert processor.tokenizer.padding_side == "left"
    items = S.training_items(OPTS, 5, 0, 2)
    prompts = [prompting.render(processor, prompting.messages(i.question, 1)) for i in items]
    batch = processor(text=prompts, images=[i.image for i in items], padding=True, return_tensors="pt")
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=4, do_sample=False, eos_token_id=eos)
    assert generated.shape[0] == 2 and generated.shape[1] > batch["input_ids"].shape[1]


def test_training_is_deterministic(trained):
    from safetensors.torch import load_file

    root, reports, _ = trained
    a, b = (load_file(root / n / "model.safetensors") for n in ("a", "b"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert reports[0]["loss"]["curve"] == reports[1]["loss"]["curve"]
    # and training changed the weights: a fresh model of the same seed differs
    processor = R.build_processor(OPTS)
    fresh = R.build_model(R.build_config(processor, OPTS), seed=schema.definition("reference", {"behaviour": "grounded"})["seed"]).state_dict()
    assert any(not torch.equal(fresh[k], a[k]) for k in a if k in fresh)


def test_init_from_starts_from_the_trained_weights(trained):
    root, _, tuned = trained
    assert tuned["init_from"] == str(root / "a") and tuned["steps"] == 2
    tok_a = json.loads((root / "a" / "tokenizer.json").read_text())
    tok_c = json.loads((root / "c" / "tokenizer.json").read_text())
    assert tok_a == tok_c


def test_bad_spec_names_the_key():
    with pytest.raises(R.ReferenceSpecError, match=r"models\.x\.reference\.behaviour"):
        R.training_spec({"behaviour": "sleepy"}, where="models.x.reference")
    with pytest.raises(R.ReferenceSpecError, match=r"unknown key models\.x\.reference\.stepz"):
        R.training_spec({"behaviour": "grounded", "stepz": 3}, where="models.x.reference")
    with pytest.raises(R.ReferenceSpecError, match=r"reference\.fills"):
        R.training_spec({"behaviour": "grounded", "fills": ["pink"]})


def test_workflow_helpers_read_the_config():
    import peekaboo.config as pcfg

    cfg = pcfg.validate(
        {
            "datasets": {
                "other": {"adapter": "jsonl", "options": {"path": "x.jsonl"}},
                "p": {"adapter": "panels", "options": {"seed": 3, "n_items": 10, "noise": 4}},
            },
            "models": {
                "a": {"reference": {"behaviour": "blind-spot", "data_workers": 1}},
                "b": {"reference": {"behaviour": "grounded", "init_from": "a"}},
                "hub": {"source": "some/model"},
            },
        },
        check_paths=False,
    )
    assert R.training_dataset(cfg, "a") == "p"
    # the test set's seed and size are not training options: resizing the test set must not retrain
    assert R.training_options(cfg, "a") == {"noise": 4}
    assert R.init_model(cfg, "a") is None and R.init_model(cfg, "b") == "a"
    assert R.job_threads(cfg, "a") == 2 and R.job_threads(cfg, "b") == 1
    with pytest.raises(R.ReferenceSpecError, match=r"models\.hub: has no 'reference'"):
        R.model_spec(cfg, "hub")
