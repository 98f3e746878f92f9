"""Shipped reference models: the manifest, the hash checks, the ship_reference rule, and a training job that fails its probe.

The shipped models themselves (shipped/reference/) are checked against
config.yaml and their manifest here; the tiny runs of the real Snakefile ship a
model trained for three steps (no probe target) and train one whose probe
cannot pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import peekaboo.config as pcfg
from peekaboo.models import reference as R
from peekaboo.models.reference import shipped
from peekaboo.provenance import config_hash

from fixtures.workflow import copy_workflow
from fixtures.scripts import load_script

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# three steps plant nothing, so no probe target (a target missed fails the training)
QUICK = {"behaviour": "grounded", "steps": 3, "batch_size": 4, "warmup_steps": 1, "probe_every": 0,
         "probe_items": 4, "threads": 1, "stop_accuracy": None}


def tiny_config(reference: dict) -> dict:
    return {
        "results": "results",
        "seed": 3,
        "datasets": {"panels": {"adapter": "panels", "options": {"seed": 7, "n_items": 3}}},
        "models": {"ref": {"reference": reference, "generation": {"max_new_tokens": 12}, "batch_size": 4,
                           "generate_separately": False}},
        "resources": {"trace_gpus": 0},
    }


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory):
    """(folder, training config) of a tiny model trained the way the train_reference rule trains it."""
    cfg = pcfg.validate(tiny_config({**QUICK, "source": "train"}), check_paths=False)
    config = R.training_config(cfg, "ref")
    folder = tmp_path_factory.mktemp("trained") / "ref"
    from peekaboo.provenance import record

    R.train_reference(config["reference"], config["options"], folder, name="ref", default_seed=config["seed"],
                      provenance=record(config))
    return folder, config


def test_ship_writes_the_manifest_and_install_checks_every_hash(tiny_trained, tmp_path):
    folder, config = tiny_trained
    out = tmp_path / "shipped"
    manifest = shipped.ship({"ref": (folder, config)}, out, made={"command": "test", "commit": "abc"})
    entry = manifest["models"]["ref"]
    names = sorted(p.name for p in folder.iterdir())
    assert sorted(entry["files"]) == names and "model.safetensors" in names and "training.json" in names
    assert entry["files"]["model.safetensors"] == shipped.sha256(folder / "model.safetensors")
    assert entry["config"] == json.loads(json.dumps(config)) and entry["steps"] == 3
    assert json.loads((out / "manifest.json").read_text()) == manifest and manifest["commit"] == "abc"

    installed = shipped.install(out, "ref", entry, tmp_path / "results" / "ref")
    assert [p.name for p in installed] == names
    assert (tmp_path / "results/ref/model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()

    weights = out / "ref" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(shipped.ShippedModelError, match=r"shipped/ref/model\.safetensors: sha256 [0-9a-f]{64} does not "
                       r"match [0-9a-f]{64} in .*manifest\.json"):
        shipped.install(out, "ref", entry, tmp_path / "again")
    assert not (tmp_path / "again").exists()
    weights.unlink()
    with pytest.raises(shipped.ShippedModelError, match=r"model\.safetensors: shipped file of reference model 'ref' is missing"):
        shipped.verify(out, "ref", entry)


def test_a_config_that_is_not_the_shipped_training_names_the_key(tiny_trained, tmp_path):
    folder, config = tiny_trained
    entry = shipped.ship({"ref": (folder, config)}, tmp_path, made={})["models"]["ref"]
    shipped.check_config(entry, config, "ref", tmp_path)
    # keys that do not shape the weights are not compared
    shipped.check_config(entry, {**config, "reference": {**config["reference"], "data_workers": 3, "source": "shipped"}},
                         "ref", tmp_path)
    other = {**config, "reference": {**config["reference"], "steps": 4}}
    with pytest.raises(shipped.ShippedModelError, match=r"models\.ref\.reference: .*reference\.steps: the shipped model "
                       r"was trained with 3, this config has 4.*source: train"):
        shipped.check_config(entry, other, "ref", tmp_path)
    with pytest.raises(shipped.ShippedModelError, match=r"options\.noise: this config has 4"):
        shipped.check_config(entry, {**config, "options": {"noise": 4}}, "ref", tmp_path)
    with pytest.raises(shipped.ShippedModelError, match=r"ships no model 'other' \(it ships: ref\)"):
        shipped.model_entry(shipped.load_manifest(tmp_path), "other", tmp_path)


def test_the_shipped_models_are_the_ones_config_yaml_names():
    """Every model of the default config ships, trained from its entry, with the manifest's hashes; a few MB."""
    cfg = pcfg.load(REPO / "config.yaml", check_paths=False)
    folder = shipped.shipped_dir(REPO)
    manifest = shipped.load_manifest(folder)
    models = [m for m in cfg["models"] if R.is_shipped(cfg, m)]
    assert models == ["blind-spot", "grounded", "oversensitive", "blinker"]
    assert sorted(manifest["models"]) == sorted(models)
    for m in models:
        entry = shipped.model_entry(manifest, m, folder)
        shipped.check_config(entry, R.training_config(cfg, m), m, folder)
        shipped.verify(folder, m, entry)
        assert entry["probe"]["accuracy"] == 1.0
        # the training report's config hash: the weights came from a train_reference job of this very entry
        assert entry["training_provenance"]["config_hash"] == config_hash(R.training_config(cfg, m))
    assert manifest["commit"] and manifest["command"].startswith("python scripts/ship_reference.py")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 12e6, size


def _snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PEEKABOO_CHECK_CODE_INPUTS": "1"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", "config.test.yaml"],
                          cwd=work, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_the_workflow_copies_a_shipped_model_and_stops_on_a_wrong_hash(tiny_trained, tmp_path):
    folder, config = tiny_trained
    work = copy_workflow(tmp_path)
    shipped.ship({"ref": (folder, config)}, shipped.shipped_dir(work), made={"command": "test"})
    (work / "config.test.yaml").write_text(yaml.safe_dump(tiny_config({**QUICK, "source": "shipped"})))

    run = _snakemake(work, "results/reference/ref")
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    out = work / "results/reference/ref"
    assert sorted(p.name for p in out.iterdir() if p.name != ".snakemake_timestamp") == sorted(p.name for p in folder.iterdir())
    assert (out / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert "rule ship_reference" in run.stdout + run.stderr and "rule train_reference" not in run.stdout + run.stderr
    again = _snakemake(work, "results/reference/ref", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]

    # an edited shipped file re-runs the copy, which stops the run naming the file
    weights = shipped.shipped_dir(work) / "ref" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    bad = _snakemake(work, "results/reference/ref")
    text = bad.stdout + bad.stderr + (work / "results/logs/reference/ref.log").read_text()
    assert bad.returncode != 0
    assert "shipped/reference/ref/model.safetensors: sha256" in text and "does not match" in text, text[-3000:]
    assert not out.exists()

    # a config entry that is not the one the weights were trained from stops the run before anything runs
    (work / "config.test.yaml").write_text(yaml.safe_dump(tiny_config({**QUICK, "source": "shipped", "steps": 5})))
    plan = _snakemake(work, "-n")
    assert plan.returncode != 0
    assert "reference.steps: the shipped model was trained with 3, this config has 5" in plan.stdout + plan.stderr


@pytest.mark.slow
def test_a_training_job_that_misses_its_probe_fails_and_nothing_downstream_runs(tmp_path):
    work = copy_workflow(tmp_path)
    # two steps from scratch cannot make every probe answer right
    spec = {**QUICK, "steps": 2, "probe_every": 1, "stop_accuracy": 1.0, "stop_patience": 1, "source": "train"}
    (work / "config.test.yaml").write_text(yaml.safe_dump(tiny_config(spec)))
    run = _snakemake(work, "results/traces/ref/panels/shard-0.parquet")
    log = (work / "results/logs/reference/ref.log").read_text()
    assert run.returncode != 0
    assert "models.ref.reference: the probe did not reach its target within 2 steps (stop_accuracy 1 on 1 probes in a row)" in log
    assert "final probe 0.000" in log and "below target: clean/arithmetic 0.000" in log, log[-3000:]
    assert not (work / "results/reference/ref").exists()
    assert not (work / "results/traces").exists()


def _ship_script():
    return load_script("scripts/ship_reference.py")


@pytest.mark.slow
def test_ship_script_ships_what_the_train_rule_made_from_this_config(tmp_path):
    (tmp_path / "w").mkdir()
    work = copy_workflow(tmp_path / "w")
    (work / "config.test.yaml").write_text(yaml.safe_dump(tiny_config({**QUICK, "source": "train"})))
    run = _snakemake(work, "results/reference/ref")
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    script = _ship_script()
    out = tmp_path / "shipped"
    assert script.main(["--from", str(work / "results"), "--config", str(work / "config.test.yaml"), "--out", str(out),
                        "--command", "snakemake --cores 2 results/reference/ref"]) == 0
    manifest = shipped.load_manifest(out)
    cfg = pcfg.validate(tiny_config({**QUICK, "source": "shipped"}), check_paths=False)
    entry = manifest["models"]["ref"]
    shipped.check_config(entry, R.training_config(cfg, "ref"), "ref", out)
    shipped.verify(out, "ref", entry)
    assert ".snakemake_timestamp" not in entry["files"] and "model.safetensors" in entry["files"]
    assert manifest["training_command"] == "snakemake --cores 2 results/reference/ref"
    assert manifest["command"].startswith("python scripts/ship_reference.py --from ")
    assert manifest["machine"]["torch"] and "uncommitted_changes" in manifest

    # weights trained from another entry are not shipped under this one
    (work / "config.other.yaml").write_text(yaml.safe_dump(tiny_config({**QUICK, "steps": 4})))
    with pytest.raises(SystemExit, match=r"training\.json: trained from another config"):
        script.main(["--from", str(work / "results"), "--config", str(work / "config.other.yaml"), "--out", str(out)])
