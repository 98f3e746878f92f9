"""Per-trace features: entropy over the response and the answer span, vision engagement, loading."""

import numpy as np
import pandas as pd
import pytest

from peekaboo import features as feats
from peekaboo.tables import write_table


def test_entropy_full_and_answer_span():
    ent = np.array([1.0, 2.0, 0.5, 0.3, np.nan, np.nan])  # padded past n_tokens = 4
    out = feats.entropy_features(ent, 4, [(2, 4)])
    assert out["entropy_full"] == pytest.approx(0.95)
    assert out["entropy_answer"] == pytest.approx(0.4)
    assert out["note"] == ""
    # two answer spans count their tokens once; spans past the end are clipped
    assert feats.entropy_features(ent, 4, [(1, 3), (2, 9)])["entropy_answer"] == pytest.approx((2.0 + 0.5 + 0.3) / 3)


def test_entropy_without_answer_or_tokens_is_nan_with_a_note():
    out = feats.entropy_features(np.array([1.0, 2.0]), 2, [])
    assert np.isnan(out["entropy_answer"]) and "no answer step" in out["note"]
    out = feats.entropy_features(np.array([]), 0, [(0, 1)])
    assert np.isnan(out["entropy_full"]) and "no generated tokens" in out["note"]


def test_vision_engagement_uses_think_steps_and_the_configured_measure():
    steps = pd.DataFrame({
        "kind": ["think", "think", "answer"],
        "evidence_share": [0.6, 0.2, 0.9],
        "lift": [3.0, 1.0, 4.0],
        "image_share": [0.1, 0.3, 0.5],
    })
    assert feats.vision_engagement(steps, "evidence_share") == (pytest.approx(0.4), "think")
    assert feats.vision_engagement(steps, "evidence_lift")[0] == pytest.approx(2.0)
    assert feats.vision_engagement(steps, "image_share")[0] == pytest.approx(0.2)
    only_answer = steps[steps["kind"] == "answer"]
    assert feats.vision_engagement(only_answer, "evidence_share") == (pytest.approx(0.9), "all (no think steps)")
    nan_think = steps.assign(evidence_share=[np.nan, np.nan, 0.9])
    assert np.isnan(feats.vision_engagement(nan_think, "evidence_share")[0])
    with pytest.raises(ValueError, match="features.vision"):
        feats.vision_engagement(steps, "raw_mass")


def test_hidden_region_from_variant():
    assert feats.hidden_region("drop:2") == 2 and feats.hidden_region("ctrl:0") == 0
    assert feats.hidden_region("base") is None and feats.hidden_region("drop:all") is None


def test_load_features_filters_variants(tmp_path):
    rows = pd.DataFrame({"trace_id": ["a", "b", "c"], "variant": ["base", "drop:0", "base"],
                         "model": "m", "dataset": "d", "correct": [True, False, True]})
    p1 = write_table(rows.iloc[:2], tmp_path / "1.parquet")
    p2 = write_table(rows.iloc[2:], tmp_path / "2.parquet")
    p3 = write_table(rows.iloc[0:0], tmp_path / "3.parquet")
    got = feats.load_features([p1, p2, p3], ["base"])
    assert got["trace_id"].tolist() == ["a", "c"]
    assert len(feats.load_features([p1, p2], None)) == 3
    assert feats.load_features([p3]).empty


def test_answer_token_entropy_reads_the_parsed_answer_alone():
    # "<think>Red is B.</think>So the answer is B." cut into one token per word (and the tags)
    text = "<think>Red is B.</think>So the answer is B."
    pieces = ["<think>", "Red", " is", " B.", "</think>", "So", " the", " answer", " is", " B", "."]
    starts, pos = [], 0
    for p in pieces:
        starts.append(pos)
        pos += len(p)
    ends = [s + len(p) for s, p in zip(starts, pieces)]
    assert "".join(pieces) == text
    answer_span = [(5, 11)]  # the post-</think> tokens
    tokens, why = feats.answer_tokens(text, "b", starts, ends, answer_span)
    assert tokens == [9] and why == ""  # the last whole-word "B" of the answer step, not the one in the thinking
    entropy = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 2.0, 2.0, 2.0, 2.0, 0.05, 1.0])
    out = feats.entropy_features(entropy, len(entropy), answer_span, tokens, why)
    assert out["entropy_answer_tokens"] == pytest.approx(0.05)
    assert out["entropy_answer"] == pytest.approx(np.mean(entropy[5:11]))
    assert feats.answer_tokens(text, None, starts, ends, answer_span)[1].startswith("no parsed answer")
    assert feats.answer_tokens(text, "C", starts, ends, answer_span)[1].startswith("parsed answer not found")
    assert feats.answer_tokens(text, "B", starts, ends, [])[1].startswith("no answer step")
    assert feats.answer_tokens(text, "B", [], [], answer_span)[1].startswith("no token character offsets")
    missing = feats.entropy_features(entropy, len(entropy), answer_span, [], "parsed answer not found")
    assert np.isnan(missing["entropy_answer_tokens"]) and "parsed answer not found" in missing["note"]


def test_cluster_id_from_the_items_metadata_else_the_item():
    assert feats.item_cluster('{"cluster": "VS_chart_3", "set_id": "3"}') == "VS_chart_3"
    assert feats.item_cluster({"set_id": "3"}) is None and feats.item_cluster("not json") is None
    meta = pd.DataFrame({"trace_id": ["t1", "t2"], "item_id": ["a", "b"], "status": "ok", "correct": [True, False],
                         "variant": "base"})
    items = pd.DataFrame({"item_id": ["a", "b"], "task_type": "visual_reference",
                          "meta": ['{"cluster": "VS_chart_3"}', "{}"]})
    steps = pd.DataFrame(columns=["trace_id"])
    df = feats.build_trace_table(meta, items, pd.DataFrame({"trace_id": ["t1", "t2"]}), steps, {}, {},
                                 {"vision": "evidence_share"}, "m", "d", False)
    assert df["cluster_id"].tolist() == ["VS_chart_3", "b"]
