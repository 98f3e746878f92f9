"""Scorers: how a model's response to an item scores, one module per adapter name.

``peekaboo.scoring.<adapter>`` holds that dataset's
``score(item, response, *, thinking_open=False) -> Score`` (``item``: a row
of the items table) and, where the dataset has them, its aggregate metrics
``summary_metrics(items, traces)``. Shared below them: ``extraction`` (reading
the final answer, abstentions, letters, yes/no and numbers out of a response)
and ``official`` (the official scorers' rule-based parts, ported as reference
implementations).

The scorers are kept apart from the dataset readers (``peekaboo.datasets``):
the items stage imports a reader, the traces stage a scorer, so an edit to a
scorer re-runs the traces and what follows them, never the items, masks or
generation. A scorer is imported by name at run time (``get_scorer``), so the
``traces`` rule names the dataset's scorer module in its code input itself.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..scores import Score

__all__ = ["Scorer", "ScorerError", "get_scorer", "scorer_module", "scorer_names"]

# one module per adapter name (peekaboo.datasets.base's registry names the readers)
_SCORERS = ("hallusionbench", "jsonl", "mathvista", "mmmu_pro", "panels", "visargs")


class ScorerError(ValueError):
    """No scorer of that name."""


@dataclass(frozen=True)
class Scorer:
    """A dataset's scorer: ``score(item, response, *, thinking_open=False)`` and ``summary_metrics(items, traces)``.

    ``score`` scores a model's full response against an item (a row of the
    items table). ``thinking_open``: the rendered prompt ended inside an open
    thinking block (``peekaboo.prompting.thinking_open``), so a response
    without a closing tag never left its thinking: unparsed, wrong and
    ``truncated``. ``summary_metrics`` gives the dataset's own aggregate
    metrics over the base traces (HallusionBench's leaderboard accuracies,
    MMMU-Pro's accuracy and unparsed count); {} for a dataset without any.
    """

    name: str
    score: Callable[..., Score]
    summary_metrics: Callable[[Any, Any], dict[str, float]]


def scorer_names() -> list[str]:
    return list(_SCORERS)


def scorer_module(name: str) -> str:
    """The module of a scorer (``peekaboo.scoring.<name>``); ScorerError for an unknown name."""
    if name not in _SCORERS:
        raise ScorerError(f"unknown scorer '{name}' (known: {', '.join(_SCORERS)})")
    return f"{__name__}.{name}"


def get_scorer(name: str) -> Scorer:
    """The scorer of an adapter name (a dataset entry's ``adapter``), its module imported on first use."""
    module = importlib.import_module(scorer_module(name))
    return Scorer(name=name, score=module.score, summary_metrics=getattr(module, "summary_metrics", _no_metrics))


def _no_metrics(items, traces) -> dict[str, float]:
    return {}
