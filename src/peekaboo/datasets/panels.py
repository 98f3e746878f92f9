"""The ``panels`` adapter: the synthetic benchmark (``peekaboo.synthetic``) as items, and its scoring.

Items, options and gold solutions are described in ``peekaboo.synthetic``;
docs/datasets.md has the options table.

Scoring: the text after the last ``Answer:`` is compared with the gold answer
(case and surrounding punctuation ignored; numbers compared as integers);
"unknown" and other abstention phrases count as abstentions, never as correct.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Mapping

from ..answers import split_thinking
from ..synthetic import (
    BlinkRule,
    OptionsError,
    PanelItem,
    blink_answer,
    blink_rule,
    generate_items,
    gold_solution,
    resolve_options,
)
from .base import Adapter, AdapterError, RawItem, Score


# --------------------------------------------------------------------------- scoring

_ANSWER_RE = re.compile(r"answer\s*:", re.IGNORECASE)


def final_answer(response: str) -> str | None:
    """The text after the last ``Answer:`` (its first line, stripped); None when there is no ``Answer:``.

    The gold template always ends with ``Answer:``, so a response without it
    (a chain cut off or gone astray) is unparsed rather than read from its last line.
    """
    matches = list(_ANSWER_RE.finditer(response or ""))
    if not matches:
        return None
    tail = response[matches[-1].end() :].strip()
    return tail.splitlines()[0].strip() if tail else ""


def is_abstention(text: str | None) -> bool:
    """The shared abstention phrases ("unknown", "cannot see", ...) of ``peekaboo.answers``."""
    from ..answers import is_abstention as shared

    return bool(shared(text))


def normalise(text: str, answer_type: str) -> str | None:
    t = text.strip().lower().strip(" .,!;:\"'`*")
    if answer_type == "integer":
        m = re.fullmatch(r"[-+]?\d+", t.replace(",", ""))
        return str(int(m.group())) if m else None
    if answer_type == "yes_no":
        return t if t in ("yes", "no") else None
    return t or None


def score_response(item: Mapping[str, Any], response: str, *, thinking_open: bool = False) -> Score:
    """Score a response to a panels item (module doc); a thinking block is skipped, as for the real benchmarks."""
    answer_part, truncated = split_thinking(response, thinking_open)
    if truncated:
        return Score(answer_text=None, correct=False, truncated=True)
    answer = final_answer(answer_part)
    if answer is None:
        return Score(answer_text=None, correct=False, abstained=False)
    if is_abstention(answer):
        return Score(answer_text=answer.strip().lower().strip(" .") or None, correct=False, abstained=True)
    parsed = normalise(answer, item["answer_type"])
    gold = normalise(str(item["answer"]), item["answer_type"])
    return Score(answer_text=parsed, correct=parsed is not None and parsed == gold, abstained=False)


# --------------------------------------------------------------------------- adapter


def item_meta(item: PanelItem, rule: BlinkRule | None = None) -> dict[str, Any]:
    """The item's meta; with ``rule``, also whether a ``blinker`` model answers it without looking.

    ``blink`` and ``blink_answer`` (the prior colour it names) are for the
    checks that judge what the analysis recovers; no analysis stage reads them.
    """
    text, steps = gold_solution(item)
    prior = blink_answer(item, rule) if rule is not None else None
    blink = {} if rule is None else {"blink": prior is not None, "blink_answer": prior}
    return {
        "question_type": item.question_type,
        "attribute": item.attribute,
        "gold_text": text,
        "gold_steps": steps,
        "panels": [
            {"label": p.label, "box": list(p.box), "colour": p.colour, "shape": p.shape, "rgb": list(p.rgb)}
            for p in item.panels
        ],
        "evidence_panels": list(item.evidence),
        "operands": list(item.operands),
        # the masks stage draws control masks among these, so a control hides a whole panel as the evidence mask does
        "control_candidates": [{"box": list(p.box), "image": 0} for p in item.panels],
        **blink,
    }


class PanelsAdapter(Adapter):
    """The synthetic panels benchmark (see the module docstring for questions and options)."""

    name = "panels"
    default_task_type = "visual_reference"

    def __init__(self, options, dataset, seed=0, base_dir="."):
        super().__init__(options, dataset, seed=seed, base_dir=base_dir)
        try:
            self.opts = resolve_options(self.options, where=f"datasets.{dataset}.options", default_seed=self.seed)
        except OptionsError as exc:
            raise AdapterError(str(exc)) from None
        self.blink = blink_rule(self.opts)

    def check(self) -> list[str]:
        return []

    def count(self) -> int:
        return self.opts.n_items

    def records(self) -> Iterator[RawItem]:
        for item in generate_items(self.opts, id_prefix=self.dataset):
            yield RawItem(
                item_id=item.item_id,
                question=item.question,
                answer=item.answer,
                answer_type=item.answer_type,
                images=[item.image],
                choices=None,
                task_type=item.task_type,
                regions=item.regions,
                meta=item_meta(item, self.blink),
            )

    def score(self, item: Mapping[str, Any], response: str, *, thinking_open: bool = False) -> Score:
        return score_response(item, response, thinking_open=thinking_open)
