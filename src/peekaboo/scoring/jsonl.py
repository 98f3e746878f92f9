"""Scoring a user's own JSONL data (``peekaboo.datasets.jsonl``): by the item's answer type.

``extraction.score_response`` on what the model finally says (a thinking
block is skipped; a chain that ended inside it is unparsed, wrong and
``truncated``): the last stated answer read as a letter (multi_choice), a
number (integer, float: to the precision the gold answer is written with),
yes/no, normalised text or a list (compared as a set); an abstention counts
wrong unless the gold answer is itself one.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..cells import as_list
from ..scores import Score
from .extraction import score_response


def score(item: Mapping[str, Any], response: str, *, thinking_open: bool = False) -> Score:
    choices = as_list(item.get("choices")) or None
    return score_response(response, str(item["answer"]), str(item["answer_type"]), choices,
                          thinking_open=thinking_open)
