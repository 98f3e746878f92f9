"""Scoring VisArgs (``peekaboo.datasets.visargs``): the chosen conclusion, read as MMMU-Pro's option is.

With choices (``choices: k`` of the reader, default 4: the image's
conclusion among k candidates), the final ``Answer: $LETTER`` is read like
MMMU-Pro's (``extraction.read_option_letter``: the stated answer, else MMMU's
official parser without its random fallback) from what the model finally
says (a chain cut off in its thinking is unparsed, wrong and
``truncated``); unparsed counts wrong. Without choices (``choices: 0``: the
conclusion in the model's own words) the final answer is kept as said and
``correct`` is null: no rule can judge a paraphrase.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..datasets._common import text_list
from ..scores import Score
from ..thinking import split_thinking
from .extraction import final_answer, is_abstention, read_option_letter


def score(item: Mapping[str, Any], response: str, *, thinking_open: bool = False) -> Score:
    answer_part, truncated = split_thinking(response, thinking_open)
    options = text_list(item.get("choices"), "choices")
    if truncated:
        return Score(answer_text=None, correct=False if options else None, truncated=True)
    if not options:
        # free-form conclusion: no rule judges a paraphrase
        final, _ = final_answer(answer_part)
        return Score(answer_text=final or None, correct=None, abstained=is_abstention(final))
    letter, abstained = read_option_letter(answer_part, options)
    return Score(answer_text=letter, correct=letter is not None and letter == str(item["answer"]),
                 abstained=abstained)
