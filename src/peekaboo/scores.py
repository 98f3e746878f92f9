"""What an item is and how a response scores: task types, answer types and the Score of one response.

Adapters (``peekaboo.datasets``), the answer helpers (``peekaboo.answers``)
and the traces stage all speak these; they live on the ground floor so that
none of them imports another for them.
"""

from __future__ import annotations

from dataclasses import dataclass

TASK_TYPES = ("visual_reference", "symbolic")
ANSWER_TYPES = ("multi_choice", "integer", "float", "yes_no", "text", "list")


@dataclass
class Score:
    answer_text: str | None  # the parsed answer, normalised like the gold answer; None when unparsed
    correct: bool | None  # None only when the response could not be scored at all
    abstained: bool = False  # the model said it cannot tell (e.g. "unknown", "cannot see")
    truncated: bool = False  # the response ended before its answer (inside its thinking block): never scored
