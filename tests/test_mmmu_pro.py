"""MMMU-Pro: the adapter (standard and vision parquet configs, image order) and its scorer (the official parser
without its coin)."""

import io

import pandas as pd
import pytest
from PIL import Image

from fixtures import benchmarks as fx
from peekaboo.datasets import RawItem, Reject, get_adapter
from peekaboo.datasets.mmmu_pro import PROMPTS, image_order, parse_options
from peekaboo.scoring import get_scorer, official
from peekaboo.scoring.mmmu_pro import parse_multi_choice_response

SCORER = get_scorer("mmmu_pro")


def adapter(options):
    return get_adapter("mmmu_pro", {"adapter": "mmmu_pro", "options": options})


def width(image_bytes):
    return Image.open(io.BytesIO(image_bytes)).size[0]


@pytest.fixture(scope="module")
def standard(tmp_path_factory):
    a = adapter({"path": str(fx.write_mmmu_pro_standard(tmp_path_factory.mktemp("mmmu")))})
    out = list(a.records())
    return a, {r.item_id: r for r in out if isinstance(r, RawItem)}, [r for r in out if isinstance(r, Reject)]


def test_standard_folder_of_shards_is_read_and_detected(standard):
    a, items, rejects = standard
    assert a.check() == [] and a.count() == 5
    assert a.config_name() == "standard"
    assert len(items) == 4 and len(rejects) == 1


def test_literal_list_options_are_parsed():
    assert parse_options("['Cash', \"It's neither\", '<image 2>']") == ["Cash", "It's neither", "<image 2>"]
    with pytest.raises(ValueError):
        parse_options("'not a list'")


def test_option_counts_one_and_twelve_are_kept(standard):
    _, items, _ = standard
    assert items["test_Math_4"].choices == ["42"] and items["test_Math_4"].answer == "A"
    twelve = items["test_Physics_2"]
    assert len(twelve.choices) == 12 and twelve.answer == "L"
    assert "\nL. 120 kg\n" in twelve.question


def test_images_follow_the_order_of_their_tokens(standard):
    _, items, _ = standard
    physics = items["test_Physics_2"]  # "Compare <image 2> with <image 1>"
    assert [width(b) for b in physics.images] == [42, 41]  # fixture image k is 40 + k pixels wide
    assert physics.question.startswith("Compare [image 1] with [image 2].")
    assert physics.meta["image_columns"] == ["image_2", "image_1"]


def test_images_named_in_options_are_passed_too(standard):
    _, items, _ = standard
    art = items["test_Art_3"]
    assert [width(b) for b in art.images] == [41, 42, 43]
    assert "A. [image 2]\nB. [image 3]\nC. It's neither" in art.question
    assert art.question.endswith(PROMPTS["cot"]["standard"])


def test_token_naming_an_empty_image_column_rejects_the_record(standard):
    _, _, rejects = standard
    assert rejects[0].item_id == "test_Biology_5" and rejects[0].source_line == 5
    assert "image_2" in rejects[0].reason


def test_multi_image_items_pass_the_items_stage_in_order(tmp_path):
    folder = fx.write_mmmu_pro_standard(tmp_path)
    kept, rejects = fx.build_items(tmp_path, "mmmu_pro", "mmmu_pro", {"path": str(folder)})
    assert list(rejects["item_id"]) == ["test_Biology_5"]
    physics = kept[kept["item_id"] == "test_Physics_2"].iloc[0]
    widths = [Image.open(tmp_path / "results" / p).size[0] for p in physics["images"]]
    assert widths == [42, 41] and physics["width"] == 42
    assert set(kept["task_type"]) == {"visual_reference"}


def test_vision_config(tmp_path):
    a = adapter({"path": str(fx.write_mmmu_pro_vision(tmp_path))})
    assert a.config_name() == "vision"
    items = [r for r in a.records()]
    assert [r.item_id for r in items] == ["test_Accounting_1", "test_Physics_2"]
    assert items[0].question == PROMPTS["cot"]["vision"]
    assert len(items[0].images) == 1 and width(items[0].images[0]) == 201
    assert items[1].choices == fx.TWELVE_OPTIONS and items[1].answer == "D"


def test_default_task_type_is_visual_reference(standard):
    a, items, _ = standard
    assert type(a).default_task_type == "visual_reference"


def test_image_order_first_occurrence():
    assert image_order("<image 3> vs <image 1>, again <image 3>") == [3, 1]


# --- the official parser -------------------------------------------------------------------------

ABCD = ["A", "B", "C", "D"]
LEDGER = {"A": "Cash", "B": "Inventory", "C": "Accounts receivable", "D": "Prepaid rent"}


@pytest.mark.parametrize(
    "response, parsed",
    [
        ("Let me think step by step. The debit side shows credit sales.\nAnswer: C", "C"),
        ("Answer: B or C", "C"),  # two letters after Answer: -> the patterns, last mention wins
        ("The answer is (B).", "B"),
        ("Both (A) and (D) look plausible, but (D) fits best", "D"),
        ("B. Inventory", "B"),
        ("Looking at the ledger it has to be the accounts receivable entry", "C"),  # option text, > 5 words
        ("accounts receivable", None),  # option text needs more than five words
        ("I do not know", None),  # no candidate: None where the official code picks a random letter
    ],
)
def test_parser_worked_examples(response, parsed):
    assert parse_multi_choice_response(response, ABCD, LEDGER) == parsed


def item_row(item):
    return {"item_id": item.item_id, "answer": item.answer, "choices": item.choices}


def test_unparsed_response_is_wrong_and_counted(standard):
    _, items, _ = standard
    item = items["test_Accounting_1"]
    unparsed = SCORER.score(item_row(item), "I do not know")
    assert unparsed.answer_text is None and unparsed.correct is False and unparsed.abstained is True
    cut = SCORER.score(item_row(item), "<think>The ledger shows ... so the answer is C")
    assert cut.answer_text is None and cut.correct is False and cut.truncated is True
    right = SCORER.score(item_row(item), "<think>Answer: A?</think>\nThe entry records credit sales.\nAnswer: C")
    assert right.answer_text == "C" and right.correct is True
    traces = pd.DataFrame(
        [
            {"item_id": item.item_id, "variant": "base", "answer_text": None, "correct": False},
            {"item_id": "test_Math_4", "variant": "base", "answer_text": "A", "correct": True},
            {"item_id": item.item_id, "variant": "drop:0", "answer_text": None, "correct": False},
        ]
    )
    m = SCORER.summary_metrics(None, traces)
    assert m == {"accuracy": 0.5, "n": 2.0, "unparsed": 1.0}


def test_twelve_option_answer_letter_l(standard):
    _, items, _ = standard
    s = SCORER.score(item_row(items["test_Physics_2"]), "The beam balances at 120 kg.\nAnswer: L")
    assert s.answer_text == "L" and s.correct is True


@pytest.mark.parametrize(
    "response, thinking_open, parsed, correct",
    [
        ("The ledger lists credit sales.\n</think>\n\nAnswer: C", True, "C", True),
        ("The ledger lists credit sales. Answer: C", True, None, False),  # cut off: the template opened <think>
        ("<think>(A)? (B)?</think><answer>The answer is <|begin_of_box|>C<|end_of_box|></answer>", False, "C", True),
        ("Answer: \\boxed{\\text{C}}", False, "C", True),
        ("**Final Answer:** (C)", False, "C", True),
        ("Answer: A\nRe-reading the entry, it records credit sales.\nAnswer: C", False, "C", True),
        ("Answer: C\n\nOption (A) would need a cash receipt.", False, "C", True),  # official: (A)
        ("answer: c", False, "C", True),
        ("After checking the entries, the right account is accounts receivable.", False, "C", True),
        ("I cannot determine the account from this image.", False, None, False),  # official reads "I" as no option
    ],
)
def test_score_reads_the_last_stated_answer_after_the_thinking(standard, response, thinking_open, parsed, correct):
    _, items, _ = standard
    s = SCORER.score(item_row(items["test_Accounting_1"]), response, thinking_open=thinking_open)
    assert (s.answer_text, s.correct) == (parsed, correct)


def test_unparsed_where_the_official_parser_would_draw_a_random_letter(standard):
    _, items, _ = standard
    options = items["test_Accounting_1"].choices
    index2ans, letters = official.mmmu_get_multi_choice_info(options)
    drawn = []
    assert official.mmmu_parse_multi_choice_response("no idea", letters, index2ans,
                                                     fallback=lambda c: drawn.append(c) or "B") == "B"
    assert drawn == [["A", "B", "C", "D"]]  # the official code reaches random.choice(all_choices)
    s = SCORER.score(item_row(items["test_Accounting_1"]), "no idea")
    assert s.answer_text is None and s.correct is False and not s.abstained


@pytest.mark.parametrize(
    "options, reason",
    [
        ("Cash, Inventory", "options 'Cash, Inventory' is not a Python list literal"),
        ("{'A': 'Cash', 'B': 'Inventory'}", "options is a dict"),
        ("'Cash'", "options is a str ('Cash'), not a list"),
        ("['Cash', ['Inventory']]", "options holds a list"),
    ],
)
def test_options_that_are_not_a_list_are_rejected(tmp_path, options, reason):
    rows = fx.mmmu_standard_rows()[:2]
    rows[0]["options"] = options
    path = tmp_path / "test-00000-of-00001.parquet"
    fx._write_parquet(path, rows, fx.MMMU_STANDARD_SCHEMA)
    bad, good = list(adapter({"path": str(path)}).records())
    assert isinstance(bad, Reject) and reason in bad.reason, bad.reason
    assert bad.item_id == "test_Accounting_1" and bad.source_line == 1
    assert isinstance(good, RawItem) and good.item_id == "test_Physics_2"
