"""configs/paper.yaml: the study's models and datasets, valid, and usable on fixture copies of all four datasets."""

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures import benchmarks as fx
from fixtures.workflow import hub_cache, hub_models
import peekaboo.config as pcfg
from peekaboo.datasets import RawItem, get_adapter

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper.yaml"


def paper_raw() -> dict:
    return yaml.safe_load(PAPER.read_text(encoding="utf-8"))


def pointed_at(options_by_dataset: dict) -> dict:
    """The paper's config with each dataset's path options replaced by fixture copies."""
    raw = copy.deepcopy(paper_raw())
    for name, options in options_by_dataset.items():
        raw["datasets"][name]["options"].update(options)
    return raw


@pytest.fixture
def paper_models(tmp_path, monkeypatch):
    """The paper's models in a hub cache, as on a machine that downloaded them (validation resolves every hub id)."""
    import huggingface_hub.constants

    cache = hub_cache(tmp_path / "hub", *hub_models(paper_raw()))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def fixture_options(tmp_path_factory):
    return fx.write_all(tmp_path_factory.mktemp("paper-data"))


def test_paper_config_validates_against_the_schema():
    cfg = pcfg.load(PAPER, check_paths=False)
    assert list(cfg["datasets"]) == ["mathvista", "hallusionbench", "mmmu_pro", "visargs"]
    assert {m: spec["source"] for m, spec in cfg["models"].items()} == {
        "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Thinking",
        "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Thinking",
        "glm-4.6v-flash": "zai-org/GLM-4.6V-Flash",
    }
    for name, model in cfg["models"].items():
        assert model["thinking"] is True and model["dtype"] == "bfloat16", name
        assert model["generation"]["max_new_tokens"] >= 4096, name
        assert model["resources"].get("gpu") == 1, name
        assert model["trust_remote_code"] is False, name
    assert cfg["models"]["qwen3-vl-8b"]["device_map"] == "auto"
    assert cfg["models"]["glm-4.6v-flash"]["device_map"] == "auto"


def test_masks_for_visargs_only_and_the_study_task_types():
    cfg = pcfg.load(PAPER, check_paths=False)
    assert {d: spec["masks"] for d, spec in cfg["datasets"].items()} == {
        "mathvista": False, "hallusionbench": False, "mmmu_pro": False, "visargs": True,
    }
    assert cfg["datasets"]["mathvista"]["task_type"] == "symbolic"
    assert cfg["datasets"]["mmmu_pro"]["task_type"] == "visual_reference"
    assert cfg["datasets"]["hallusionbench"]["task_type"] is None  # per item: no image -> symbolic


def test_the_three_box_less_datasets_get_boxes_from_the_boxes_stage():
    cfg = pcfg.load(PAPER, check_paths=False)
    for name in ("mathvista", "hallusionbench", "mmmu_pro"):
        boxes = cfg["datasets"][name]["boxes"]
        assert boxes["kind"] in ("vlm", "detector"), name
        assert boxes["model"]["trust_remote_code"] is False and boxes["model"]["resources"].get("gpu") == 1, name
        # a grounding model outside the studied ones
        assert boxes["model"]["source"] not in {m["source"] for m in cfg["models"].values()}, name
    assert cfg["datasets"]["visargs"]["boxes"] is None  # its human boxes


def test_placeholder_paths_are_reported_when_missing(tmp_path):
    with pytest.raises(pcfg.ConfigError) as err:
        pcfg.validate(paper_raw(), base_dir=tmp_path, check_paths=True)
    for name in ("mathvista", "hallusionbench", "mmmu_pro", "visargs"):
        assert f"datasets.{name}.options.path" in str(err.value)
    # and the models, absent from this machine's (empty) hub cache, are named too
    for name in paper_raw()["models"]:
        assert f"models.{name}.source" in str(err.value)
    for name in ("mathvista", "hallusionbench", "mmmu_pro"):  # the grounding model
        assert f"datasets.{name}.boxes.model.source" in str(err.value)


def test_pointed_at_fixture_copies_it_validates_and_every_dataset_gives_items(fixture_options, paper_models, tmp_path):
    cfg = pcfg.validate(pointed_at(fixture_options), base_dir=tmp_path, check_paths=True)
    for name, spec in cfg["datasets"].items():
        adapter = get_adapter(name, spec, seed=cfg["seed"], base_dir=tmp_path)
        items = [r for r in adapter.records() if isinstance(r, RawItem)]
        assert 0 < len(items) <= adapter.count(), name


def test_items_stage_on_all_four_fixture_copies(fixture_options, paper_models, tmp_path):
    cfg = pcfg.validate(pointed_at(fixture_options), base_dir=tmp_path, check_paths=True)
    from peekaboo.items import build_items

    kept = {}
    for name, spec in cfg["datasets"].items():
        # boxes made by a model need the boxes stage first (the end-to-end run below); here: none
        spec = {**spec, "boxes": None}
        items, rejects = build_items(name, spec, cfg["seed"], tmp_path / "results", base_dir=tmp_path)
        kept[name] = (len(items), sorted(rejects["item_id"]))
        assert set(items["task_type"]) <= {"symbolic", "visual_reference"}
    assert kept == {
        "mathvista": (6, []),
        "hallusionbench": (6, []),
        "mmmu_pro": (4, ["test_Biology_5"]),  # names an empty image column
        "visargs": (3, ["1122330003", "4455660004"]),  # box outside its image; image never downloaded
    }


@pytest.mark.slow
def test_snakemake_dry_run_with_the_paper_config_on_fixture_copies(fixture_options, tmp_path):
    config = tmp_path / "paper-fixtures.yaml"
    config.write_text(yaml.safe_dump(pointed_at(fixture_options)), encoding="utf-8")
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    # the paper's models, as a machine that downloaded them has them (validation resolves every hub id)
    cache = hub_cache(tmp_path / "hub", *hub_models(pointed_at(fixture_options)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    proc = subprocess.run(
        [snakemake, "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(config), "--cores", "1", "--quiet", "rules"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    planned = proc.stdout + proc.stderr
    assert "items" in planned and "boxes" in planned
    # the model whose entry says engine: vllm gets its generate jobs (vLLM in its own environment)
    assert pcfg.validate(pointed_at(fixture_options), check_paths=False)["models"]["qwen3-vl-8b"]["engine"] == "vllm"
    jobs = subprocess.run(
        [snakemake, "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(config), "--cores", "1", "requests",
         "results/paper/traces/qwen3-vl-8b/mathvista/shard-0.generations.jsonl"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert jobs.returncode == 0, jobs.stdout[-3000:] + jobs.stderr[-3000:]
    listing = jobs.stdout + jobs.stderr
    # the requests target: an OpenAI batch file per (model, dataset), 3 models x 4 datasets
    assert "batch_requests" in listing
    assert len(set(re.findall(r"requests/qwen3-vl-8b/\w+\.jsonl", listing))) == 4
    assert re.search(r"rule generate:\s+input:.*?wildcards: m=qwen3-vl-8b, d=mathvista, i=0", listing, re.S)


def tiny_box_sources(raw, model_dir, root):
    """The paper's boxes entries with tiny models: mathvista a tiny Qwen2.5-VL taught one answer (parseable boxes),
    hallusionbench the tiny random Qwen3-VL (noise: rejects with reasons), mmmu_pro a tiny random OWLv2."""
    from fixtures.grounding import build_tiny_owlv2, stage_prompts, teach_answer
    from peekaboo.images import load_image
    from peekaboo.models.tiny import build_tiny

    boxes = {
        "mathvista": {"kind": "vlm", "model": {"source": str(build_tiny("qwen2_5_vl", root / "tiny-qwen2.5-vl")),
                                                "generation": {"max_new_tokens": 40}, "batch_size": 3}},
        "hallusionbench": {"kind": "vlm", "model": {"source": str(model_dir), "generation": {"max_new_tokens": 16}}},
        "mmmu_pro": {"kind": "detector", "model": {"source": str(build_tiny_owlv2(root / "tiny-owlv2"))},
                     "score_threshold": 0.0, "max_boxes": 2},
    }
    spec = pcfg.validate({**raw, "datasets": {"mathvista": {**raw["datasets"]["mathvista"],
                                                            "boxes": boxes["mathvista"]}}}, check_paths=False)
    entry = spec["datasets"]["mathvista"]
    records = [r for r in get_adapter("mathvista", entry).records() if isinstance(r, RawItem)][: entry["limit"]]
    teach_answer(Path(boxes["mathvista"]["model"]["source"]), '[{"bbox_2d":[7,7,42,35]}]',
                 stage_prompts(entry["boxes"], records, load_image))
    for name, entry in boxes.items():
        raw["datasets"][name]["boxes"] = entry


@pytest.mark.slow
def test_tiny_end_to_end_run_on_all_four_fixture_datasets(fixture_options, tmp_path):
    """The paper's datasets (fixture copies, two items each) through every stage with a tiny random Qwen3-VL,
    the three box-less ones with evidence boxes from the boxes stage (tiny grounding models)."""
    from peekaboo.models.tiny import build_tiny

    model_dir = build_tiny("qwen3_vl", tmp_path / "tiny-qwen3-vl")
    raw = pointed_at(fixture_options)
    raw["results"] = "results"
    for spec in raw["datasets"].values():
        spec["limit"] = 3
        spec["shard_size"] = 2
    tiny_box_sources(raw, model_dir, tmp_path)
    raw["models"] = {
        "tiny": {"source": str(model_dir), "thinking": True, "dtype": "float32", "batch_size": 2,
                 "generation": {"max_new_tokens": 12}},
    }
    raw["selective"] = {"bootstrap": 20}
    config = tmp_path / "paper-tiny.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    # PEEKABOO_CHECK_CODE_INPUTS: a stage on the contract fails if it runs code its rule does not declare
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PEEKABOO_CHECK_CODE_INPUTS": "1"}
    proc = subprocess.run(
        [snakemake, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(config), "--cores", "2"],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = tmp_path / "results"
    for d in ("mathvista", "hallusionbench", "mmmu_pro", "visargs"):
        assert (results / "items" / f"{d}.parquet").is_file(), d
        assert (results / "masks" / f"{d}.parquet").is_file(), d
        assert list((results / "traces" / "tiny" / d).glob("shard-*.parquet")), d
    for d in ("mathvista", "hallusionbench", "mmmu_pro"):
        assert (results / "collapse" / "tiny" / f"{d}.parquet").is_file(), d
    # the paper config's VisArgs feeds CRM only (datasets.visargs.analyses): no collapse job for it
    assert not (results / "collapse" / "tiny" / "visargs.parquet").exists()
    assert (results / "crm" / "tiny" / "visargs" / "modes.parquet").is_file()
    for out in ("regression/coefficients.csv", "regression/interaction_by_task.csv", "selective/summary.csv",
                "collapse/summary.csv", "collapse/trajectory.csv", "collapse/accuracy.csv", "figures/manifest.json"):
        assert (results / out).is_file(), out

    # the boxes stage made boxes (or rejects with reasons) that the items and the later stages use
    from peekaboo import tables

    sources = {d: tables.read_table(results / "items" / f"{d}.parquet").set_index("item_id")["boxes_source"]
               for d in ("mathvista", "hallusionbench", "mmmu_pro", "visargs")}
    assert set(sources["mathvista"]) == {"vlm"}  # the taught answer's box, on every item
    assert sources["hallusionbench"].isna().all()  # noise: no box
    hb_rejects = tables.read_table(results / "boxes" / "hallusionbench.rejects.parquet")
    assert len(hb_rejects) and hb_rejects["reason"].map(bool).all()
    assert set(sources["mmmu_pro"]) == {"detector"}
    assert set(sources["visargs"].dropna()) == {"dataset"}
    for d in ("mathvista", "mmmu_pro"):
        traces = tables.read_table(results / "collapse" / "tiny" / f"{d}.traces.parquet")
        ok = traces[traces["status"] == "ok"]
        assert len(ok) and (ok["n_evidence_regions"] > 0).all(), d
        assert ok["evidence_area_fraction"].between(0, 1, inclusive="right").all(), d
    assert not (results / "boxes" / "visargs.jsonl").exists()  # no boxes entry: no boxes job

    import json

    import pandas as pd

    from peekaboo.figures import FIGURES

    manifest = json.loads((results / "figures" / "manifest.json").read_text())
    assert {e["name"] for e in manifest["figures"]} == set(FIGURES)
    assert all(e["status"] in ("ok", "empty") and (e["status"] == "ok" or e["reason"]) for e in manifest["figures"])
    # every finding of the two papers has a row; a row without an estimate says why
    claims = pd.read_csv(results / "claims.csv")
    assert claims["id"].nunique() == 8 and claims["reason"].notna().all()
    unestimated = claims[claims["verdict"] == "not estimable"]
    assert (unestimated["reason"].str.len() > 10).all()


@pytest.mark.slow
def test_paper_study_at_fixture_scale_estimates_every_finding(tmp_path):
    """The paper config's analyses on the three box-less datasets at a scale where every fit is possible.

    The model's outputs are imported (``models.<m>.generations``), as for a study generated by another engine:
    thinking chains whose final answer is right for half of the items and wrong for the other half, replayed
    through a tiny random Qwen3-VL for its attention and entropy. Every fit then has errors and correct answers,
    so the interaction, transfer, veto, entropy comparison and collapse findings are all estimated; the claims
    table states each with an interval, or why not.
    """
    import json

    import pandas as pd

    from peekaboo import tables
    from peekaboo.models.tiny import build_tiny

    model_dir = build_tiny("qwen3_vl", tmp_path / "tiny-qwen3-vl")
    raw = copy.deepcopy(paper_raw())
    raw["results"] = "results"
    options = fx.write_scaled(tmp_path / "data", 24)
    raw["datasets"] = {d: {**raw["datasets"][d], "options": {**raw["datasets"][d]["options"], **o}, "boxes": None,
                           "shard_size": 12} for d, o in options.items()}
    engine = tmp_path / "engine"
    raw["models"] = {"tiny": {"source": str(model_dir), "thinking": True, "dtype": "float32", "batch_size": 8,
                              "generations": str(engine / "{dataset}.jsonl")}}
    raw["selective"] = {"bootstrap": 50}
    raw["regression"] = {"bootstrap": 50}
    raw["claims"] = {"bootstrap": 50}
    raw["collapse"] = {**raw.get("collapse", {}), "bootstrap": 50}
    config = tmp_path / "paper-scaled.yaml"
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PEEKABOO_CHECK_CODE_INPUTS": "1"}

    def run(*args):
        config.write_text(yaml.safe_dump(raw), encoding="utf-8")
        proc = subprocess.run([snakemake, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                               "--configfile", str(config), "--cores", "2", *args],
                              capture_output=True, text=True, env=env, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stdout + proc.stderr

    # the requests to send the engine: one per row of the masks tables (an empty file for now, so validation passes)
    engine.mkdir()
    for d in options:
        (engine / f"{d}.jsonl").write_text("")
    run("--until", "masks")
    results = tmp_path / "results"
    import random

    right = random.Random(7)  # right or wrong at random: no feature of the items decides it
    for d in options:
        items = tables.read_table(results / "items" / f"{d}.parquet").set_index("item_id")
        lines = []
        for row in tables.read_table(results / "masks" / f"{d}.parquet").itertuples():
            item = items.loc[row.item_id].to_dict()
            answer = str(item["answer"]) if right.random() < 0.5 else fx.wrong_answer(item)
            # the prompt opened the thinking block (Qwen3-VL-Thinking's template): the text continues inside it
            text = f"The image shows the chart.\nI read the question again.\n</think>\n\nAnswer: {answer}"
            lines.append(json.dumps({"id": row.mask_id, "text": text, "finish_reason": "stop"}))
        (engine / f"{d}.jsonl").write_text("\n".join(lines) + "\n")
    out = run()
    assert "rule generate" not in out  # the imported outputs stand in for generation

    claims = pd.read_csv(results / "claims.csv")
    primary = claims[claims["primary"]] if "primary" in claims else claims
    assert primary["id"].nunique() == 8 and primary["reason"].notna().all()
    estimated = primary[primary["verdict"].isin(["consistent", "inconsistent"])]
    # each finding the three datasets can speak to is estimated, with an interval; CRM needs VisArgs' masks
    assert {"evidence_collapse", "entropy_transfer", "vision_hurts_transfer", "interaction_visual_reference",
            "interaction_symbolic"} <= set(primary.loc[primary["estimate"].notna(), "id"]), \
        primary[["id", "verdict", "reason"]]
    # right and wrong at random: no task type where disengagement lowers correctness, so the veto never acts
    veto = primary[primary["id"] == "vision_veto"].iloc[0]
    assert pd.notna(veto["estimate"]) or "veto is off in every cell" in veto["reason"]
    assert primary.loc[primary["estimate"].notna(), ["ci_low", "ci_high"]].notna().all().all()
    assert set(primary.loc[primary["id"].str.startswith("crm"), "verdict"]) == {"not estimable"}
    assert len(estimated) + (primary["verdict"] == "not estimable").sum() == len(primary)
    coefficients = pd.read_csv(results / "regression" / "coefficients.csv")
    per_dataset = coefficients[(coefficients["scope"] == "dataset") & (coefficients["vision_measure"] == "image_share")]
    assert set(per_dataset.loc[per_dataset["status"] != "not_fitted", "dataset"]) == set(options), per_dataset
    # HallusionBench's text-only questions have no vision value: left out of its fits, and counted
    hb = per_dataset[per_dataset["dataset"] == "hallusionbench"].iloc[0]
    assert hb["n_dropped"] > 0 and "without vision engagement" in hb["note"]
