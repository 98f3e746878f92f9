"""configs/paper.yaml: the study's models and datasets, valid, and usable on fixture copies of all four datasets."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import fixtures as fx
from _fixtures_workflow import hub_cache
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

    cache = hub_cache(tmp_path / "hub", *(m["source"] for m in paper_raw()["models"].values()))
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


def test_placeholder_paths_are_reported_when_missing(tmp_path):
    with pytest.raises(pcfg.ConfigError) as err:
        pcfg.validate(paper_raw(), base_dir=tmp_path, check_paths=True)
    for name in ("mathvista", "hallusionbench", "mmmu_pro", "visargs"):
        assert f"datasets.{name}.options.path" in str(err.value)
    # and the models, absent from this machine's (empty) hub cache, are named too
    for name in paper_raw()["models"]:
        assert f"models.{name}.source" in str(err.value)


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
    cache = hub_cache(tmp_path / "hub", *(m["source"] for m in pointed_at(fixture_options)["models"].values()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    proc = subprocess.run(
        [snakemake, "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(config), "--cores", "1", "--quiet", "rules"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "items" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_tiny_end_to_end_run_on_all_four_fixture_datasets(fixture_options, tmp_path):
    """The paper's datasets (fixture copies, two items each) through every stage with a tiny random Qwen3-VL."""
    from peekaboo.models.tiny import build_tiny

    model_dir = build_tiny("qwen3_vl", tmp_path / "tiny-qwen3-vl")
    raw = pointed_at(fixture_options)
    raw["results"] = "results"
    for spec in raw["datasets"].values():
        spec["limit"] = 3
        spec["shard_size"] = 2
    raw["models"] = {
        "tiny": {"source": str(model_dir), "thinking": True, "dtype": "float32", "batch_size": 2,
                 "generation": {"max_new_tokens": 12}},
    }
    raw["selective"] = {"bootstrap": 20}
    config = tmp_path / "paper-tiny.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
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
        assert (results / "collapse" / "tiny" / f"{d}.parquet").is_file(), d
    assert (results / "crm" / "tiny" / "visargs" / "modes.parquet").is_file()
    for out in ("regression/coefficients.csv", "regression/interaction_by_task.csv", "selective/summary.csv",
                "collapse/summary.csv", "collapse/trajectory.csv", "collapse/accuracy.csv", "figures/manifest.json"):
        assert (results / out).is_file(), out
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
