"""HallusionBench: the adapter (JSON + folder and parquet), its scorer (yes/no) and the official accuracies."""

import io
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fixtures import benchmarks as fx
from peekaboo.datasets import RawItem, Reject, get_adapter
from peekaboo.scoring import get_scorer
from peekaboo.scoring import official
from peekaboo.scoring.hallusionbench import official_metrics

SCORER = get_scorer("hallusionbench")


def adapter(options):
    return get_adapter("hallusionbench", {"adapter": "hallusionbench", "options": options})


def items_of(a):
    return {r.item_id: r for r in a.records() if isinstance(r, RawItem)}


def row(item):
    return {"item_id": item.item_id, "answer": item.answer, "meta": json.dumps(item.meta)}


@pytest.fixture(scope="module")
def json_items(tmp_path_factory):
    path = fx.write_hallusionbench_json(tmp_path_factory.mktemp("hb"))
    a = adapter({"path": str(path)})
    return a, items_of(a), path


def test_json_items_have_the_official_unique_ids(json_items):
    a, items, _ = json_items
    assert a.check() == [] and a.count() == 6
    assert list(items) == [
        "VD_illusion_0_0_0", "VD_illusion_0_0_1", "VD_illusion_0_1_0", "VD_illusion_0_1_1",
        "VS_chart_3_0_0", "VS_chart_3_1_0",
    ]
    assert items["VD_illusion_0_0_0"].answer == "yes" and items["VD_illusion_0_0_1"].answer == "no"
    assert all(i.answer_type == "yes_no" for i in items.values())


def test_images_resolve_from_filename_under_the_json_folder(json_items):
    _, items, path = json_items
    image = items["VD_illusion_0_1_0"].images[0]
    assert image == path.parent / "hallusion_bench" / "VD" / "illusion" / "0_1.png"
    assert Image.open(image).size == (48, 32)


def test_question_without_visual_input_has_no_image_and_is_symbolic(json_items):
    _, items, _ = json_items
    no_visual = items["VS_chart_3_0_0"]
    assert no_visual.images == [] and no_visual.task_type == "symbolic"
    assert items["VS_chart_3_1_0"].task_type is None  # the dataset's visual_reference default


def test_official_folder_layout_is_found_when_filename_does_not_resolve(tmp_path):
    path = fx.write_hallusionbench_json(tmp_path)
    # get_image_file_location's layout: {root}/{category}/{subcategory}/{set}_{figure}.png
    root = tmp_path / "images-root"
    shutil.copytree(path.parent / "hallusion_bench", root)
    data = json.loads(path.read_text())
    for rec in data:
        if "filename" in rec:
            rec["filename"] = "./elsewhere/" + Path(rec["filename"]).name
    path.write_text(json.dumps(data))
    items = items_of(adapter({"path": str(path), "images": str(root)}))
    assert items["VD_illusion_0_1_0"].images[0] == root / "VD" / "illusion" / "0_1.png"


def test_missing_image_is_handed_over_by_name(tmp_path):
    path = fx.write_hallusionbench_json(tmp_path, skip_images=("./hallusion_bench/VS/chart/3_1.png",))
    items = items_of(adapter({"path": str(path)}))
    image = items["VS_chart_3_1_0"].images[0]
    assert not Path(image).exists() and str(image).endswith("hallusion_bench/VS/chart/3_1.png")
    kept, rejects = fx.build_items(tmp_path, "hallusionbench", "hallusionbench", {"path": str(path)})
    assert list(rejects["item_id"]) == ["VS_chart_3_1_0"] and rejects["reason"][0].startswith("missing image")
    types = dict(zip(kept["item_id"], kept["task_type"]))
    assert types["VS_chart_3_0_0"] == "symbolic" and types["VD_illusion_0_0_0"] == "visual_reference"
    no_image = kept[kept["item_id"] == "VS_chart_3_0_0"].iloc[0]
    assert pd.isna(no_image["image"]) and len(no_image["images"]) == 0


def test_parquet_with_image_column(tmp_path):
    a = adapter({"path": str(fx.write_hallusionbench_parquet(tmp_path))})
    items = items_of(a)
    assert a.count() == 6 and len(items) == 6
    assert Image.open(io.BytesIO(items["VD_illusion_0_0_0"].images[0])).size == (48, 32)
    assert items["VS_chart_3_0_0"].images == []


def test_bad_gt_answer_and_missing_keys_are_rejected_with_their_record(tmp_path):
    path = tmp_path / "HallusionBench.json"
    recs = [dict(fx.HALLUSIONBENCH_RECORDS[4]), dict(fx.HALLUSIONBENCH_RECORDS[4])]
    recs[0]["gt_answer"] = "maybe"
    del recs[1]["question"]
    path.write_text(json.dumps(recs))
    out = list(adapter({"path": str(path)}).records())
    assert [type(r) for r in out] == [Reject, Reject]
    assert "gt_answer 'maybe'" in out[0].reason and out[0].source_line == 1
    assert "missing question" in out[1].reason and out[1].source_line == 2


# --- malformed records ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("figure_id", "1.5", "figure_id '1.5' is not an integer"),
        ("set_id", "three", "set_id 'three' is not an integer"),
        ("question_id", 0.5, "question_id 0.5 is not an integer"),
        ("visual_input", "3", "visual_input 3 is not 0 (no figure), 1 (original) or 2 (edited)"),
        ("category", "VX", "category 'VX' is neither VD nor VS"),
    ],
)
def test_malformed_fields_are_rejected_with_the_reason(tmp_path, field, value, reason):
    path = tmp_path / "HallusionBench.json"
    good = dict(fx.HALLUSIONBENCH_RECORDS[4])
    bad = {**good, field: value}
    path.write_text(json.dumps([bad, good]))
    out = list(adapter({"path": str(path)}).records())
    assert isinstance(out[0], Reject) and reason in out[0].reason and out[0].source_line == 1
    assert isinstance(out[1], RawItem) and out[1].item_id == "VS_chart_3_0_0"


def test_integer_fields_stored_as_numbers_keep_the_official_key(tmp_path):
    # parquet copies store the ids as numbers (floats beside nulls): the key must still be "..._3_0_0"
    path = tmp_path / "HallusionBench.json"
    rec = {**fx.HALLUSIONBENCH_RECORDS[4], "set_id": 3, "figure_id": 0.0, "question_id": 0, "visual_input": 0}
    path.write_text(json.dumps([rec]))
    (item,) = list(adapter({"path": str(path)}).records())
    assert item.item_id == "VS_chart_3_0_0"
    assert item.meta["figure_id"] == "0" and item.meta["visual_input"] == "0"
    # the set is the cluster of dependent questions (its original and edited figures)
    assert item.meta["cluster"] == "VS_chart_3"


# --- scoring -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item_id, response, parsed, correct, abstained",
    [
        ("VD_illusion_0_0_0", "Both circles measure the same.\nAnswer: yes", "yes", True, False),
        ("VD_illusion_0_0_1", "No, it is not larger.", "no", True, False),
        ("VD_illusion_0_0_1", "Answer: Yes", "yes", False, False),
        ("VD_illusion_0_0_0", "<think>is it yes or no? maybe no</think>\nAnswer: yes", "yes", True, False),
        ("VD_illusion_0_0_0", "<think>no, no, no</think><answer><|begin_of_box|>Yes<|end_of_box|></answer>", "yes",
         True, False),
        ("VD_illusion_0_0_0", "Yes, the two circles match.\nThey are drawn with the same radius.", "yes", True, False),
        ("VD_illusion_0_0_0", "The answer is $\\boxed{\\text{Yes}}$.", "yes", True, False),
        ("VD_illusion_0_0_1", "No, I cannot tell for sure, but it does not look larger.", "no", True, False),
        # unclear on a question with its figure: unparsed, wrong
        ("VD_illusion_0_1_0", "It is hard to say from this picture.", None, False, False),
        # an abstention never counts correct, not even on a VS question asked without its figure
        # (the official leaderboard's assign_correctness does count it: see official_metrics)
        ("VS_chart_3_0_0", "Answer: I cannot determine this without the chart.", None, False, True),
        ("VS_chart_3_0_0", "There is no way to tell.", None, False, True),
        ("VS_chart_3_0_0", "Answer: no", "no", False, False),
    ],
)
def test_score_worked_examples(json_items, item_id, response, parsed, correct, abstained):
    _, items, _ = json_items
    s = SCORER.score(row(items[item_id]), response)
    assert (s.answer_text, s.correct, s.abstained, s.truncated) == (parsed, correct, abstained, False)


def test_abstention_counts_as_unclear_not_as_its_yes_no_words(json_items):
    _, items, _ = json_items
    s = SCORER.score(row(items["VD_illusion_0_1_1"]), "Answer: Yes, but no, I cannot tell.")
    assert s.abstained is True and s.correct is False and s.answer_text is None


@pytest.mark.parametrize("response", ["The circles look the same, so yes", "<think>The circles look the same. Answer: yes"])
def test_chain_cut_off_in_its_thinking_is_never_scored(json_items, response):
    _, items, _ = json_items
    s = SCORER.score(row(items["VD_illusion_0_0_0"]), response, thinking_open=True)
    assert (s.answer_text, s.correct, s.truncated) == (None, False, True)


# --- official accuracies -------------------------------------------------------------------------

# A hand-computed example. Columns: category, subcategory, set, figure, question, visual_input, trace.
# Trace: correct / wrong / abstained / truncated.
HAND = [
    ("VD", "illusion", "0", "0", "0", "1", "correct"),
    ("VD", "illusion", "0", "0", "1", "1", "correct"),
    ("VD", "illusion", "0", "1", "0", "2", "wrong"),
    ("VD", "illusion", "0", "1", "1", "2", "correct"),
    ("VS", "chart", "3", "0", "0", "0", "abstained"),  # no figure: "unclear" counts right officially
    ("VS", "chart", "3", "1", "0", "1", "wrong"),  # the original chart: an easy question, figure 1
    ("VS", "chart", "3", "2", "0", "2", "correct"),  # the edited chart: hard
    ("VS", "chart", "4", "0", "0", "0", "truncated"),  # cut off: never right, not even here
]


def _hand_tables(rows=HAND):
    keys = ("category", "subcategory", "set_id", "figure_id", "question_id", "visual_input")
    items, traces = [], []
    for r in rows:
        meta = dict(zip(keys, r[:6]))
        item_id = "_".join(r[:5])
        items.append({"item_id": item_id, "meta": json.dumps(meta)})
        outcome = r[6]
        traces.append({"item_id": item_id, "variant": "base", "correct": outcome == "correct",
                       "answer_text": {"correct": "yes", "wrong": "no"}.get(outcome),
                       "abstained": outcome == "abstained", "truncated": outcome == "truncated"})
    return pd.DataFrame(items), pd.DataFrame(traces)


def test_official_metrics_hand_computed_example():
    m = official_metrics(*_hand_tables())
    # right: VD 0/0/0, 0/0/1, 0/1/1; VS 3/0/0 (unclear without figure), 3/2/0 -> 5 of 8
    assert m["question_accuracy"] == pytest.approx(5 / 8) and m["n_questions"] == 8
    # figures (VS figure 0 left out): VD 0_0 2/2, VD 0_1 1/2, VS 3_1 0/1, VS 3_2 1/1 -> 2 of 4
    assert m["n_figures"] == 4 and m["figure_accuracy"] == pytest.approx(2 / 4)
    # pairs: VD 0 q0 (T, F), VD 0 q1 (T, T), VS 3 q0 (T, F, T), VS 4 q0 (F) -> 1 of 4
    assert m["n_pairs"] == 4 and m["pair_accuracy"] == pytest.approx(1 / 4)
    # easy = visual_input 0 or 1: VD 0 q0 (T), VD 0 q1 (T), VS 3 q0 (T, F), VS 4 q0 (F) -> 2 of 4
    # (splitting by figure_id instead would put VS 3/1 among the hard ones and give 3 of 4)
    assert m["easy_pair_accuracy"] == pytest.approx(2 / 4)
    # hard = visual_input 2: VD 0 q0 (F), VD 0 q1 (T), VS 3 q0 (T) -> 2 of 3
    assert m["hard_pair_accuracy"] == pytest.approx(2 / 3)


def test_ported_official_leaderboard_on_the_hand_example():
    codes = {"correct": "1", "wrong": "0", "abstained": "2", "truncated": "0"}
    data = [dict(zip(("category", "subcategory", "set_id", "figure_id", "question_id", "visual_input"), r[:6]),
                 code=codes[r[6]]) for r in HAND]
    data = official.hallusionbench_assign_correctness(data, "code")
    assert [r["correct"] for r in data] == [1, 1, 0, 1, 1, 0, 1, 0]
    board = official.hallusionbench_leaderboard(data)
    assert board == {"qAcc": 25.0, "fAcc": 50.0, "easy_aAcc": 50.0, "hard_aAcc": round(200 / 3, 4), "aAcc": 62.5}


def test_summary_metrics_failed_trace_counts_wrong_and_masked_variants_are_ignored():
    items, traces = _hand_tables()
    traces["correct"] = traces["correct"].astype(object)
    traces.loc[0, "correct"] = None  # a failed trace's sidecar row has correct = null
    masked = pd.DataFrame([{"item_id": traces["item_id"][2], "variant": "drop:0", "correct": True}])
    m = SCORER.summary_metrics(items, pd.concat([traces, masked], ignore_index=True))
    assert m["question_accuracy"] == pytest.approx(4 / 8)
    assert m["figure_accuracy"] == pytest.approx(1 / 4)


def test_summary_metrics_empty_hard_group_is_nan():
    m = official_metrics(*_hand_tables([r for r in HAND if r[5] != "2"]))
    assert math.isnan(m["hard_pair_accuracy"]) and m["easy_pair_accuracy"] == pytest.approx(2 / 4)


def _independent_counts(data):
    """The leaderboard counted again with pandas, independently of the ports (get_eval_all, get_eval_fig,
    get_eval_pair_all, get_eval_pair_easy / _hard of the official utils.py)."""
    df = pd.DataFrame(data)

    def all_right(frame, keys):
        if len(frame) == 0:
            return float("nan")
        return float(frame.groupby(keys)["correct"].agg(lambda c: bool(c.all())).mean())

    pair = ["category", "subcategory", "set_id", "question_id"]
    figures = df[~((df["category"] == "VS") & (df["figure_id"] == "0"))]
    return {
        "question_accuracy": float(df["correct"].mean()),
        "figure_accuracy": all_right(figures, ["category", "subcategory", "set_id", "figure_id"]),
        "pair_accuracy": all_right(df, pair),
        "easy_pair_accuracy": all_right(df[df["visual_input"] != "2"], pair),
        "hard_pair_accuracy": all_right(df[df["visual_input"] == "2"], pair),
    }


def test_summary_metrics_agree_with_an_independent_count_on_random_data():
    import numpy as np

    rng = np.random.default_rng(3)
    data = []
    for category, subcategory in [("VD", "illusion"), ("VD", "math"), ("VS", "chart"), ("VS", "map")]:
        for set_id in range(3):
            for figure_id in range(int(rng.integers(2, 4))):
                visual = ("0" if category == "VS" else "1") if figure_id == 0 else str(int(rng.integers(1, 3)))
                for question_id in range(int(rng.integers(1, 4))):
                    data.append({"category": category, "subcategory": subcategory, "set_id": str(set_id),
                                 "figure_id": str(figure_id), "question_id": str(question_id),
                                 "visual_input": visual, "correct": bool(rng.random() < 0.7)})
    ids = ["_".join(r[k] for k in ("category", "subcategory", "set_id", "figure_id", "question_id")) for r in data]
    items = pd.DataFrame({"item_id": ids, "meta": [json.dumps(r) for r in data]})
    traces = pd.DataFrame({"item_id": ids, "correct": [r["correct"] for r in data]})
    ours = official_metrics(items, traces)
    for key, value in _independent_counts(data).items():
        assert ours[key] == pytest.approx(value), key
