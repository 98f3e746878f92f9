"""Every planted behaviour trained from scratch with the default config's recipe, judged by the checks' targets.

The default run uses the shipped models (shipped/reference/); this is what
shows that the training that made them still plants every behaviour: the four
reference models of config.yaml trained here from their entries exactly
(blind-spot from random weights, the three others fine-tuned from it), each
training job's probe gate passed (a missed probe fails the training), then
each model's behaviour table on held-out items judged against
``peekaboo.models.reference.behaviour.TARGETS``, the targets
``checks/reference_behaviour.py`` judges (fewer items per question type, to
keep the suite short). Minutes: the longest test of the suite.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import peekaboo.config as pcfg
from peekaboo import synthetic as P
from peekaboo.models import reference as R
from peekaboo.provenance import record

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.slow

# held-out items per question type (checks/reference_behaviour.py: 100): at 0.95 a target allows 2 misses in 50
N_PER_TYPE = 50


@pytest.fixture(scope="module")
def from_scratch(tmp_path_factory):
    """config.yaml's reference models trained in dependency order: name -> (folder, report, validated config)."""
    import torch

    cfg = pcfg.load(REPO / "config.yaml", check_paths=False)
    root = tmp_path_factory.mktemp("from-scratch")
    order = [m for m in cfg["models"] if cfg["models"][m].get("reference") and not R.init_model(cfg, m)]
    order += [m for m in cfg["models"] if cfg["models"][m].get("reference") and m not in order]
    threads = torch.get_num_threads()
    out = {}
    try:
        for m in order:
            config = R.training_config(cfg, m)
            parent = R.init_model(cfg, m)
            report = R.train_reference(
                config["reference"], config["options"], root / m, name=m,
                init_dir=root / parent if parent else None, system_prompt=config["system_prompt"],
                thinking=config["thinking"], default_seed=config["seed"], provenance=record(config),
                where=f"models.{m}.reference",
            )
            out[m] = (root / m, report)
    finally:
        torch.set_num_threads(threads)
    return cfg, out


MODELS = ["blind-spot", "grounded", "oversensitive", "blinker"]


def judge(cfg, model: str, folder: Path) -> None:
    """The model's behaviour table on held-out items meets every target of its behaviour."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    behaviour = cfg["models"][model]["reference"]["behaviour"]
    opts = P.resolve_options(cfg["datasets"][R.training_dataset(cfg, model)]["options"], default_seed=cfg["seed"])
    processor = AutoProcessor.from_pretrained(folder)
    net = AutoModelForImageTextToText.from_pretrained(folder).eval()
    table = R.behaviour_table(net, processor, opts, n_per_type=N_PER_TYPE, blink=behaviour == "blinker")
    judged = [r for r in table.to_dict("records")
              if R.row_targets(r["condition"], r["fill"], behaviour, r.get("subset", "look"))]
    assert len(judged) >= 6, table
    assert R.missed_targets(table, behaviour) == [], table.to_string()


@pytest.mark.parametrize("model", MODELS)
def test_the_shipped_models_meet_every_target(model):
    cfg = pcfg.load(REPO / "config.yaml", check_paths=False)
    judge(cfg, model, REPO / "shipped" / "reference" / model)


@pytest.mark.parametrize("model", MODELS)
def test_training_from_scratch_plants_the_behaviour(from_scratch, model):
    cfg, trained = from_scratch
    folder, report = trained[model]
    assert report["probe_passed_at"] is not None and report["probe"]["final"]["accuracy"] == 1.0
    judge(cfg, model, folder)
