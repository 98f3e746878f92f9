"""VisArgs: the adapter (boxes from XYWH, premises as labelled regions, expected dependencies, choices) and its
scorer."""

import json
import logging

import pytest

from fixtures import benchmarks as fx
from peekaboo.datasets import RawItem, Reject, get_adapter
from peekaboo.datasets.visargs import expected_dependencies, parse_reasoning_step, xywh_to_xyxy
from peekaboo.scoring import get_scorer

README_ID = "5e7f108728fb848eb8e3cccfdd62ef8f"
SCORER = get_scorer("visargs")


def adapter(options, seed=0):
    return get_adapter("visargs", {"adapter": "visargs", "options": options}, seed=seed)


def items_of(a):
    return {r.item_id: r for r in a.records() if isinstance(r, RawItem)}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("va")
    path = fx.write_visargs(root)
    a = adapter({"path": str(path)})  # images/ beside the annotation is the default folder
    return a, items_of(a), path


def test_every_record_becomes_an_item_with_its_image(written):
    a, items, path = written
    assert a.check() == [] and a.count() == 5
    assert list(items) == [README_ID, "aabbcc0001", "ddeeff0002", "1122330003", "4455660004"]
    assert items[README_ID].images == [path.parent / "images" / f"{README_ID}.jpg"]


def test_readme_boxes_become_xyxy_regions_labelled_by_premise(written):
    _, items, _ = written
    item = items[README_ID]
    assert [r.label for r in item.regions] == ["VP1", "VP2", "VP3"]
    assert [r.box for r in item.regions] == [(302, 554, 374, 595), (223, 589, 452, 640), (46, 219, 453, 640)]
    assert item.meta["premises"]["VP3"] == "The bag is tied at the top, enclosing the plant."
    assert item.meta["premises"]["CP2"].startswith("Plastic bags are not a natural environment")
    assert xywh_to_xyxy({"h": 41, "startX": 302, "startY": 554, "w": 72}) == (302, 554, 374, 595)


def test_reasoning_steps_become_expected_dependencies(written):
    _, items, _ = written
    deps = items[README_ID].meta["expected_dependencies"]
    assert [(d["step"], d["uses"]) for d in deps] == [
        ("IC1", ["VP1", "VP2", "CP1"]),
        ("IC2", ["VP3", "CP2", "CP3"]),
        ("C", ["IC1", "IC2"]),
    ]
    # the conclusion rests on every premise through the intermediate conclusions
    assert [(d["visual"], d["regions"]) for d in deps] == [
        (["VP1", "VP2"], [0, 1]),
        (["VP3"], [2]),
        (["VP1", "VP2", "VP3"], [0, 1, 2]),
    ]
    assert deps[0]["text"].startswith("The small plant is growing")


def test_malformed_step_is_kept_and_listed():
    assert parse_reasoning_step("(VP1 -> IC1): text") == {"step": "IC1", "uses": ["VP1"], "text": "text"}
    assert parse_reasoning_step("VP1 leads to IC1") is None
    deps, unparsed = expected_dependencies(["(VP1 -> IC1): a", "VP1 leads to C"], ["VP1"])
    assert unparsed == ["VP1 leads to C"] and deps[1]["step"] is None and deps[1]["uses"] == []


def test_record_without_b_box_is_an_item_without_regions_and_counted(tmp_path, caplog):
    path = fx.write_visargs(tmp_path)
    with caplog.at_level(logging.INFO, logger="peekaboo"):
        items = items_of(adapter({"path": str(path)}))
    item = items["ddeeff0002"]
    assert item.regions == [] and item.meta["regions_missing"] == "no b_box"
    assert item.meta["expected_dependencies"][0]["regions"] == []
    assert "1 record(s) without b_box" in caplog.text


def test_box_count_mismatch_and_malformed_box_reject_the_record(tmp_path):
    recs = [dict(fx.VISARGS_RECORDS[1]), dict(fx.VISARGS_RECORDS[1])]
    recs[0]["b_box"] = recs[0]["b_box"][:1]
    recs[1]["b_box"] = [recs[1]["b_box"][0], {"h": 10, "startX": "left", "startY": 0, "w": 5}]
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(recs))
    (tmp_path / "images").mkdir()
    out = list(adapter({"path": str(path)}).records())
    assert [type(r) for r in out] == [Reject, Reject]
    assert "1 boxes for 2 visual_premises" in out[0].reason and out[0].source_line == 1
    assert out[1].reason.startswith("b_box[1]") and out[1].item_id == "aabbcc0001-2"


def test_box_outside_the_image_is_handed_over_and_rejected_by_the_items_stage(tmp_path):
    path = fx.write_visargs(tmp_path)
    item = items_of(adapter({"path": str(path)}))["1122330003"]
    assert item.regions[1].box == (250, 150, 330, 250)  # the 300x200 image ends at x=300, y=200
    items, rejects = fx.build_items(tmp_path, "visargs", "visargs", {"path": str(path)})
    reasons = dict(zip(rejects["item_id"], rejects["reason"]))
    assert reasons["1122330003"].startswith("box outside image")
    assert reasons["4455660004"].startswith("missing image")  # never downloaded
    assert "ddeeff0002" in set(items["item_id"])  # no b_box: kept, without regions
    assert list(items.loc[items["item_id"] == README_ID, "task_type"]) == ["visual_reference"]


def test_image_map_and_stem_fallback(tmp_path):
    path = fx.write_visargs(tmp_path)
    images = path.parent / "images"
    (images / "aabbcc0001.png").rename(images / "aabbcc0001.webp")  # re-encoded copy: found by its stem
    (images / f"{README_ID}.jpg").rename(images / "plant.jpg")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({fx.VISARGS_RECORDS[0]["url"]: "plant.jpg"}))
    items = items_of(adapter({"path": str(path), "images": str(images), "image_map": str(mapping)}))
    assert items[README_ID].images == [images / "plant.jpg"]
    assert items["aabbcc0001"].images == [images / "aabbcc0001.webp"]
    csv_map = tmp_path / "map.csv"
    csv_map.write_text(f"url,file\n{fx.VISARGS_RECORDS[0]['url']},plant.jpg\n")
    items = items_of(adapter({"path": str(path), "images": str(images), "image_map": str(csv_map)}))
    assert items[README_ID].images == [images / "plant.jpg"]


def test_missing_image_folder_is_a_config_problem(tmp_path):
    path = tmp_path / "annotation.json"
    path.write_text("[]")
    problems = adapter({"path": str(path)}).check()
    assert any("datasets.visargs.options.images" in p for p in problems)


def test_same_image_twice_gets_distinct_ids(tmp_path):
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps([fx.VISARGS_RECORDS[1], fx.VISARGS_RECORDS[1]]))
    (tmp_path / "images").mkdir()
    assert [r.item_id for r in adapter({"path": str(path)}).records()] == ["aabbcc0001", "aabbcc0001-2"]


# --- question and scoring ------------------------------------------------------------------------


def test_choices_hold_the_gold_conclusion_and_are_seeded(written, tmp_path):
    a, items, path = written
    for item in items.values():
        assert item.answer_type == "multi_choice" and len(item.choices) == 4
        gold = item.choices["ABCD".index(item.answer)]
        assert gold == item.meta["conclusion"]
        assert len(set(item.choices)) == 4
        assert "Reason step by step" in item.question and f"({item.answer}) {gold}" in item.question
    again = items_of(adapter({"path": str(path)}, seed=0))
    assert {k: v.choices for k, v in again.items()} == {k: v.choices for k, v in items.items()}
    other = items_of(adapter({"path": str(path)}, seed=1))
    assert {k: v.choices for k, v in other.items()} != {k: v.choices for k, v in items.items()}


def test_free_form_conclusion_has_no_rule_based_correctness(tmp_path):
    path = fx.write_visargs(tmp_path)
    a = adapter({"path": str(path), "choices": 0})
    item = items_of(a)[README_ID]
    assert item.choices is None and item.answer_type == "text" and item.answer == item.meta["conclusion"]
    s = SCORER.score({"answer": item.answer, "choices": None}, "Step 1: ...\nAnswer: Nature is trapped by people.")
    assert s.correct is None and s.answer_text == "Nature is trapped by people."


def test_score_reads_the_letter_after_reasoning(written):
    _, items, _ = written
    item = items[README_ID]
    row = {"answer": item.answer, "choices": item.choices}
    wrong = "A" if item.answer != "A" else "B"
    assert SCORER.score(row, f"<think>VP1: a plant in a bag.</think>\nAnswer: {item.answer}").correct is True
    assert SCORER.score(row, f"Answer: {wrong}").correct is False
    cut = SCORER.score(row, "<think>The plant is in a bag, so")
    assert cut.answer_text is None and cut.correct is False


def test_chain_cut_off_in_its_thinking_is_truncated_even_with_a_letter_inside(written):
    _, items, _ = written
    item = items[README_ID]
    row = {"answer": item.answer, "choices": item.choices}
    for response, thinking_open in ((f"The plant is trapped. Answer: {item.answer}", True),
                                    (f"<think>The plant is trapped. Answer: {item.answer}", False)):
        s = SCORER.score(row, response, thinking_open=thinking_open)
        assert (s.answer_text, s.correct, s.truncated) == (None, False, True)
    s = SCORER.score(row, f"The plant is trapped.\n</think>\n\n\\boxed{{{item.answer}}}", thinking_open=True)
    assert (s.answer_text, s.correct, s.truncated) == (item.answer, True, False)
    free = SCORER.score({"answer": "x", "choices": None}, "Nature is trapped", thinking_open=True)
    assert free.truncated and free.answer_text is None and free.correct is None


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("visual_premises", "A polar bear stands on a tiny ice floe.", "visual_premises is a str"),
        ("commonsense_premises", {"CP1": "Greenhouse gases warm the planet."}, "commonsense_premises is a dict"),
        ("reasoning_steps", "(VP1 -> C): The bear has no ice.", "reasoning_steps is a str"),
        ("conclusion", ["Pollution melts the ice."], "conclusion is a list, not text"),
    ],
)
def test_fields_of_the_wrong_kind_are_rejected_not_reread(tmp_path, field, value, reason):
    records = [dict(r) for r in fx.VISARGS_RECORDS[1:3]]
    records[0][field] = value
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(records))
    bad, good = list(adapter({"path": str(path), "images": str(tmp_path)}).records())
    assert isinstance(bad, Reject) and reason in bad.reason, bad.reason
    assert bad.item_id == "aabbcc0001" and bad.source_line == 1
    assert isinstance(good, RawItem) and good.item_id == "ddeeff0002"
