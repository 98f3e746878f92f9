"""HallusionBench adapter: JSON + folder and parquet, yes/no scoring, the official accuracies."""

import io
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import fixtures as fx
from peekaboo.datasets import RawItem, Reject, get_adapter


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


# --- scoring -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item_id, response, parsed, correct",
    [
        ("VD_illusion_0_0_0", "Both circles measure the same.\nAnswer: yes", "yes", True),
        ("VD_illusion_0_0_1", "No, it is not larger.", "no", True),
        ("VD_illusion_0_0_1", "Answer: Yes", "yes", False),
        ("VD_illusion_0_0_0", "<think>is it yes or no? maybe no</think>\nAnswer: yes", "yes", True),
        # unclear on a question with its figure: wrong
        ("VD_illusion_0_1_0", "It is hard to say from this picture.", None, False),
        # unclear on a VS question asked without its figure: correct (official assign_correctness)
        ("VS_chart_3_0_0", "Answer: I cannot determine this without the chart.", None, True),
        ("VS_chart_3_0_0", "Answer: no", "no", False),
    ],
)
def test_score_worked_examples(json_items, item_id, response, parsed, correct):
    a, items, _ = json_items
    s = a.score(row(items[item_id]), response)
    assert (s.answer_text, s.correct) == (parsed, correct)


def test_abstention_counts_as_unclear_not_as_its_yes_no_words(json_items):
    a, items, _ = json_items
    s = a.score(row(items["VD_illusion_0_1_1"]), "Answer: Yes, but no, I cannot tell.")
    assert s.abstained is True and s.correct is False


# --- official accuracies -------------------------------------------------------------------------


def _tables(items, correct):
    it = pd.DataFrame([{"item_id": i.item_id, "meta": json.dumps(i.meta)} for i in items.values()])
    tr = pd.DataFrame([{"item_id": k, "variant": "base", "correct": v} for k, v in correct.items()])
    return it, tr


def test_summary_metrics_worked_example(json_items):
    a, items, _ = json_items
    correct = {
        "VD_illusion_0_0_0": True, "VD_illusion_0_0_1": True, "VD_illusion_0_1_0": False,
        "VD_illusion_0_1_1": True, "VS_chart_3_0_0": True, "VS_chart_3_1_0": False,
    }
    m = a.summary_metrics(*_tables(items, correct))
    assert m["question_accuracy"] == pytest.approx(4 / 6)
    # figures VD/illusion/0/0 (2 of 2), VD/illusion/0/1 (1 of 2), VS/chart/3/1 (0 of 1); VS figure 0 left out
    assert m["n_figures"] == 3 and m["figure_accuracy"] == pytest.approx(1 / 3)
    # pairs (VD,0,q0): T,F  (VD,0,q1): T,T  (VS,3,q0): T,F
    assert m["n_pairs"] == 3 and m["pair_accuracy"] == pytest.approx(1 / 3)
    assert m["easy_pair_accuracy"] == pytest.approx(1.0)
    assert m["hard_pair_accuracy"] == pytest.approx(1 / 3)


def test_summary_metrics_failed_trace_counts_wrong_and_masked_variants_are_ignored(json_items):
    a, items, _ = json_items
    # a failed trace's sidecar row has correct = null
    it, tr = _tables(items, {k: (None if k == "VD_illusion_0_0_0" else True) for k in items})
    masked = pd.DataFrame([{"item_id": "VD_illusion_0_1_0", "variant": "drop:0", "correct": False}])
    m = a.summary_metrics(it, pd.concat([tr, masked], ignore_index=True))
    assert m["question_accuracy"] == pytest.approx(5 / 6)
    assert m["figure_accuracy"] == pytest.approx(2 / 3)


def test_summary_metrics_empty_hard_group_is_nan(json_items):
    a, items, _ = json_items
    easy_only = {k: True for k in items if k.split("_")[3] == "0"}
    m = a.summary_metrics(*_tables(items, easy_only))
    assert math.isnan(m["hard_pair_accuracy"]) and m["easy_pair_accuracy"] == 1.0


def _official_counts(data):
    """The counting parts of the official utils.py (get_eval_all, get_eval_fig, get_eval_pair_all/easy/hard)."""
    def grouped(rows, key):
        out = {}
        for r in rows:
            c, t = out.get(key(r), (0, 0))
            out[key(r)] = (c + r["correct"], t + 1)
        return out

    fig = grouped([r for r in data if not (r["category"] == "VS" and str(r["figure_id"]) == "0")],
                  lambda r: "_".join([r["category"], r["subcategory"], str(r["set_id"]), str(r["figure_id"])]))
    def pair_key(r):
        return "_".join([r["category"], r["subcategory"], str(r["set_id"]), str(r["question_id"])])
    pairs = grouped(data, pair_key)
    easy = grouped([r for r in data if str(r["figure_id"]) == "0"], pair_key)
    hard = grouped([r for r in data if str(r["figure_id"]) != "0"], pair_key)

    def acc(groups):
        return sum(c == t for c, t in groups.values()) / len(groups)

    return {
        "question_accuracy": sum(r["correct"] for r in data) / len(data),
        "figure_accuracy": acc(fig), "pair_accuracy": acc(pairs),
        "easy_pair_accuracy": acc(easy), "hard_pair_accuracy": acc(hard),
    }


def test_summary_metrics_agree_with_the_official_counting_on_random_data():
    import numpy as np

    from peekaboo.datasets.hallusionbench import official_metrics

    rng = np.random.default_rng(3)
    data = []
    for category, subcategory in [("VD", "illusion"), ("VD", "math"), ("VS", "chart"), ("VS", "map")]:
        for set_id in range(3):
            for figure_id in range(int(rng.integers(2, 4))):
                for question_id in range(int(rng.integers(1, 4))):
                    data.append({"category": category, "subcategory": subcategory, "set_id": str(set_id),
                                 "figure_id": str(figure_id), "question_id": str(question_id),
                                 "correct": int(rng.random() < 0.7)})
    ids = ["_".join(r[k] for k in ("category", "subcategory", "set_id", "figure_id", "question_id")) for r in data]
    items = pd.DataFrame({"item_id": ids, "meta": [json.dumps(r) for r in data]})
    traces = pd.DataFrame({"item_id": ids, "correct": [bool(r["correct"]) for r in data]})
    ours = official_metrics(items, traces)
    for key, value in _official_counts(data).items():
        assert ours[key] == pytest.approx(value), key
