# Helpers shared by every rules file: validated config, paths, shard planning, each
# rule's code input (the import closure of its stage module, peekaboo.stages) and
# config param (what the stage reads; both re-run it when they change).
import atexit
import math
import re
import sys
from functools import lru_cache

_SRC = str(Path(workflow.main_snakefile).resolve().parent / "src")
if sys.path[:1] != [_SRC]:  # first: an editable install of another checkout must not win
    while _SRC in sys.path:
        sys.path.remove(_SRC)
    sys.path.insert(0, _SRC)
# rule scripts import workflow/scripts/_bootstrap.py, which does the same in their own process

import peekaboo.config as pcfg
from peekaboo import stages
from peekaboo.datasets.boxes import MODEL_KINDS as BOX_MODEL_KINDS, box_kind, file_path as box_file_path
from peekaboo.models.identity import identify
from peekaboo.models.reference import spec as reference_spec
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

try:
    _validated = pcfg.validate(config, base_dir=Path.cwd())
except pcfg.ConfigError as exc:
    raise WorkflowError(str(exc)) from None
config.clear()
config.update(_validated)
for _notice in pcfg.notices(config, Path.cwd()):
    logger.warning(f"config: {_notice}")

RESULTS = config["results"].rstrip("/")
DATASETS = list(config["datasets"])
MODELS = list(config["models"])


# One writer per results folder (peekaboo.runlock): the run takes the folder's lock when it starts executing
# (onstart: never for a dry run; spawned jobs run with --no-hooks) and gives it back at its end; every stage job
# checks it (peekaboo.stage). While parsing, a run started beside a live one is told so before Snakemake's own
# checks speak (in one working directory they report the other run's files as incomplete).
from snakemake_interface_executor_plugins.settings import ExecMode
from peekaboo import runlock

if workflow.exec_mode == ExecMode.DEFAULT:
    _other_run = runlock.running_elsewhere(RESULTS)
    if _other_run is not None:
        logger.warning(f"results folder {RESULTS} is being written by {_other_run.describe()}: a dry run shows "
                       "what that run has not finished yet; this run, if not a dry run, will be refused")
_RUN_LOCK = []


onstart:
    try:
        _RUN_LOCK.append(runlock.acquire(RESULTS, Path(workflow.main_snakefile).resolve().parent, Path.cwd(),
                                         warn=logger.warning))
    except runlock.ResultsLocked as exc:
        raise WorkflowError(str(exc)) from None
    # also when the run ends by an exception, which calls neither onsuccess nor onerror
    atexit.register(_release_run_lock)


def _release_run_lock():
    for holder in _RUN_LOCK:
        runlock.release(RESULTS, holder)


onsuccess:
    _release_run_lock()


onerror:
    _release_run_lock()


wildcard_constraints:
    d="|".join(map(re.escape, DATASETS)) if DATASETS else "[^/]+",
    m="|".join(map(re.escape, MODELS)) if MODELS else "[^/]+",
    i=r"\d+",


def R(path):
    """A path inside the results directory."""
    return f"{RESULTS}/{path}"


def results_dir(wildcards):
    """The results directory, every stage's params.results (paths inside tables are relative to it)."""
    return RESULTS


def LOG(path):
    return f"{RESULTS}/logs/{path}.log"


def BENCH(path):
    """Where a heavy rule's benchmark (wall time, memory; Snakemake's `benchmark:`) goes."""
    return f"{RESULTS}/benchmarks/{path}.tsv"


def code(rule, *extra_modules):
    """A rule's code input: the package files its stage can import (peekaboo.stages.code_files)."""
    return stages.code_files(rule, *extra_modules)


def adapter_module(d):
    """The adapter of dataset d: imported by name at run time, so a rule that runs it names it."""
    return f"peekaboo.datasets.{dataset_cfg(d)['adapter']}"


def scorer_module(d):
    """The scorer of dataset d (peekaboo.scoring): imported by name at run time, so the rule that scores names it."""
    return f"peekaboo.scoring.{dataset_cfg(d)['adapter']}"


def dataset_cfg(d):
    return config["datasets"][d]


def model_cfg(m):
    return config["models"][m]


def model_datasets(m):
    return pcfg.model_datasets(config, m)


def model_dataset_pairs():
    return [(m, d) for m in MODELS for d in model_datasets(m)]


# the analyses that read a (model, dataset)'s collapse tables (the per-trace features among them)
COLLAPSE_ANALYSES = ("collapse", "regression", "transfer", "selective")


def pairs_for(*analyses):
    """The (model, dataset) pairs whose dataset feeds any of ``analyses`` (datasets.<d>.analyses)."""
    return [(m, d) for m, d in model_dataset_pairs() if set(analyses) & set(dataset_cfg(d)["analyses"])]


def analyses_config():
    """Which analyses each dataset feeds: part of the config of the stages that pool datasets."""
    return {d: list(dataset_cfg(d)["analyses"]) for d in DATASETS}


def masks_config(d):
    """What the masks stage reads: a dataset without masks reads nothing else, so editing masks leaves it be."""
    if not dataset_cfg(d)["masks"]:
        return {"enabled": False}
    return {"enabled": True, "masks": config["masks"], "seed": config["seed"]}


def sections(*names):
    """Top-level config sections a stage reads (its params.config): editing them re-runs it."""
    return {name: config[name] for name in names}


@lru_cache(maxsize=None)
def n_shards(d):
    """Shards planned before the run from the adapter's cheap upper bound on items."""
    from peekaboo.datasets import get_adapter

    spec = dataset_cfg(d)
    count = get_adapter(d, spec, seed=config["seed"], base_dir=Path.cwd()).count()
    if spec.get("limit"):
        count = min(count, spec["limit"])
    if spec.get("sample"):
        count = min(count, spec["sample"]["n"])
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


# model entry keys that cannot change a stage's outputs, left out of its config so that editing them re-runs
# nothing there: which datasets a model runs on and its cluster resources for every model stage; the
# segmenter for the stages before steps; the replay's memory bound and the imported file (an input) for generation
# generate_separately decides which job generates, not what comes out (the traces are the same either way)
_NOT_FOR_TRACES = ("datasets", "resources", "segmenter", "generate_separately")
_NOT_FOR_GENERATION = _NOT_FOR_TRACES + ("replay_chunk_mb", "generations")


# the engine (models.<m>.engine, .vllm) is read by the generate stage alone: the traces stage replays the
# generations file, an input, whatever made it; a transformers model's generation does not read the vllm options
_ENGINE_KEYS = ("engine", "vllm")


def model_entry(m, leave_out):
    if model_cfg(m)["engine"] != "vllm" or not model_cfg(m)["generate_separately"]:
        leave_out = tuple(leave_out) + ("vllm",)
    return {k: v for k, v in model_cfg(m).items() if k not in leave_out}


def dataset_entry(d):
    """A dataset entry as the stages that read the dataset see it: which analyses it feeds is not theirs."""
    return {k: v for k, v in dataset_cfg(d).items() if k != "analyses"}


def generations_input(m, d, i):
    """The shard's generations file: the model's imported one for the dataset, the generate stage's, or none.

    None (an empty list) for a model that does not generate separately: its traces job generates and replays.
    """
    imported = pcfg.imported_generations(config, m, d)
    if imported:
        return imported
    if not model_cfg(m)["generate_separately"]:
        return []
    return R(f"traces/{m}/{d}/shard-{i}.generations.jsonl")


def reference_init(m):
    """The trained model a reference model is fine-tuned from (reference.init_from), as an input."""
    init = reference_spec.init_model(config, m)
    return [R(f"reference/{init}")] if init else []


@lru_cache(maxsize=None)
def model_identity(m):
    """A configured source's identity (its weights' hash, or the hub commit): a param, so new weights re-run.

    None for a reference model: its folder is an input of the jobs that use it.
    """
    spec = model_cfg(m)
    if spec.get("reference"):
        return None
    return identify(pcfg.resolve_path(spec["source"], Path.cwd()), spec["revision"], where=f"models.{m}.source").as_dict()


# --- job resources (cluster and workstation scheduling; see "Running on a cluster" in README.md) ---
# Maps a model's `resources` keys to Snakemake/SLURM resource names.
_MODEL_RESOURCE_NAMES = {"gpu_model": "gpu_model", "gres": "gres", "cpus": "cpus_per_task"}


def _model_job_resources(entry_resources, every_entry, res):
    """Resources of a job that loads a model: its entry's `resources` (``entry_resources(wildcards)``) over the
    trace defaults; memory and runtime scaled by the attempt. gpu_model, gres and cpus only when some entry
    (``every_entry``) sets them: an empty value would still reach sbatch's checks."""

    def pick(key, default, scaled=False):
        def value(wildcards, attempt):
            v = entry_resources(wildcards).get(key, default)
            return v * attempt if scaled else v

        return value

    out = {
        "mem_mb": pick("mem_mb", res["trace_mem_mb"], scaled=True),
        "runtime": pick("runtime", res["trace_runtime"], scaled=True),
        "gpu": pick("gpu", res["trace_gpus"]),
    }
    for key, name in _MODEL_RESOURCE_NAMES.items():
        if any(key in entry for entry in every_entry):
            out[name] = pick(key, "" if key != "cpus" else 1)
    return out


def job_resources(stage):
    """A rule's resources from the config's `resources` section: `resources: **job_resources("trace")`.

    stage: "trace" (per model: a model's own `resources` win; asks for GPUs),
    "boxes" (per dataset: its boxes model's `resources` over the trace
    defaults; asks for GPUs), "train" (reference-model training) or "default". Memory and runtime are
    multiplied by the attempt, so a job retried after running out of either
    (--retries, set in the SLURM profile) gets more. The SLURM profile's
    set-resources still override these per rule.
    """
    res = config["resources"]
    if stage == "trace":
        return _model_job_resources(lambda wc: model_cfg(wc.m)["resources"],
                                    [model_cfg(m)["resources"] for m in MODELS], res)
    if stage == "boxes":
        return _model_job_resources(lambda wc: box_model_resources(wc.d),
                                    [box_model_resources(d) for d in DATASETS], res)
    if stage not in ("train", "default"):
        raise ValueError(f"job_resources: unknown stage {stage!r} (trace, boxes, train or default)")
    mem_mb, runtime = res[f"{stage}_mem_mb"], res[f"{stage}_runtime"]
    return {
        "mem_mb": lambda wildcards, attempt: mem_mb * attempt,
        "runtime": lambda wildcards, attempt: runtime * attempt,
    }


# --- boxes jobs (workflow/rules/boxes.smk) ---
def boxes_kind(d):
    """How dataset d's evidence boxes are made: None, "file", "vlm" or "detector"."""
    return box_kind(dataset_cfg(d)["boxes"])


def model_boxes_datasets():
    """The datasets whose boxes a model makes (the boxes rule runs for these)."""
    return [d for d in DATASETS if boxes_kind(d) in BOX_MODEL_KINDS]


def box_model_resources(d):
    return dataset_cfg(d)["boxes"]["model"]["resources"] if d in model_boxes_datasets() else {}


@lru_cache(maxsize=None)
def box_model_identity(d):
    """The identity of dataset d's boxes model (weights hash or hub commit): a param, so new weights re-run."""
    spec = dataset_cfg(d)["boxes"]["model"]
    where = f"datasets.{d}.boxes.model.source"
    return identify(pcfg.resolve_path(spec["source"], Path.cwd()), spec["revision"], where=where).as_dict()


def collapse_outputs(kind="", analyses=COLLAPSE_ANALYSES):
    """The collapse tables of one kind ("", "traces", "sinks", "maps", "layers") of the pairs feeding ``analyses``."""
    suffix = f".{kind}.parquet" if kind else ".parquet"
    return [R(f"collapse/{m}/{d}{suffix}") for m, d in pairs_for(*analyses)]


# Filled by the stage rules files: functions returning that stage's final outputs.
FINAL_OUTPUTS = []


def all_outputs():
    out = []
    for fn in FINAL_OUTPUTS:
        out.extend(fn())
    return out
