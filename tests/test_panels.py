"""The panels benchmark: determinism, geometry, gold steps, scoring, option errors."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from peekaboo.datasets import get_adapter
from peekaboo.datasets.base import AdapterError
from peekaboo import synthetic as S
from peekaboo.datasets import panels as P
from peekaboo.scoring import get_scorer


def _records(options, dataset="panels", seed=0):
    return list(get_adapter(dataset, {"adapter": "panels", "options": options}, seed=seed).records())


def _digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_same_options_give_identical_items():
    opts = {"seed": 3, "n_items": 12, "noise": 8, "blur": 0.7, "clutter": 2, "colour_jitter": 10}
    a, b = _records(opts), _records(opts)
    assert [r.item_id for r in a] == [r.item_id for r in b]
    assert [(r.question, r.answer, r.meta) for r in a] == [(r.question, r.answer, r.meta) for r in b]
    assert [_digest(r.images[0]) for r in a] == [_digest(r.images[0]) for r in b]
    # another seed gives other images
    c = _records({**opts, "seed": 4})
    assert [_digest(r.images[0]) for r in a] != [_digest(r.images[0]) for r in c]


def test_seed_defaults_to_config_seed():
    assert [_digest(r.images[0]) for r in _records({"n_items": 3}, seed=5)] == [
        _digest(r.images[0]) for r in _records({"n_items": 3, "seed": 5})
    ]


def test_counts_follow_shares_and_count_is_n_items():
    adapter = get_adapter("p", {"adapter": "panels", "options": {"n_items": 50}})
    assert adapter.count() == 50
    types = [r.meta["question_type"] for r in adapter.records()]
    assert {t: types.count(t) for t in S.QUESTION_TYPES} == {"attribute": 20, "comparison": 20, "arithmetic": 10}
    exact = get_adapter("p", {"adapter": "panels", "options": {"counts": {"attribute": 2, "arithmetic": 1}}})
    assert exact.count() == 3
    assert sorted(r.meta["question_type"] for r in exact.records()) == ["arithmetic", "attribute", "attribute"]


def test_panel_boxes_tile_the_image():
    assert S.panel_labels(2, 2) == ["top-left", "top-right", "bottom-left", "bottom-right"]
    assert S.panel_boxes(128, 128, 2, 2) == [(0, 0, 64, 64), (64, 0, 128, 64), (0, 64, 64, 128), (64, 64, 128, 128)]
    assert S.panel_labels(1, 3) == ["left", "middle", "right"]
    boxes = S.panel_boxes(100, 90, 3, 4)
    cover = np.zeros((90, 100), dtype=int)
    for x0, y0, x1, y1 in boxes:
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    assert len(set(S.panel_labels(3, 4))) == 12


def test_each_shape_lies_inside_its_panel_in_its_palette_colour():
    opts = S.resolve_options({"n_items": 20, "seed": 1})
    for item in S.generate_items(opts):
        pixels = np.asarray(item.image)
        background = np.array(opts.background)
        for panel in item.panels:
            x0, y0, x1, y1 = panel.box
            inside = pixels[y0:y1, x0:x1].reshape(-1, 3)
            drawn = inside[(inside != background).any(axis=1)]
            # the standard variant draws exactly the palette colour, and nothing else, in each panel
            assert len(drawn) > 0.1 * inside.shape[0]
            assert (drawn == np.array(opts.colours[panel.colour])).all()
            assert panel.rgb == opts.colours[panel.colour]


def test_regions_and_gold_steps_reference_the_panels_read():
    for rec in _records({"n_items": 30, "seed": 2}):
        meta = rec.meta
        panels = meta["panels"]
        steps = meta["gold_steps"]
        assert meta["gold_text"] == "\n".join(s["text"] for s in steps)
        assert steps[-1]["kind"] == "answer" and steps[-1]["text"] == f"Answer: {rec.answer}"
        if meta["question_type"] == "arithmetic":
            assert rec.regions == [] and rec.task_type == "symbolic"
            assert all(s["regions"] == [] for s in steps)
            assert int(rec.answer) == sum(meta["operands"])
            continue
        assert rec.task_type == "visual_reference"
        expected = 1 if meta["question_type"] == "attribute" else 2
        assert len(rec.regions) == expected
        for k, region in enumerate(rec.regions):
            panel = panels[meta["evidence_panels"][k]]
            assert list(region.box) == panel["box"] and region.label == panel["label"]
            # step k+1 reads region k, names its panel and states the panel's colour
            assert steps[k]["regions"] == [k]
            assert steps[k]["text"] == f"Step {k + 1}: The {panel['label']} shape is {panel['colour']}."
            assert panel["label"] in rec.question
        if meta["question_type"] == "attribute":
            assert rec.answer == panels[meta["evidence_panels"][0]]["colour"]
        else:
            a, b = (panels[p]["colour"] for p in meta["evidence_panels"])
            assert rec.answer == ("yes" if a == b else "no")
            assert steps[2]["regions"] == [] and steps[2]["depends"] == [0, 1]


def test_comparison_answers_are_balanced():
    answers = [r.answer for r in _records({"counts": {"comparison": 200}, "seed": 9})]
    assert 70 <= answers.count("yes") <= 130


def test_shape_questions():
    recs = _records({"n_items": 20, "attributes": ["shape"], "shares": {"attribute": 1, "comparison": 1}})
    for rec in recs:
        panels = rec.meta["panels"]
        first = panels[rec.meta["evidence_panels"][0]]
        assert rec.meta["gold_steps"][0]["text"] == f"Step 1: The {first['label']} panel holds a {first['shape']}."
        if rec.meta["question_type"] == "attribute":
            assert rec.answer == first["shape"]


def test_hidden_solution_says_hidden_and_abstains():
    opts = S.resolve_options({"counts": {"comparison": 1}, "seed": 1})
    item = next(S.generate_items(opts))
    a, b = (item.panels[p].label for p in item.evidence)
    text, steps = S.gold_solution(item, [1])
    assert text.splitlines()[0] == f"Step 1: The {a} shape is {item.panels[item.evidence[0]].colour}."
    assert text.splitlines()[1] == f"Step 2: The {b} panel is hidden."
    assert text.endswith("Answer: unknown") and len(steps) == 3
    # hiding nothing gives the gold text
    assert S.gold_solution(item)[0] == P.item_meta(item)["gold_text"]


def test_training_items_are_fresh_and_disjoint_from_test_items():
    opts = S.resolve_options({"n_items": 40, "seed": 7})
    test = {_digest(i.image) for i in S.generate_items(opts)}
    train = S.training_items(opts, 7, 0, 40)  # even the same seed: another stream
    assert not test & {_digest(i.image) for i in train}
    again = S.training_items(opts, 7, 20, 20)
    assert [_digest(i.image) for i in again] == [_digest(i.image) for i in train[20:]]


def test_difficulty_knobs_change_the_drawn_colours():
    hard = S.resolve_options({"n_items": 10, "colour_mix": 0.6, "colour_jitter": 10})
    changed = [p.rgb != hard.colours[p.colour] for item in S.generate_items(hard) for p in item.panels]
    assert sum(changed) > 0.8 * len(changed)
    noisy = S.resolve_options({"n_items": 1, "noise": 20, "blur": 1.0, "clutter": 3})
    assert len(np.unique(np.asarray(next(S.generate_items(noisy)).image).reshape(-1, 3), axis=0)) > 100


def test_hide_boxes_fill_matches_the_masks_stage():
    masks = pytest.importorskip("peekaboo.masks")
    item = next(S.generate_items(S.resolve_options({"n_items": 1})))
    box = (64.0, 0.0, 128.0, 64.0)
    for fill in ("gray", "black"):
        ours = np.asarray(S.hide_boxes(item.image, [box], fill))
        hidden = masks.rect_mask([masks.pixel_rect(box, 128, 128)], 128, 128)
        theirs = np.asarray(masks._Filler([item.image], {}, 0, "d", "i").fill(0, hidden, fill, "drop:0"))
        assert (ours == theirs).all()
        assert (ours[64:, :] == np.asarray(item.image)[64:, :]).all()


@pytest.mark.parametrize(
    "response, correct, abstained, parsed",
    [
        ("Step 1: The top-left shape is red.\nAnswer: red", True, False, "red"),
        ("Step 1: ...\nAnswer: Red.", True, False, "red"),
        ("Answer: blue\nAnswer: red", True, False, "red"),  # the last answer counts
        ("Step 1: The top-left shape is red.\nAnswer: blue", False, False, "blue"),
        ("Step 1: The top-left panel is hidden.\nAnswer: unknown", False, True, None),
        ("Step 1: The top-left shape is red.", False, False, None),
    ],
)
def test_score_colour(response, correct, abstained, parsed):
    score = get_scorer("panels").score({"answer": "red", "answer_type": "text"}, response)
    assert score.correct is correct and score.abstained is abstained
    if parsed is not None:
        assert score.answer_text == parsed


def test_score_numbers_and_yes_no():
    scorer = get_scorer("panels")
    assert scorer.score({"answer": "12", "answer_type": "integer"}, "Step 1: 5 + 7 = 12.\nAnswer: 12").correct
    assert not scorer.score({"answer": "12", "answer_type": "integer"}, "Answer: 13").correct
    assert scorer.score({"answer": "no", "answer_type": "yes_no"}, "Answer: No").correct
    assert not scorer.score({"answer": "no", "answer_type": "yes_no"}, "Answer: yes").correct


def test_score_takes_thinking_open_and_never_scores_a_cut_off_chain():
    scorer = get_scorer("panels")
    item = {"answer": "red", "answer_type": "text"}
    # panels' reference models do not think: without the flag a response is all answer, as before
    assert scorer.score(item, "Step 1: The top-left shape is red.\nAnswer: red", thinking_open=False).correct
    cut = scorer.score(item, "Step 1: The top-left shape is red.\nAnswer: red", thinking_open=True)
    assert (cut.answer_text, cut.correct, cut.truncated) == (None, False, True)
    done = scorer.score(item, "The top-left shape is red.</think>\nAnswer: red", thinking_open=True)
    assert (done.answer_text, done.correct, done.truncated) == ("red", True, False)


@pytest.mark.parametrize(
    "options, key",
    [
        ({"colour": {}}, "datasets.d.options.colour"),
        ({"grid": [1, 1]}, "datasets.d.options.grid"),
        ({"shapes": ["hexagon"]}, "datasets.d.options.shapes"),
        ({"shape_size": [0.9, 0.2]}, "datasets.d.options.shape_size"),
        ({"colours": {"red": [300, 0, 0], "blue": [0, 0, 255]}}, "datasets.d.options.colours.red"),
        ({"n_items": -1}, "datasets.d.options.n_items"),
        ({"shares": {"attribute": 0, "comparison": 0, "arithmetic": 0}}, "datasets.d.options.shares"),
    ],
)
def test_bad_options_name_the_key(options, key):
    with pytest.raises(AdapterError, match=key.replace(".", r"\.")):
        get_adapter("d", {"adapter": "panels", "options": options})
