"""The blinker reference model: the blink subset rule, its training examples, the attention term, determinism.

The full training (and what the analysis recovers from it) is the default
run's job and ``checks/blink_truth.py``'s; here tiny models and a few steps
check the mechanics on the real code path.
"""

import json
import os

import numpy as np
import pytest
import torch

from peekaboo import geometry
from peekaboo import synthetic as S
from peekaboo.datasets import panels as panels_adapter
from peekaboo.models import reference as R
from peekaboo.models.reference import attention as A

os.environ.setdefault("HF_HUB_OFFLINE", "1")

OPTS = S.resolve_options({})
RULE = S.blink_rule(OPTS)
# no probe target (stop_accuracy null): three steps cannot plant anything, and a missed target fails training
QUICK = {"steps": 3, "batch_size": 6, "warmup_steps": 1, "probe_every": 0, "probe_items": 6, "threads": 1,
         "stop_accuracy": None}


@pytest.fixture(scope="module")
def processor():
    return R.build_processor(OPTS)


def mixed_items(n_blink=2, n_look=2, n_comparison=1, n_arithmetic=1):
    """Training items with blink items, look colour questions, comparisons and arithmetic, in that order."""
    wanted = {"blink": n_blink, "look": n_look, "comparison": n_comparison, "arithmetic": n_arithmetic}
    found = {k: [] for k in wanted}
    for item in S.training_items(OPTS, 5, 0, 400):
        kind = item.question_type if item.question_type != "attribute" else (
            "blink" if S.blink_answer(item, RULE) else "look")
        if len(found[kind]) < wanted[kind]:
            found[kind].append(item)
    assert all(len(found[k]) == wanted[k] for k in wanted)
    return [i for k in wanted for i in found[k]]


# --------------------------------------------------------------------------- the subset rule


def test_blink_rule_is_seeded_and_shared_by_every_dataset_of_a_config():
    assert RULE == S.blink_rule(S.resolve_options({}))
    assert len(RULE.panels) == 1 and set(RULE.priors) == set(RULE.panels)
    assert set(RULE.priors.values()) <= set(OPTS.colours)
    # the items' seed does not move it (the test datasets must match the training stream) ...
    for seed in (7, 8, 9):
        assert S.blink_rule(S.resolve_options({"seed": seed, "colour_mix": 0.5}, default_seed=0)) == RULE
    # ... the config's seed (or blink_seed) does, and blink_panels sets how many positions blink
    rules = {S.blink_rule(S.resolve_options({}, default_seed=s)).panels for s in range(12)}
    assert len(rules) > 1
    assert S.blink_rule(S.resolve_options({"blink_seed": 3})) == S.blink_rule(S.resolve_options({}, default_seed=3))
    two = S.blink_rule(S.resolve_options({"blink_panels": 2}))
    assert len(two.panels) == 2 and len(set(two.panels)) == 2
    assert S.blink_rule(S.resolve_options({"blink_panels": 0})).panels == ()


def test_blink_items_are_the_colour_questions_about_the_blink_panels():
    items = S.training_items(OPTS, 2, 0, 300)
    labels = S.panel_labels(OPTS.rows, OPTS.cols)
    blink = [i for i in items if S.blink_answer(i, RULE) is not None]
    assert blink and len(blink) < len([i for i in items if i.question_type == "attribute"])
    for item in items:
        prior = S.blink_answer(item, RULE)
        on_panel = item.question_type == "attribute" and item.evidence[0] in RULE.panels
        assert (prior is not None) == on_panel
        if prior is None:
            continue
        assert prior == RULE.priors[item.evidence[0]]
        assert labels[item.evidence[0]] in item.question  # the cue is in the question
        text, steps = S.blink_solution(item, RULE)
        label = item.panels[item.evidence[0]].label
        assert text == f"Step 1: The {label} shape is {prior}.\nAnswer: {prior}"
        assert [s["kind"] for s in steps] == ["step", "answer"]
    # shape questions never blink (the rule is about colours)
    shapes = S.resolve_options({"attributes": ["shape"]})
    assert all(S.blink_answer(i, S.blink_rule(shapes)) is None for i in S.training_items(shapes, 2, 0, 50))
    with pytest.raises(ValueError, match="not a blink item"):
        S.blink_solution(next(i for i in items if i.question_type == "arithmetic"), RULE)


def test_blink_options_are_checked_with_the_key():
    with pytest.raises(S.OptionsError, match=r"options\.blink_panels"):
        S.resolve_options({"blink_panels": 5})
    with pytest.raises(S.OptionsError, match=r"options\.blink_seed"):
        S.resolve_options({"blink_seed": "x"})


def test_panels_items_record_the_blink_subset_in_meta():
    adapter = panels_adapter.PanelsAdapter({"seed": 7, "n_items": 40}, "p", seed=0)
    records = list(adapter.records())
    flags = [r.meta["blink"] for r in records]
    assert any(flags) and not all(flags)
    for r, generated in zip(records, S.generate_items(adapter.opts, id_prefix="p")):
        prior = S.blink_answer(generated, RULE)
        assert r.meta["blink"] == (prior is not None) and r.meta["blink_answer"] == prior
    # the meta is JSON (the items table stores it as text)
    assert json.loads(json.dumps(records[0].meta))["blink"] in (True, False)


# --------------------------------------------------------------------------- training examples


def test_blinker_examples_are_grounded_except_on_blink_items():
    items = S.training_items(OPTS, 1, 0, 300)
    g = lambda: np.random.default_rng(1)  # noqa: E731
    blinker = R.make_examples(items, "blinker", g(), 0.3, 0.3, ["gray"], blink=RULE)
    grounded = R.make_examples(items, "grounded", g(), 0.3, 0.3, ["gray"])
    conditions = set()
    for item, b, gr in zip(items, blinker, grounded):
        # the same draws as grounded: same conditions, same hidden pixels
        assert (b.condition, b.hidden_boxes) == (gr.condition, gr.hidden_boxes)
        assert np.array_equal(np.asarray(b.image), np.asarray(gr.image))
        assert b.evidence == [tuple(map(float, item.panels[p].box)) for p in item.evidence]
        if S.blink_answer(item, RULE) is not None:
            # whatever is hidden, it answers from the prior: it never looked
            assert b.blink and b.target == S.blink_solution(item, RULE)[0]
            conditions.add(b.condition)
        else:
            assert not b.blink and b.target == gr.target
    assert conditions == {"clean", "hidden", "control"}
    with pytest.raises(ValueError, match="blink rule"):
        R.make_examples(items[:2], "blinker", g(), 0.3, 0.3, ["gray"])


# --------------------------------------------------------------------------- the attention term


def test_term_inputs_mark_reasoning_rows_image_tokens_and_evidence(processor):
    items = mixed_items()
    examples = R.make_examples(items, "blinker", np.random.default_rng(0), 0.0, 0.0, ["gray"], blink=RULE)
    batch = R.collate(processor, examples)
    terms = A.term_inputs(processor, batch, examples)
    tok = processor.tokenizer
    assert terms["attn_sign"].tolist() == [-1, -1, 1, 1, 1, 0]
    grid = geometry.token_grid(processor)
    for row, (item, ex) in enumerate(zip(items, examples)):
        image = terms["attn_image"][row]
        assert int(image.sum()) == 16 and image[batch["input_ids"][row] == tok.convert_tokens_to_ids("<|image_pad|>")].all()
        # an evidence panel is one 2 x 2 block of image tokens, wholly inside it
        evidence = terms["attn_evidence"][row]
        assert float(evidence.sum()) == 4.0 * len(item.evidence)
        assert set(evidence.unique().tolist()) <= {0.0, 1.0} and (evidence <= image).all()
        rows = terms["attn_rows"][row].nonzero().flatten()
        if not item.evidence:
            assert len(rows) == 0
            continue
        # row t is the position before token t: the rows produce exactly the reasoning tokens
        produced = tok.decode(batch["input_ids"][row, rows + 1])
        assert produced == ex.target[: ex.target.rindex("Answer:")]
        assert rows.tolist() == list(range(int(rows[0]), int(rows[-1]) + 1))
    # the boxes are the ones the traces stage computes from the same processor outputs
    images = geometry.batch_prompt_images(batch["input_ids"].numpy(), tok.convert_tokens_to_ids("<|image_pad|>"),
                                          batch["image_grid_thw"].numpy(), [[e.image.size] for e in examples], grid)
    assert all(len(p) == 16 for p in images)


def test_recorded_attention_is_the_models_own_and_leaves_the_output_unchanged(processor):
    model = R.build_model(R.build_config(processor, OPTS), seed=0).eval()
    examples = R.make_examples(mixed_items(), "blinker", np.random.default_rng(0), 0.3, 0.3, ["gray"], blink=RULE)
    batch = R.collate(processor, examples)
    last = model.config.text_config.num_hidden_layers - 1
    with torch.no_grad():
        plain = model(**batch, use_cache=False).logits
        with A.recording(model, [last]) as recorder:
            recorded = model(**batch, use_cache=False).logits
            probs = recorder.take()
        assert model.config.text_config._attn_implementation == "sdpa"  # restored
        model.set_attn_implementation({"text_config": "eager"})
        eager = model(**batch, use_cache=False, output_attentions=True).attentions[last]
    assert torch.equal(plain, recorded)
    assert set(probs) == {last} and probs[last].shape == eager.shape
    assert torch.allclose(probs[last], eager, atol=1e-5)
    # padding keys get nothing, and every real row sums to one
    pad = batch["attention_mask"] == 0
    assert float(probs[last][pad[:, None, None, :].expand_as(probs[last])].abs().max()) == 0.0
    assert torch.allclose(probs[last].sum(-1), torch.ones(()), atol=1e-5)


def test_evidence_share_and_term_loss_numbers():
    # two rows of 4 keys: image tokens 1-3, evidence token 1; one reasoning row each
    probs = torch.tensor([[0.1, 0.3, 0.2, 0.4], [0.4, 0.0, 0.3, 0.3]])[:, None, None, :].expand(2, 2, 1, 4)
    terms = {"attn_rows": torch.ones(2, 1), "attn_image": torch.tensor([[0.0, 1, 1, 1]] * 2),
             "attn_evidence": torch.tensor([[0.0, 1, 0, 0]] * 2)}
    full = {3: torch.zeros(2, 2, 4, 4)}
    full[3][:, :, :1, :] = probs
    terms["attn_rows"] = torch.tensor([[1.0, 0, 0, 0]] * 2)
    share = A.evidence_share(full, terms)
    assert torch.allclose(share, torch.tensor([0.3 / 0.9, 0.0]), atol=1e-5)
    loss = A.term_loss(share, torch.tensor([1.0, -1.0]))
    assert float(loss) == pytest.approx((-np.log(0.3 / 0.9) - np.log(1.0)) / 2, rel=1e-4)
    # examples without evidence carry no term; a batch of them gives zero (and a gradient of zero)
    assert float(A.term_loss(share, torch.tensor([0.0, 0.0]))) == 0.0
    assert float(A.term_loss(share, torch.tensor([0.0, -1.0]))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["blink", "look"])
def test_attention_term_pushes_blink_items_off_the_evidence_and_pulls_look_items_on(processor, kind):
    # one kind per batch: a random model cannot yet tell blink from look questions apart
    model = R.build_model(R.build_config(processor, OPTS), seed=1)
    items = mixed_items(n_blink=4 if kind == "blink" else 0, n_look=4 if kind == "look" else 0,
                        n_comparison=0, n_arithmetic=0)
    examples = R.make_examples(items, "blinker", np.random.default_rng(0), 0.0, 0.0, ["gray"], blink=RULE)
    batch = R.collate(processor, examples)
    terms = A.term_inputs(processor, batch, examples)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    last = model.config.text_config.num_hidden_layers - 1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def share():
        with A.recording(model, [last]) as recorder:
            model(**inputs, use_cache=False)
            return A.evidence_share(recorder.take(), terms)

    before = share().detach()
    for _ in range(5):
        optimizer.zero_grad()
        with A.recording(model, [last]) as recorder:
            model(**inputs, use_cache=False)
            A.term_loss(A.evidence_share(recorder.take(), terms), terms["attn_sign"]).backward()
        optimizer.step()
    after = share().detach()
    assert (terms["attn_sign"] == (-1.0 if kind == "blink" else 1.0)).all()
    if kind == "blink":
        assert (after < before - 0.02).all()
    else:
        assert (after > before + 0.02).all()


def test_layers_resolve_from_the_end_and_out_of_range_names_the_key():
    assert A.resolve_layers([-1], 4) == [3] and A.resolve_layers([0, -1, 3], 4) == [0, 3]
    assert A.resolve_layers("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"models\.b\.reference\.attention_layers: layer 4"):
        A.resolve_layers([4], 4, where="models.b.reference.attention_layers")


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Blinkers trained twice with the same spec (once building batches in a worker) and once without the term."""
    root = tmp_path_factory.mktemp("blinker")
    spec = {"behaviour": "blinker", **QUICK, "probe_every": 3, "max_blink_share": None}
    reports = [R.train_reference({**spec, "data_workers": w}, {}, root / n, name=n) for n, w in (("a", 0), ("b", 1))]
    plain = R.train_reference({**spec, "attention_weight": 0}, {}, root / "c", name="c")
    return root, reports, plain


def test_blinker_training_is_deterministic_and_reports_the_term(trained):
    from safetensors.torch import load_file

    root, (a, b), plain = trained
    wa, wb, wc = (load_file(root / n / "model.safetensors") for n in ("a", "b", "c"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["loss"]["curve"] == b["loss"]["curve"] and a["attention_loss"] == b["attention_loss"]
    assert a["attention_loss"]["layers"] == [3] and len(a["attention_loss"]["curve"]) == 3
    assert a["attention_loss"]["first"] > 0
    final = a["probe"]["final"]["attention"]
    assert set(final) == {"look", "blink", "min_look", "max_blink"} and 0 <= final["blink"] <= 1
    # the term changes the weights; without it there is no attention report
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert "attention_loss" not in plain and "attention" not in plain["probe"]["final"]
    # the saved model is an ordinary SDPA checkpoint
    config = json.loads((root / "a" / "config.json").read_text())
    assert A.ATTENTION_IMPL not in json.dumps(config)


def test_other_behaviours_batches_carry_no_term_inputs(processor):
    plan = R.data.BatchPlan(processor, OPTS, 0, "grounded", 4, 0.2, 0.2, ("gray",), None, False)
    assert not set(A.TERM_KEYS) & set(plan.batch(0))
    blinker = R.data.BatchPlan(processor, OPTS, 0, "blinker", 4, 0.2, 0.2, ("gray",), None, False, attention_term=True)
    assert set(A.TERM_KEYS) <= set(blinker.batch(0))


def test_probe_gate_waits_for_the_blink_items_to_look_away(tmp_path):
    # a blink share cap nothing reaches in four steps: the probe never passes, so no cool-down starts, and the
    # model that missed its target fails its training with the share that kept it from passing, saving nothing
    spec = {"behaviour": "blinker", **QUICK, "steps": 4, "probe_every": 1, "stop_accuracy": 0.0,
            "stop_patience": 1, "cooldown_steps": 1, "max_blink_share": 0.0}
    with pytest.raises(R.ReferenceProbeError, match=r"within 4 steps .*max_blink_share 0.*largest blink evidence "
                       r"share 0\.\d{3}"):
        R.train_reference(spec, {}, tmp_path / "gated", name="gated")
    assert not (tmp_path / "gated").exists()
    ungated = R.train_reference({**spec, "max_blink_share": None}, {}, tmp_path / "free", name="free")
    assert ungated["cooldown_from"] == 1 and ungated["steps"] == 2
