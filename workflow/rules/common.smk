# Helpers shared by every rules file: validated config, paths, shard planning,
# code inputs (so that editing a package module re-runs the stages using it).
import math
import re
import os
import sys
from functools import lru_cache

_SRC = str(Path(workflow.main_snakefile).resolve().parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
# rule scripts import workflow/scripts/_bootstrap.py, which does the same in their own process

import peekaboo.config as pcfg
from peekaboo.models import reference as reference_models
from peekaboo.provenance import module_files
from snakemake.exceptions import WorkflowError

try:
    _validated = pcfg.validate(config, base_dir=Path.cwd())
except pcfg.ConfigError as exc:
    raise WorkflowError(str(exc)) from None
config.clear()
config.update(_validated)

RESULTS = config["results"].rstrip("/")
DATASETS = list(config["datasets"])
MODELS = list(config["models"])


wildcard_constraints:
    d="|".join(map(re.escape, DATASETS)) if DATASETS else "[^/]+",
    m="|".join(map(re.escape, MODELS)) if MODELS else "[^/]+",
    i=r"\d+",


def R(path):
    """A path inside the results directory."""
    return f"{RESULTS}/{path}"


def LOG(path):
    return f"{RESULTS}/logs/{path}.log"


def code(*modules):
    """The package source files a stage depends on: a rule input, so code edits re-run it."""
    return module_files("provenance", "tables", "logs", "config", "seeding", *modules)


def dataset_cfg(d):
    return config["datasets"][d]


def model_cfg(m):
    return config["models"][m]


def model_datasets(m):
    return pcfg.model_datasets(config, m)


def model_dataset_pairs():
    return [(m, d) for m in MODELS for d in model_datasets(m)]


def stage_params(*sections):
    """The config sections a stage reads; as params they make Snakemake re-run it when they change."""
    return {s: config[s] for s in sections}


@lru_cache(maxsize=None)
def n_shards(d):
    """Shards planned before the run from the adapter's cheap upper bound on items."""
    from peekaboo.datasets import get_adapter

    spec = dataset_cfg(d)
    count = get_adapter(d, spec, seed=config["seed"], base_dir=Path.cwd()).count()
    if spec.get("limit"):
        count = min(count, spec["limit"])
    return max(1, math.ceil(count / spec["shard_size"]))


def shard_ids(d):
    return list(range(n_shards(d)))


def trace_shards(m, d):
    return [R(f"traces/{m}/{d}/shard-{i}.parquet") for i in shard_ids(d)]


def trace_stores(m, d):
    return [R(f"traces/{m}/{d}/shard-{i}.zarr") for i in shard_ids(d)]


def model_path(m):
    """Where a model's weights come from: the trained reference model, or the configured source."""
    spec = model_cfg(m)
    if spec.get("reference"):
        return R(f"reference/{m}")
    return spec["source"]


def model_inputs(m):
    return [R(f"reference/{m}")] if model_cfg(m).get("reference") else []


def reference_init(m):
    """The trained model a reference model is fine-tuned from (reference.init_from), as an input."""
    init = reference_models.init_model(config, m)
    return [R(f"reference/{init}")] if init else []


# --- trace jobs ---
def trace_code(wc):
    """The package modules a trace job runs, with this dataset's adapter (it scores the answers)."""
    return code(
        "generate",
        "capture",
        "replay",
        "generations",
        "jsonlines",
        "geometry",
        "tracestore",
        "prompting",
        "devices",
        "models.loading",
        "answers",
        "datasets.base",
        "datasets._common",
        f"datasets.{dataset_cfg(wc.d)['adapter']}",
    )


# --- job resources (cluster and workstation scheduling; see "Running on a cluster" in README.md) ---
# Maps a model's `resources` keys to Snakemake/SLURM resource names.
_MODEL_RESOURCE_NAMES = {"gpu_model": "gpu_model", "gres": "gres", "cpus": "cpus_per_task"}


def job_resources(stage):
    """A rule's resources from the config's `resources` section: `resources: **job_resources("trace")`.

    stage: "trace" (per model: a model's own `resources` win; asks for GPUs),
    "train" (reference-model training) or "default". Memory and runtime are
    multiplied by the attempt, so a job retried after running out of either
    (--retries, set in the SLURM profile) gets more. The SLURM profile's
    set-resources still override these per rule.
    """
    res = config["resources"]
    if stage == "trace":

        def from_model(key, default, scaled=False):
            def value(wildcards, attempt):
                v = model_cfg(wildcards.m)["resources"].get(key, default)
                return v * attempt if scaled else v

            return value

        out = {
            "mem_mb": from_model("mem_mb", res["trace_mem_mb"], scaled=True),
            "runtime": from_model("runtime", res["trace_runtime"], scaled=True),
            "gpu": from_model("gpu", res["trace_gpus"]),
        }
        # only when some model sets them: an empty gpu_model/gres would still reach sbatch checks
        for key, name in _MODEL_RESOURCE_NAMES.items():
            if any(key in model_cfg(m)["resources"] for m in MODELS):
                out[name] = from_model(key, "" if key != "cpus" else 1)
        return out
    if stage not in ("train", "default"):
        raise ValueError(f"job_resources: unknown stage {stage!r} (trace, train or default)")
    mem_mb, runtime = res[f"{stage}_mem_mb"], res[f"{stage}_runtime"]
    return {
        "mem_mb": lambda wildcards, attempt: mem_mb * attempt,
        "runtime": lambda wildcards, attempt: runtime * attempt,
    }


def collapse_outputs(kind=""):
    """Every (model, dataset)'s collapse table of one kind ("", "traces", "sinks", "maps")."""
    suffix = f".{kind}.parquet" if kind else ".parquet"
    return [R(f"collapse/{m}/{d}{suffix}") for m, d in model_dataset_pairs()]


# Filled by the stage rules files: functions returning that stage's final outputs.
FINAL_OUTPUTS = []


def all_outputs():
    out = []
    for fn in FINAL_OUTPUTS:
        out.extend(fn())
    return out
