import json

import pytest

from peekaboo.datasets import RawItem, Reject, get_adapter
from peekaboo.datasets.jsonl import JsonlAdapter
from peekaboo.scoring import get_scorer

from fixtures.items import good_record, jsonl_spec, write_jsonl


def records_of(tmp_path, lines, **options):
    path = write_jsonl(tmp_path / "data" / "d.jsonl", lines)
    spec = jsonl_spec(path)
    spec["options"].update(options)
    return list(get_adapter("d", spec, base_dir=tmp_path).records())


def only_reject(recs) -> Reject:
    assert len(recs) == 1 and isinstance(recs[0], Reject), recs
    return recs[0]


def test_registered_under_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good_record("a")])
    assert isinstance(get_adapter("d", jsonl_spec(path)), JsonlAdapter)


def test_good_record_fields(tmp_path):
    rec = good_record("q1", meta={"source": "mine"}, task_type="symbolic", extra_key=5)
    (item,) = records_of(tmp_path, [rec])
    assert isinstance(item, RawItem)
    assert item.item_id == "q1"
    assert item.images == [tmp_path / "data" / "img" / "a.png"]  # relative to the JSONL file
    assert item.question == "What colour is the square?\nChoices:\n(A) red\n(B) blue"
    assert item.choices == ["red", "blue"]
    assert (item.answer, item.answer_type) == ("A", "multi_choice")
    assert item.task_type == "symbolic"
    assert [(r.label, r.box, r.image) for r in item.regions] == [
        ("square", (4.0, 4.0, 20.0, 20.0), 0),
        ("circle", (30.0, 10.0, 50.0, 30.0), 0),
    ]
    assert item.meta == {"source": "mine", "extra": {"extra_key": 5}}
    assert item.source_line == 1


def test_id_defaults_to_line_number_and_blank_lines_are_skipped(tmp_path):
    rec = {"image": "x.png", "question": "How many?", "answer": 3}
    items = records_of(tmp_path, [rec, "", rec])
    assert [(i.item_id, i.source_line, i.answer, i.answer_type) for i in items] == [
        ("1", 1, "3", "integer"),
        ("3", 3, "3", "integer"),
    ]


def test_count_is_number_of_non_empty_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good_record("a"), "", "   ", "{broken", good_record("b")])
    assert get_adapter("d", jsonl_spec(path)).count() == 3


def test_images_list_text_only_and_image_root(tmp_path):
    multi = {"id": "m", "images": ["p/1.png", "p/2.png"], "question": "Same?", "answer": "yes",
             "regions": [{"label": "r", "box": [0, 0, 2, 2], "image": 1}]}
    text_only = {"id": "t", "question": "2+2?", "answer": "4"}
    m, t = records_of(tmp_path, [multi, text_only], image_root=str(tmp_path / "root"))
    assert m.images == [tmp_path / "root" / "p" / "1.png", tmp_path / "root" / "p" / "2.png"]
    assert m.regions[0].image == 1 and m.answer_type == "yes_no"
    assert t.images == [] and t.regions == []


def test_add_choices_off_keeps_question(tmp_path):
    (item,) = records_of(tmp_path, [good_record("a")], add_choices=False)
    assert item.question == "What colour is the square?"


def test_not_json_line_rejected_with_line_number_and_others_go_on(tmp_path):
    recs = records_of(tmp_path, [good_record("a"), '{"id": "b", "question": ', good_record("c")])
    assert [type(r).__name__ for r in recs] == ["RawItem", "Reject", "RawItem"]
    assert recs[1].source_line == 2 and recs[1].reason.startswith("not JSON")


def test_json_that_is_not_an_object_rejected(tmp_path):
    r = only_reject(records_of(tmp_path, ["[1, 2]"]))
    assert r.reason.startswith("not JSON") and r.source_line == 1


@pytest.mark.parametrize("key", ["question", "answer"])
def test_missing_required_key_rejected(tmp_path, key):
    rec = good_record("a")
    del rec[key]
    r = only_reject(records_of(tmp_path, [rec]))
    assert r.reason == f"missing key: {key}" and r.item_id == "a" and r.source_line == 1


@pytest.mark.parametrize(
    "change,reason_start",
    [
        ({"regions": [{"label": "x", "box": [1, 2, 3]}]}, "bad region 0: box must be four numbers"),
        ({"regions": [{"label": "x", "box": [0, 0, 1, 1], "image": 2}]}, "bad region 0: image index 2"),
        ({"regions": "everywhere"}, "bad regions"),
        ({"answer_type": "colour"}, "bad answer_type"),
        ({"answer": "purple"}, "bad answer: answer 'purple' is neither"),
        ({"task_type": "visual"}, "bad task_type"),
        ({"meta": [1]}, "bad meta"),
        ({"images": ["b.png"]}, "give either image or images"),
        ({"id": ""}, "bad id"),
    ],
)
def test_malformed_fields_rejected_with_reason(tmp_path, change, reason_start):
    r = only_reject(records_of(tmp_path, [good_record("a", **change)]))
    assert r.reason.startswith(reason_start), r.reason


def test_check_names_the_path_key(tmp_path):
    spec = jsonl_spec(tmp_path / "nope.jsonl")
    problems = get_adapter("mine", spec).check()
    assert len(problems) == 1 and problems[0].startswith("datasets.mine.options.path: no such file")


def test_score_uses_item_answer_type():
    scorer = get_scorer("jsonl")
    mc = {"answer": "B", "answer_type": "multi_choice", "choices": ["red", "blue"]}
    assert scorer.score(mc, "Step 1: look.\nAnswer: blue").correct is True
    assert scorer.score(mc, "Answer: (A)").correct is False
    s = scorer.score(mc, "Answer: I cannot see it")
    assert s.abstained and s.correct is False
    assert scorer.score({"answer": "12", "answer_type": "integer", "choices": None}, "Answer: 12 cups").correct
    assert scorer.score({"answer": "no", "answer_type": "yes_no", "choices": None}, "Answer: No.").correct


def test_lines_round_trip_unicode(tmp_path):
    rec = good_record("é", question="Quelle couleur ?", answer="bleu", choices=["rouge", "bleu"])
    (item,) = records_of(tmp_path, [json.dumps(rec, ensure_ascii=False)])
    assert item.item_id == "é" and item.answer == "B"


@pytest.mark.parametrize(
    "change,reason_start",
    [
        ({"choices": "red, blue"}, "bad choices: must be a non-empty list"),
        ({"choices": {"A": "red", "B": "blue"}}, "bad choices: must be a non-empty list"),
        ({"answer": "3.5", "answer_type": "integer", "choices": None}, "bad answer: answer '3.5' is not an integer"),
        ({"answer": "three", "answer_type": "integer", "choices": None}, "bad answer: answer 'three' is not a number"),
        ({"answer": 2.5, "answer_type": "integer", "choices": None}, "bad answer: answer 2.5 is not an integer"),
        ({"answer": "2014, 2016", "answer_type": "list", "choices": None}, "bad answer: a list answer must be a JSON array"),
        ({"answer": [[1], 2], "answer_type": "list", "choices": None}, "bad answer: a list answer holds text or numbers"),
    ],
)
def test_values_of_the_wrong_kind_are_rejected_not_reread(tmp_path, change, reason_start):
    r = only_reject(records_of(tmp_path, [good_record("a", **change)]))
    assert r.reason.startswith(reason_start), r.reason
    assert r.item_id == "a" and r.source_line == 1


def test_list_answer_that_is_a_list_is_kept(tmp_path):
    (item,) = records_of(tmp_path, [good_record("a", answer=[2014, 2016], answer_type="list", choices=None)])
    assert item.answer == "2014, 2016" and item.answer_type == "list"


def test_line_that_is_not_utf8_is_rejected_with_its_number_and_the_rest_is_read(tmp_path):
    path = tmp_path / "data" / "d.jsonl"
    path.parent.mkdir(parents=True)
    good = json.dumps(good_record("a")).encode()
    bad = json.dumps(good_record("b", question="caf\u00e9?")).encode().replace(b"\\u00e9", b"\xe9")  # Latin-1 é
    path.write_bytes(good + b"\n" + bad + b"\n" + json.dumps(good_record("c")).encode() + b"\n")
    recs = list(get_adapter("d", jsonl_spec(path), base_dir=tmp_path).records())
    assert [type(r).__name__ for r in recs] == ["RawItem", "Reject", "RawItem"]
    assert recs[1].source_line == 2 and recs[1].reason.startswith("not valid UTF-8: byte 0xe9")
    assert [r.item_id for r in recs if isinstance(r, RawItem)] == ["a", "c"]


def test_byte_order_mark_is_read_as_such_and_the_first_record_kept(tmp_path):
    path = tmp_path / "data" / "d.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(good_record("a")).encode() + b"\n"
                     + json.dumps(good_record("b")).encode() + b"\n")
    recs = list(get_adapter("d", jsonl_spec(path), base_dir=tmp_path).records())
    assert [(r.item_id, r.source_line) for r in recs] == [("a", 1), ("b", 2)]
    assert all(isinstance(r, RawItem) for r in recs)
    assert get_adapter("d", jsonl_spec(path), base_dir=tmp_path).count() == 2


def test_score_reads_only_what_the_model_finally_says():
    scorer = get_scorer("jsonl")
    mc = {"answer": "B", "answer_type": "multi_choice", "choices": ["red", "blue"]}
    assert scorer.score(mc, "<think>Answer: A? red?</think>\n\\boxed{B}").answer_text == "B"
    cut = scorer.score(mc, "It looks blue, so Answer: B", thinking_open=True)
    assert (cut.answer_text, cut.correct, cut.truncated) == (None, False, True)
    assert scorer.score(mc, "It looks blue, so Answer: B").correct is True  # a model that does not think
