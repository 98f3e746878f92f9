"""The workflow's stages: which module each rule runs, and the package code each rule depends on.

Every rule ``X`` runs ``workflow/scripts/X.py``, which calls
``run_stage(call)`` of the module named here (``peekaboo.stage`` has the
contract). A rule's ``input.code`` is the import closure of that module plus
the runner's (``peekaboo.closure``), so that editing any package module a stage
can import re-runs exactly the stages that can import it. Read while the
workflow is parsed: nothing heavy is imported here.
"""

from __future__ import annotations

from .closure import closure_files

STAGE_MODULES: dict[str, str] = {
    "boxes": "peekaboo.grounding.stage",
    "items": "peekaboo.items",
    "masks": "peekaboo.masks",
    "train_reference": "peekaboo.models.reference.training",
    "ship_reference": "peekaboo.models.reference.shipped",
    "generate": "peekaboo.generating",
    "batch_requests": "peekaboo.batch_requests",
    "traces": "peekaboo.traces",
    "steps": "peekaboo.steps",
    "crm": "peekaboo.crm",
    "collapse": "peekaboo.collapse",
    "collapse_findings": "peekaboo.collapse_findings",
    "regression": "peekaboo.regression",
    "selective": "peekaboo.selective",
    "figures": "peekaboo.figures",
    "claims": "peekaboo.claims",
    "viewer": "peekaboo.viewer",
}

RUNNER = "peekaboo.stage"


def code_files(rule: str, *extra_modules: str) -> list[str]:
    """A rule's ``input.code``: its stage module's import closure, the runner's, and ``extra_modules``'.

    ``extra_modules`` are modules the stage imports by name at run time (a
    dataset's adapter, chosen by the config), which the source does not show.
    """
    try:
        module = STAGE_MODULES[rule]
    except KeyError:
        raise KeyError(f"no stage for rule '{rule}' (known: {', '.join(STAGE_MODULES)})") from None
    return closure_files(module, RUNNER, *extra_modules)
