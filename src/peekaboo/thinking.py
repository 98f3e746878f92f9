"""The thinking split: which part of a model's response is what it finally says.

Used by the scorers (``peekaboo.scoring``) and by the grounding VLMs' answer
reading (``peekaboo.grounding.formats``). It is a module of its own, not part
of the scorers' extraction helpers or of ``peekaboo.answers`` (which the
dataset readers import), so that the boxes stage, which runs before the items,
imports no scoring code: an edit to how answers are read re-runs neither the
items nor the generation.
"""

from __future__ import annotations

from typing import Any

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def split_thinking(response: Any, thinking_open: bool = False) -> tuple[str, bool]:
    """(what the model finally says, whether the response ended inside its thinking block).

    Thinking models write ``<think>reasoning</think>answer``; some chat
    templates write the opening tag into the prompt (``thinking_open``: the
    rendered prompt ended inside an open block), so the response holds only
    ``reasoning</think>answer``. The answer part is the text after the last
    ``</think>``. A response that ends inside a thinking block has no answer
    part: a ``<think>`` after the last ``</think>`` (a block opened and never
    closed), or no tag at all when the prompt opened the block. Without
    ``thinking_open`` a response without tags is all answer (a model that
    does not think).
    """
    if response is None:
        return "", bool(thinking_open)
    s = str(response)
    low = s.lower()
    close = low.rfind(_THINK_CLOSE)
    opened = low.rfind(_THINK_OPEN)
    if opened > close:
        return "", True
    if close >= 0:
        return s[close + len(_THINK_CLOSE) :], False
    if thinking_open:
        return "", True
    return s, False
