"""MathVista: the adapter (both published formats) and its scorer (the official normalisation, rule-based extraction)."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from fixtures import benchmarks as fx
from peekaboo.datasets import RawItem, Reject, get_adapter
from peekaboo.scoring import get_scorer
from peekaboo.scoring.mathvista import nearest_choice, normalize_extraction

SCORER = get_scorer("mathvista")


def adapter(options, seed=0):
    return get_adapter("mathvista", {"adapter": "mathvista", "options": options}, seed=seed)


def items_of(a):
    return {r.item_id: r for r in a.records() if isinstance(r, RawItem)}


def row(item: RawItem) -> dict:
    """The item as the items table holds it (meta as JSON text), which is what score() receives."""
    return {"item_id": item.item_id, "answer": item.answer, "answer_type": item.answer_type,
            "choices": item.choices, "meta": json.dumps(item.meta)}


@pytest.fixture(scope="module")
def parquet_items(tmp_path_factory):
    path = fx.write_mathvista_parquet(tmp_path_factory.mktemp("mv"))
    a = adapter({"path": str(path)})
    return a, items_of(a)


def test_parquet_reads_every_problem_with_its_embedded_image(parquet_items):
    a, items = parquet_items
    assert a.check() == []
    assert a.count() == 6
    assert list(items) == ["1", "2", "5", "7", "901", "902"]
    img = Image.open(io.BytesIO(items["1"].images[0]))
    assert img.size == (60, 40)
    assert items["2"].answer_type == "integer" and items["2"].answer == "1000"
    assert items["901"].answer_type == "float" and items["901"].answer == "0.33"
    assert items["902"].answer_type == "list" and items["902"].answer == "[2007, 2008]"


def test_gold_multiple_choice_answer_is_the_choice_text(parquet_items):
    _, items = parquet_items
    assert items["7"].answer_type == "multi_choice"
    assert items["7"].answer == "quarter"
    assert items["7"].choices == ["half", "quarter", "o'clock", "quarter to", "quarter past"]


def test_float_precision_is_cast_to_int(parquet_items):
    _, items = parquet_items
    assert items["1"].meta["precision"] == 1 and isinstance(items["1"].meta["precision"], int)
    assert items["901"].meta["precision"] == 2
    # the official normaliser receives the stored float
    assert normalize_extraction("0.3333", None, "free_form", "float", 2.0) == "0.33"
    assert normalize_extraction("1.16", None, "free_form", "float", 1.0) == "1.2"


def test_prompt_is_the_published_query(parquet_items):
    _, items = parquet_items
    assert items["5"].question == (
        "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
        "Question: Find $m\\angle H$\nChoices:\n(A) 97\n(B) 102\n(C) 107\n(D) 122"
    )
    assert items["2"].question.endswith("Question: what is the total volume of the measuring cup? (Unit: g)")


def test_default_task_type_is_symbolic(parquet_items):
    a, items = parquet_items
    assert type(a).default_task_type == "symbolic"
    assert all(i.task_type is None for i in items.values())  # the dataset default (or the config) decides


def test_github_json_with_image_folder_builds_the_same_query(tmp_path, parquet_items):
    _, from_parquet = parquet_items
    path = fx.write_mathvista_json(tmp_path)
    a = adapter({"path": str(path)})
    assert a.count() == 6
    items = items_of(a)
    assert list(items) == list(from_parquet)
    for pid, item in items.items():
        assert item.question == from_parquet[pid].question
        assert item.answer == from_parquet[pid].answer
        assert Path(item.images[0]).is_file()
    assert Path(items["5"].images[0]) == path.parent / "images" / "5.jpg"


def test_missing_image_file_is_handed_over_for_the_items_stage_to_reject(tmp_path):
    path = fx.write_mathvista_json(tmp_path, skip_images=("7",))
    items = items_of(adapter({"path": str(path)}))
    assert not Path(items["7"].images[0]).exists()
    assert str(items["7"].images[0]).endswith("images/7.jpg")
    kept, rejects = fx.build_items(tmp_path, "mathvista", "mathvista", {"path": str(path)})
    assert list(rejects["item_id"]) == ["7"] and rejects["reason"][0].startswith("missing image")
    assert len(kept) == 5 and set(kept["task_type"]) == {"symbolic"}


def test_parquet_items_pass_the_items_stage_with_symbolic_type_and_their_gold(tmp_path):
    path = fx.write_mathvista_parquet(tmp_path)
    kept, rejects = fx.build_items(tmp_path, "mathvista", "mathvista", {"path": str(path)})
    assert len(rejects) == 0
    assert list(kept["answer"]) == ["1.2", "1000", "97", "quarter", "0.33", "[2007, 2008]"]
    assert list(kept["width"]) == [60, 48, 64, 40, 50, 50]
    assert set(kept["task_type"]) == {"symbolic"}
    assert json.loads(kept["meta"][0])["metadata"]["source"] == "fixture"


def test_multi_choice_answer_not_among_choices_is_rejected(tmp_path):
    rows = [r for r in fx._mathvista_rows(with_bytes=True) if r["pid"] == "5"]
    rows[0]["answer"] = "99"
    rows.append({**rows[0], "pid": "6", "question": None})
    path = fx.write_mathvista_parquet(tmp_path, rows)
    out = list(adapter({"path": str(path)}).records())
    assert all(isinstance(r, Reject) for r in out)
    assert out[0].item_id == "5" and "'99' is not one of the choices" in out[0].reason and out[0].source_line == 1
    assert out[1].item_id == "6" and "missing 'question'" in out[1].reason


# --- scoring: the official normalisation on worked examples -------------------------------------


def test_nearest_choice_by_edit_distance_first_on_ties():
    assert nearest_choice("quater past", ["half", "quarter", "o'clock", "quarter to", "quarter past"]) == "quarter past"
    assert nearest_choice("ab", ["aa", "bb"]) == "aa"


def test_official_normalisation_examples():
    choices = ["97", "102", "107", "122"]
    assert normalize_extraction("(B) 102", choices, "multi_choice", "text", None) == "102"
    assert normalize_extraction("C", choices, "multi_choice", "text", None) == "107"
    assert normalize_extraction("about 120", choices, "multi_choice", "text", None) == "122"
    assert normalize_extraction("1000.0", None, "free_form", "integer", None) == "1000"
    assert normalize_extraction("3.7", None, "free_form", "integer", None) == "3"  # int(float()) truncates
    assert normalize_extraction("abc", None, "free_form", "integer", None) is None
    assert normalize_extraction("[1, 2]", None, "free_form", "list", None) == "[1, 2]"


@pytest.mark.parametrize(
    "pid, response, parsed, correct",
    [
        ("5", "The angles sum to 360 degrees, so H is 97.\nAnswer: (A)", "97", True),
        ("5", "Answer: B", "102", False),
        ("5", "Answer: 97", "97", True),
        ("5", "<think>Maybe (C)? No.</think>\nThe measure of angle H is 97 degrees.", "97", True),
        ("7", "The long hand points at three. Answer: quarter past", "quarter past", False),
        ("7", "Answer: (B) quarter", "quarter", True),
        ("2", "The cup is marked up to 1,000 g.\nAnswer: 1000 g", "1000", True),
        ("2", "so 600 + 400 = 1000", "1000", True),  # unmarked: the last number
        ("1", "d = v * sqrt(m/k) = 0.0115 m = 1.15 cm.\nAnswer: 1.16", "1.2", True),
        ("1", "Answer: 1.14", "1.1", False),
        ("1", "\\boxed{1.2}", "1.2", True),
        ("901", "Answer: 0.333", "0.33", True),
        ("902", "Answer: [2007,2008]", "[2007, 2008]", True),
        ("902", "Answer: [2008, 2007]", "[2008, 2007]", False),
    ],
)
def test_score_worked_examples(parquet_items, pid, response, parsed, correct):
    _, items = parquet_items
    s = SCORER.score(row(items[pid]), response)
    assert (s.answer_text, s.correct) == (parsed, correct)


def test_chain_cut_off_inside_thinking_is_unparsed_and_wrong(parquet_items):
    _, items = parquet_items
    s = SCORER.score(row(items["5"]), "<think>Angle H looks like 97 degrees, Answer: (A) would")
    assert (s.answer_text, s.correct, s.truncated) == (None, False, True)
    # the template opened the block: no tag at all, and a stated answer inside the thinking is not an answer
    s = SCORER.score(row(items["2"]), "The cup is marked 1000 g.\nAnswer: 1000", thinking_open=True)
    assert (s.answer_text, s.correct, s.truncated) == (None, False, True)
    s = SCORER.score(row(items["2"]), "The cup is marked 1000 g.\n</think>\n\nAnswer: 1000", thinking_open=True)
    assert (s.answer_text, s.correct, s.truncated) == ("1000", True, False)


@pytest.mark.parametrize(
    "pid, response, parsed, correct",
    [
        ("5", "Angle H is 97.\n</think>\n\n$\\boxed{\\text{A}}$", "97", True),
        ("5", "<think>(B)?</think><answer><|begin_of_box|>A<|end_of_box|></answer>", "97", True),
        ("5", "Answer: B\nOn reflection the arcs are equal.\nAnswer: A", "97", True),  # the last stated answer
        ("5", "The correct answer is (C) 107.", "107", False),
        ("2", "1000.7", "1000", True),  # official: int(float(x)) truncates
        ("2", "Answer: 1,000 g", "1000", True),
        ("1", "So d = \\frac{6}{5} cm.\nAnswer: \\frac{6}{5}", "1.2", True),
        ("1", 'The answer is "1.2".', "1.2", True),
        ("902", "Sales passed 100 in 2007 and 2008.\nAnswer: 2007 and 2008", "[2007, 2008]", True),
        ("7", "", None, False),  # empty: unparsed (the official normalisation would pick the shortest choice)
        ("7", "The hands are hidden.\nAnswer: unknown", None, False),
    ],
)
def test_score_thinking_latex_boxes_and_departures(parquet_items, pid, response, parsed, correct):
    _, items = parquet_items
    s = SCORER.score(row(items[pid]), response)
    assert (s.answer_text, s.correct) == (parsed, correct)


# --- malformed records ---------------------------------------------------------------------------


def _json_with(tmp_path, pid, **change):
    """testmini.json holding problem ``pid`` changed, then another problem unchanged."""
    rows = {r["pid"]: {k: v for k, v in r.items() if k not in ("decoded_image", "query")}
            for r in fx._mathvista_rows(with_bytes=False)}
    bad = {**rows[pid], **change}
    other = "2" if pid == "5" else "5"
    path = tmp_path / "testmini.json"
    path.write_text(json.dumps({pid: bad, other: rows[other]}))
    return list(adapter({"path": str(path)}).records())


@pytest.mark.parametrize(
    "pid, change, reason",
    [
        ("5", {"choices": "97, 102, 107, 122"}, "choices is a str ('97, 102, 107, 122'), not a list"),
        ("5", {"choices": {"A": "97", "B": "102"}}, "choices is a dict"),
        ("5", {"choices": ["97", ["102"]]}, "choices holds a list"),
        ("2", {"answer": "3.5"}, "integer answer '3.5' is not an integer"),
        ("2", {"answer": "three"}, "integer answer 'three' is not an integer"),
        ("1", {"answer": "1.2 cm"}, "float answer '1.2 cm' is not a number"),
        ("902", {"answer": "2007"}, "list answer '2007' is not a list"),
        ("902", {"answer": "2007, 2008"}, "list answer '2007, 2008' is not a list"),
        ("1", {"precision": 1.5}, "precision 1.5 is not an integer"),
        ("1", {"precision": "two"}, "precision 'two' is not an integer"),
        ("2", {"question_type": "open"}, "question_type 'open' is not one of multi_choice, free_form"),
        ("2", {"answer_type": "text"}, "free-form answer_type 'text' has no official normalisation"),
    ],
)
def test_malformed_records_are_rejected_with_the_reason(tmp_path, pid, change, reason):
    bad, good = _json_with(tmp_path, pid, **change)
    assert isinstance(bad, Reject) and reason in bad.reason, bad
    assert bad.item_id == pid and bad.source_line == 1
    assert isinstance(good, RawItem) and good.item_id == ("2" if pid == "5" else "5")


def test_integer_answer_written_as_a_number_is_read(tmp_path):
    item, _ = _json_with(tmp_path, "2", answer=1000)
    assert isinstance(item, RawItem) and item.answer == "1000"


def test_abstention_is_flagged_and_wrong(parquet_items):
    _, items = parquet_items
    s = SCORER.score(row(items["2"]), "The markings are hidden.\nAnswer: I cannot see the scale, so I cannot tell.")
    assert s.abstained is True
    assert s.correct is False
