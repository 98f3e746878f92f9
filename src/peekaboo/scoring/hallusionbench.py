"""Scoring HallusionBench (``peekaboo.datasets.hallusionbench``), with the official evaluator's accuracies.

The official evaluator asks GPT-4 whether the response agrees with
the reference ("1" correct, "0" incorrect, "2" unclear). Here, on what the
model finally says (``peekaboo.thinking.split_thinking``: a chain that ended
inside its thinking is unparsed, wrong and ``truncated``), the yes/no is read
by rule (``extraction.read_yes_no``: the first word of the final answer,
else an abstention, else the only one of "yes" and "no" named, as VLMEvalKit's
``YOrN_Extraction`` reads it) and compared with ``gt_answer`` ("1" yes, "0"
no). An abstention, or no yes/no, is unparsed and wrong: ``correct`` never
counts an abstention.

``summary_metrics`` (``official_metrics``) gives the official leaderboard numbers from the base
traces, computed by the ported official functions (``official``): each
trace gets the official correctness code ("1" correct; "2" unclear: an
abstention or no yes/no; "0" wrong, cut off or failed), then the official
``assign_correctness`` (unclear counts right on a VS question asked without
its figure), question accuracy (aAcc), figure accuracy (fAcc: figures keyed by
(category, subcategory, set_id, figure_id), VS questions without a figure left
out, a figure counts when all its questions are right), question-pair
accuracy (qAcc: (category, subcategory, set_id, question_id) groups all
right), and the easy and hard pair accuracies, which split the questions by
``visual_input`` as ``get_eval_pair_easy`` / ``_hard`` do: easy = no figure
or the original figure ("0", "1"), hard = an edited figure ("2").
"""

from __future__ import annotations

from typing import Any, Mapping

from ..cells import is_blank, parse_meta
from ..datasets.hallusionbench import KEY_FIELDS
from ..scores import Score
from ..thinking import split_thinking
from .extraction import read_yes_no
from .official import (
    hallusionbench_assign_correctness,
    hallusionbench_get_eval_all,
    hallusionbench_get_eval_fig,
    hallusionbench_get_eval_pair_all,
    hallusionbench_get_eval_pair_easy,
    hallusionbench_get_eval_pair_hard,
)


def score(item: Mapping[str, Any], response: str, *, thinking_open: bool = False) -> Score:
    answer_part, truncated = split_thinking(response, thinking_open)
    if truncated:
        return Score(answer_text=None, correct=False, truncated=True)
    said, abstained = read_yes_no(answer_part)
    return Score(answer_text=said, correct=said is not None and said == str(item["answer"]), abstained=abstained)


def summary_metrics(items, traces) -> dict[str, float]:
    """The official leaderboard accuracies (``official_metrics``)."""
    return official_metrics(items, traces)


def correctness_code(trace: Mapping[str, Any]) -> str:
    """The official correctness code of a scored trace: "1" correct, "2" unclear, "0" incorrect.

    Unclear: an abstention, or an answer without yes or no (where the judge
    says "unclear"). A chain cut off in its thinking, or a failed trace
    (``correct`` null), is "0": it never counts right.
    """
    correct = trace.get("correct")
    if is_blank(correct) or _flag(trace.get("truncated")):
        return "0"
    if bool(correct):
        return "1"
    if _flag(trace.get("abstained")) or ("answer_text" in trace and is_blank(trace.get("answer_text"))):
        return "2"
    return "0"


def _flag(value: Any) -> bool:
    return not is_blank(value) and bool(value)


def official_metrics(items, traces) -> dict[str, float]:
    """The official leaderboard accuracies (per question, figure, question pair; easy and hard pairs).

    ``items``: the items table (``item_id``, ``meta`` with the five keys and
    ``visual_input``). ``traces``: one row per item with ``item_id`` and
    ``correct``, and where present ``abstained``, ``truncated`` and
    ``answer_text`` (a trace table is filtered to the unmasked ``base``
    variant when it has a ``variant`` column). Each trace gets its official
    correctness code (``correctness_code``); the official
    ``assign_correctness`` and counting functions (``official``) do the
    rest. Accuracies are fractions in [0, 1]; NaN when a group is empty.
    """
    import pandas as pd

    t = pd.DataFrame(traces)
    if "variant" in t.columns:
        t = t[t["variant"] == "base"]
    if t["item_id"].duplicated().any():
        dup = t.loc[t["item_id"].duplicated(), "item_id"].iloc[0]
        raise ValueError(f"more than one base trace for item {dup!r}: pass one model's traces at a time")
    codes = {row["item_id"]: correctness_code(row) for row in t.to_dict("records")}

    data = []
    for row in pd.DataFrame(items)[["item_id", "meta"]].itertuples(index=False):
        if row.item_id not in codes:
            continue
        meta = parse_meta(row.meta)
        data.append({**{k: str(meta[k]) for k in (*KEY_FIELDS, "visual_input")}, "code": codes[row.item_id]})
    data = hallusionbench_assign_correctness(data, "code")

    def share(stat) -> float:
        return stat["correct"] / stat["total"] if stat["total"] else float("nan")

    has_figures = any(not (r["category"] == "VS" and r["figure_id"] == "0") for r in data)
    figures = hallusionbench_get_eval_fig(data) if has_figures else {"correct": 0, "total": 0}
    pairs = hallusionbench_get_eval_pair_all(data)
    return {
        "question_accuracy": share(hallusionbench_get_eval_all(data)),
        "figure_accuracy": share(figures),
        "pair_accuracy": share(pairs),
        "easy_pair_accuracy": share(hallusionbench_get_eval_pair_easy(data)),
        "hard_pair_accuracy": share(hallusionbench_get_eval_pair_hard(data)),
        "n_questions": float(len(data)),
        "n_figures": float(figures["total"]),
        "n_pairs": float(pairs["total"]),
    }
