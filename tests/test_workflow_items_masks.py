"""End-to-end runs of the items and masks part of the workflow on a tiny JSONL dataset.

The real Snakefile includes every stage; these tests use a Snakefile that
includes only common.smk, items.smk and masks.smk (beside symlinks to the
repository's workflow/, src/ and envs/, so that relative includes, scripts and
conda files resolve as in the real layout), so they exercise exactly these
rules and nothing else.
"""

import os
import shutil
import subprocess
import sys
import pytest
import yaml

from peekaboo import tables

from fixtures.items import good_record, textured_png, tree_hashes, write_jsonl

pytestmark = pytest.mark.slow

SNAKEFILE = """\
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/items.smk"
include: "workflow/rules/masks.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
"""


@pytest.fixture
def project(tmp_path, repo_dir):
    """A workflow directory (Snakefile + links) and a work directory with data and config."""
    wf = tmp_path / "wf"
    wf.mkdir()
    for name in ("workflow", "src", "envs"):
        (wf / name).symlink_to(repo_dir / name)
    (wf / "Snakefile").write_text(SNAKEFILE)
    work = tmp_path / "work"
    textured_png(work / "data" / "img" / "a.png")
    textured_png(work / "data" / "img" / "b.png", size=(40, 40), seed=1)
    write_jsonl(
        work / "data" / "d.jsonl",
        [
            good_record("a"),
            good_record("b", image="img/b.png", regions=[{"label": "x", "box": [0, 0, 10, 10]}]),
            good_record("gone", image="img/missing.png"),
            "{not json",
            good_record("plain", regions=None),
        ],
    )
    # a model folder (validation reads every model source; these rules do not load it)
    (work / "model").mkdir()
    (work / "model" / "config.json").write_text('{"model_type": "qwen3_vl"}')
    config = {
        "results": "out",
        "datasets": {
            "mine": {"adapter": "jsonl", "options": {"path": "data/d.jsonl"}},
            "nomask": {"adapter": "jsonl", "options": {"path": "data/d.jsonl"}, "masks": False, "limit": 2},
        },
        "models": {"m": {"source": "model"}},
        "masks": {"fills": ["gray", "noise"]},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return wf, work


def snakemake(wf, work, *args, config="config.yaml"):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(wf / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / config), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_items_and_masks_run_and_rerun_does_nothing(project):
    wf, work = project
    run = snakemake(wf, work, "--cores", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    out = work / "out"

    items = tables.read_table(out / "items/mine.parquet")
    assert list(items.item_id) == ["a", "b", "plain"]
    rejects = tables.read_table(out / "items/mine.rejects.parquet")
    assert list(rejects.source_line) == [3, 4]
    assert rejects.reason[0].startswith("missing image") and rejects.reason[1].startswith("not JSON")
    assert all((out / p).is_file() for p in items.image)
    log = (out / "logs/items/mine.log").read_text()
    assert "5 records, 3 items kept, 2 rejected (missing image: 1, not JSON: 1)" in log

    m = tables.read_table(out / "masks/mine.parquet")
    per_item = m.groupby("item_id").size().to_dict()
    # a: 2 regions -> base + (drop:0, drop:1, drop:all, keep:evidence, ctrl:0, ctrl:1) x 2 fills;
    # b: 1 region -> base + (drop:0, keep:evidence, ctrl:0) x 2 fills (drop:all would repeat drop:0)
    assert per_item == {"a": 13, "b": 7, "plain": 1}
    assert all((out / p).is_file() for p in m.image)
    skipped = tables.read_table(out / "masks/mine.skipped.parquet")
    assert sorted(zip(skipped.item_id, skipped.variant)) == [("b", "drop:all"), ("b", "drop:all")]

    nomask = tables.read_table(out / "masks/nomask.parquet")
    assert list(nomask.variant) == ["base", "base"]

    dry = snakemake(wf, work, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_second_run_gives_identical_bytes(project):
    wf, work = project
    assert snakemake(wf, work, "--cores", "2").returncode == 0
    first = tree_hashes(work / "out")
    shutil.rmtree(work / "out")
    run = snakemake(wf, work, "--cores", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert tree_hashes(work / "out") == first
    assert any(k.endswith(".png") and k.startswith("masks/") for k in first)


def test_adding_a_fill_leaves_datasets_without_masks_alone(project):
    wf, work = project
    assert snakemake(wf, work, "--cores", "2").returncode == 0
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["masks"]["fills"].append("black")
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(wf, work, "-n")
    text = dry.stdout + dry.stderr
    assert "rule masks:" in text and "wildcards: d=mine" in text and "d=nomask" not in text, text[-3000:]


def test_editing_the_dataset_entry_reruns_items(project):
    wf, work = project
    assert snakemake(wf, work, "--cores", "2").returncode == 0
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["datasets"]["mine"]["limit"] = 1
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(wf, work, "-n")
    text = dry.stdout + dry.stderr
    assert "rule items:" in text and "wildcards: d=mine" in text and "d=nomask" not in text


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: c.update(sed=3), "unknown key sed"),
        (lambda c: c["datasets"]["mine"].update(limit="two"), "datasets.mine.limit: 'two' is not of type"),
        (lambda c: c["datasets"]["mine"]["options"].update(path="data/gone.jsonl"),
         "datasets.mine.options.path: no such file data/gone.jsonl"),
        (lambda c: c["models"]["m"].update(source="nobody/no-such-model"),
         "models.m.source: 'nobody/no-such-model' is neither a model folder nor a hub id"),
    ],
)
def test_bad_config_stops_before_any_job(project, change, message):
    wf, work = project
    config = yaml.safe_load((work / "config.yaml").read_text())
    change(config)
    (work / "bad.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(wf, work, "--cores", "2", config="bad.yaml")
    assert run.returncode != 0
    assert message in run.stdout + run.stderr
    assert not (work / "out").exists()


def test_lint_reports_nothing_for_items_and_masks(project):
    # snakemake 9.27's CLI ignores `--lint json`, so read the text report's headers
    wf, work = project
    run = snakemake(wf, work, "--lint")
    text = run.stdout + run.stderr
    headers = [line for line in text.splitlines() if line.startswith("Lints for")]
    ours = [h for h in headers if "items.smk" in h or "masks.smk" in h or "rule items " in h or "rule masks " in h]
    assert ours == [], text
    assert "Traceback" not in text
