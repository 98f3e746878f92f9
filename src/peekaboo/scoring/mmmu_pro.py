"""Scoring MMMU-Pro (``peekaboo.datasets.mmmu_pro``) like its official ``evaluate.py``.

``extraction.read_option_letter`` on what the model finally says
(``peekaboo.thinking.split_thinking``: a chain that ended inside its thinking
is unparsed, wrong and ``truncated``): the last stated answer ("Answer: C",
``\\boxed{C}``, GLM's answer box, "the answer is (C)") when it names an
option by letter or text; else an abstention when the final answer is one;
else the official ``parse_multi_choice_response`` (``official``) over the
answer part: a single option letter after the last ``Answer:``, then ``(A)``,
``A `` and ``A.`` patterns, then (for more than five words) the option text,
the last-mentioned candidate winning. Where the official parser falls back to
a random letter, the final line is read as an option's text or letter, else
the last line that is a lone letter; failing those the response is unparsed:
``answer_text`` None, counted wrong (and counted: the number of unparsed
responses is in ``summary_metrics``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..datasets._common import text_list
from ..scores import Score
from ..thinking import split_thinking
from .extraction import read_option_letter, unparsed_fallback
from .official import mmmu_parse_multi_choice_response


def parse_multi_choice_response(response: str, all_choices: Sequence[str], index2ans: Mapping[str, str]) -> str | None:
    """The official MMMU(-Pro) parser (``official.mmmu_parse_multi_choice_response``), None instead of a random letter."""
    return mmmu_parse_multi_choice_response(response, all_choices, index2ans, fallback=unparsed_fallback)


def score(item: Mapping[str, Any], response: str, *, thinking_open: bool = False) -> Score:
    options = text_list(item.get("choices"), "choices") or []
    answer_part, truncated = split_thinking(response, thinking_open)
    if truncated:
        return Score(answer_text=None, correct=False, truncated=True)
    letter, abstained = read_option_letter(answer_part, options)
    return Score(answer_text=letter, correct=letter is not None and letter == str(item["answer"]),
                 abstained=abstained)


def summary_metrics(items, traces) -> dict[str, float]:
    """Accuracy over base traces, and how many responses the parser could not read (counted wrong)."""
    import pandas as pd

    t = pd.DataFrame(traces)
    if "variant" in t.columns:
        t = t[t["variant"] == "base"]
    if len(t) == 0:
        return {"accuracy": float("nan"), "n": 0.0, "unparsed": 0.0}
    correct = t["correct"].map(lambda v: False if pd.isna(v) else bool(v))
    unparsed = t["answer_text"].isna() if "answer_text" in t.columns else pd.Series(False, index=t.index)
    return {"accuracy": float(correct.mean()), "n": float(len(t)), "unparsed": float(unparsed.sum())}
