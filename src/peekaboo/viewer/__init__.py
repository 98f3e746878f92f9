"""The viewer stage: a static site under ``results/viewer/`` to look at single cases (docs/viewer.md).

From the result tables and trace stores alone (no model, no server): an index
per (model, dataset) of every item with its CRM modes, correctness,
abstention, entropy and vision engagement, sortable and filterable, and one
page per item with the base trace split into steps (each step's attention
over the image as a heat map, per-token entropy along the text, the answer
and its score) beside every masked variant with its CRM alignment to the base
trace. :mod:`.data` extracts what the pages show, :mod:`.maps` draws the heat
maps and colour scales, :mod:`.site` writes the pages.
"""

from __future__ import annotations

from ..stage import StageCall
from .data import group_sources
from .site import build_site


def run_stage(call: StageCall) -> None:
    """Rule ``viewer``: every named input is a table or store of the results folder; output ``site`` the folder."""
    paths = [p for name in call.inputs for p in call.paths(name)]
    pairs = group_sources(paths, call.results_dir)
    build_site(pairs, call.results_dir, call.output("site"), call.config["viewer"],
               call.config["collapse"]["layers"], call.provenance())
