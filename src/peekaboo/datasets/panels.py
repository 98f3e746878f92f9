"""The ``panels`` adapter: the synthetic benchmark (``peekaboo.synthetic``) as items.

Items, options and gold solutions are described in ``peekaboo.synthetic``;
docs/datasets.md has the options table. Scoring: ``peekaboo.scoring.panels``.
"""

from __future__ import annotations

from typing import Any, Iterator

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
from .base import Adapter, AdapterError, RawItem


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
