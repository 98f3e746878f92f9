"""The whole DAG through the real Snakefile on a tiny config, in a copy of the repository.

One run (``e2e_run``, tests/fixtures/workflow.py) covers every stage. Here:
every stage's files exist in their documented formats with provenance, a
second run does nothing, and editing one package module, a config section or
a model's weights re-runs exactly the stages that read it.
"""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from peekaboo import tables
from peekaboo.models.tiny import build_tiny

from fixtures.workflow import TINY_MODEL, planned_rules, run_snakemake


pytestmark = pytest.mark.slow


def test_every_stage_writes_its_documented_files(e2e_run):
    _, res, _ = e2e_run
    items = tables.read_table(res / "items/panels.parquet")
    assert len(items) == 5 and items["item_id"].is_unique
    assert {"item_id", "image", "regions", "task_type", "answer", "meta"} <= set(items.columns)
    masks = tables.read_table(res / "masks/panels.parquet")
    assert (masks["variant"] == "base").sum() == 5
    assert {"drop:all", "keep:evidence"} <= set(masks["variant"])
    assert masks["variant"].str.startswith("ctrl:").any()

    for model, datasets in (("ref", ("panels", "panels-b")), ("tiny-qwen25", ("panels",))):
        for d in datasets:
            n_masks = len(tables.read_table(res / f"masks/{d}.parquet"))
            shards = sorted((res / f"traces/{model}/{d}").glob("shard-*.parquet"))
            assert len(shards) == (2 if d == "panels" else 1)
            sidecar = pd.concat([tables.read_table(p) for p in shards])
            assert len(sidecar) == n_masks and (sidecar["status"] == "ok").all()
            # generations files from generate jobs: tiny-qwen25's; ref generates inside its traces jobs
            generations = sorted((res / f"traces/{model}/{d}").glob("shard-*.generations.jsonl"))
            assert len(generations) == (len(shards) if model == "tiny-qwen25" else 0), generations
            ds = xr.open_zarr(shards[0].with_suffix(".zarr"))
            assert {"entropy", "image_mass", "region_mass", "image_attn", "patch_box"} <= set(ds.data_vars)
            assert ds.attrs["config_hash"] and ds.attrs["package_version"]
            steps = tables.read_table(res / f"steps/{model}/{d}.parquet")
            assert set(steps["trace_id"]) <= set(sidecar["trace_id"]) and len(steps) >= len(sidecar) // 2
            for name in ("alignment", "attribution", "modes"):
                # CRM only where the dataset has masks (panels-b has none: it does not feed crm)
                assert (res / f"crm/{model}/{d}/{name}.parquet").is_file() == (d == "panels")
            per_trace = tables.read_table(res / f"collapse/{model}/{d}.traces.parquet")
            assert len(per_trace) > 0

    coefficients = pd.read_csv(res / "regression/coefficients.csv")
    assert len(coefficients) > 0  # fitted or a row saying why not
    assert len(pd.read_csv(res / "selective/summary.csv")) > 0
    for name in ("summary", "trajectory", "accuracy"):
        assert len(pd.read_csv(res / f"collapse/{name}.csv")) > 0, name
    claims = pd.read_csv(res / "claims.csv")
    assert set(claims["verdict"]) <= {"consistent", "inconsistent", "not estimable"}
    assert claims["reason"].notna().all() and claims["id"].nunique() == 8
    manifest = json.loads((res / "figures/manifest.json").read_text())
    figures = manifest["figures"] if isinstance(manifest, dict) else manifest
    assert len(figures) >= 6
    for path in res.glob("figures/*.png"):
        assert path.stat().st_size > 1000


def test_tables_record_provenance(e2e_run):
    _, res, _ = e2e_run
    for path in ("items/panels.parquet", "masks/panels.parquet", "steps/ref/panels.parquet",
                 "crm/ref/panels/modes.parquet", "collapse/ref/panels.parquet"):
        prov = tables.read_provenance(res / path)
        assert prov.get("config_hash") and prov.get("code_hash") and prov.get("package_version"), path
    trained = json.loads((res / "reference/ref/training.json").read_text())
    assert trained["steps"] == 4 or trained.get("steps_run") == 4 or "loss" in json.dumps(trained)


def test_second_run_does_nothing(e2e_run):
    work, _, _ = e2e_run
    out = run_snakemake(work, "-n")
    assert "Nothing to be done" in out, out[-3000:]


def test_changing_a_config_section_reruns_only_what_reads_it(e2e_run):
    work, _, _ = e2e_run
    config = yaml.safe_load((work / "config.test.yaml").read_text())
    config["figures"] = {"dpi": 72}
    (work / "config.changed.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "config.changed.yaml"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    planned = planned_rules(proc.stdout + proc.stderr)
    assert "figures" in planned and not planned & {"items", "masks", "traces", "train_reference", "crm"}


@contextlib.contextmanager
def edited(path: Path):
    """An edit to a file (Snakemake compares checksums of changed inputs, so it changes the content), undone after."""
    before, stat = path.read_bytes(), path.stat()
    path.write_bytes(before + b"\n# an edit\n")
    try:
        yield
    finally:
        path.write_bytes(before)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_editing_a_module_reruns_exactly_the_stages_using_it(e2e_run):
    work, _, _ = e2e_run
    src = work / "src" / "peekaboo"
    with edited(src / "selective.py"):
        out = run_snakemake(work, "-n")
    assert planned_rules(out) == {"selective", "claims", "figures", "all"}, out[-3000:]

    with edited(src / "masks.py"):
        planned = planned_rules(run_snakemake(work, "-n"))
    assert {"masks", "traces", "steps", "crm", "collapse", "regression", "selective", "figures"} <= planned
    assert "items" not in planned and "train_reference" not in planned

    # a package __init__ runs whenever a module under it is imported: models/ holds loading and the reference models
    with edited(src / "models" / "__init__.py"):
        assert {"train_reference", "generate", "traces"} <= planned_rules(run_snakemake(work, "-n"))

    # a scorer fix re-scores the traces, never re-generating them: neither the items (the reader's stage) nor the
    # masks nor the decode-bound generation run again, nor the training (issue 17)
    for scorer in ("panels.py", "__init__.py", "extraction.py"):
        with edited(src / "scoring" / scorer):
            planned = planned_rules(run_snakemake(work, "-n"))
        assert {"traces", "steps", "crm", "collapse", "selective", "figures"} <= planned, (scorer, planned)
        assert not planned & {"items", "masks", "generate", "train_reference"}, (scorer, planned)

    # the replay, the capture targets and the store re-run the traces (prefill speed), never the decode-bound
    # generation (issue 22); the generation's own module re-runs both
    for module in ("replay.py", "capture.py", "tracestore.py", "trace_replay.py"):
        with edited(src / module):
            planned = planned_rules(run_snakemake(work, "-n"))
        assert {"traces", "steps", "crm", "collapse"} <= planned, (module, planned)
        assert not planned & {"items", "masks", "generate", "train_reference"}, (module, planned)
    with edited(src / "generate.py"):
        assert {"generate", "traces"} <= planned_rules(run_snakemake(work, "-n"))

    assert "Nothing to be done" in run_snakemake(work, "-n")


def test_imported_generations_of_the_models_own_token_ids_give_the_same_traces(e2e_run, tmp_path):
    """A model whose outputs come from elsewhere: its generations files (here the ones this run wrote, as an engine
    would) stand in for the generate stage, and replaying them gives the traces generating here gave."""
    import shutil

    work, res, _ = e2e_run
    imported = tmp_path / "engine-output"
    imported.mkdir()
    shards = sorted((res / "traces/tiny-qwen25/panels").glob("shard-*.generations.jsonl"))
    # one file for the dataset, as an engine writes it: the shards' lines together
    (imported / "panels.jsonl").write_text("".join(p.read_text() for p in shards))
    config = yaml.safe_load((work / "config.test.yaml").read_text())
    config["models"]["imported"] = {**config["models"]["tiny-qwen25"], "generations": str(imported / "{dataset}.jsonl")}
    (work / "config.imported.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        out = run_snakemake(work, "--configfile", "config.imported.yaml", "--", *[
            f"results/traces/imported/panels/shard-{i}.parquet" for i in range(len(shards))])
        assert "rule generate" not in out  # the file stands in for generation
        for i in range(len(shards)):
            own = xr.open_zarr(res / f"traces/tiny-qwen25/panels/shard-{i}.zarr")
            theirs = xr.open_zarr(res / f"traces/imported/panels/shard-{i}.zarr")
            for name in ("token_id", "entropy", "logprob", "image_attn", "image_mass", "region_mass"):
                np.testing.assert_array_equal(own[name].values, theirs[name].values, err_msg=name)
            a = tables.read_table(res / f"traces/tiny-qwen25/panels/shard-{i}.parquet")
            b = tables.read_table(res / f"traces/imported/panels/shard-{i}.parquet")
            for column in ("text", "answer_text", "correct", "status", "n_tokens"):
                assert a[column].equals(b[column]), column
    finally:
        shutil.rmtree(res / "traces" / "imported", ignore_errors=True)


def test_replaced_weights_at_a_local_path_rerun_the_traces(e2e_run):
    # the model on disk changes, the config not at all; the same weights put back re-run nothing again
    work, _, _ = e2e_run
    try:
        build_tiny("qwen2_5_vl", work / TINY_MODEL, seed=1)
        out = run_snakemake(work, "-n")
    finally:
        build_tiny("qwen2_5_vl", work / TINY_MODEL, seed=0)
    planned = planned_rules(out)
    assert {"traces", "steps", "crm", "collapse"} <= planned and "train_reference" not in planned, out[-3000:]
    jobs = [line for line in out.splitlines() if line.strip().startswith("wildcards:") and "m=" in line]
    assert jobs and all("m=tiny-qwen25" in line for line in jobs if "i=" in line), jobs
    assert "Nothing to be done" in run_snakemake(work, "-n")
