# Traces stage: one job per (model, dataset, shard) -> traces/{m}/{d}/shard-{i}.zarr
# (per-token entropy, log-probability, attention on image tokens and regions) and
# shard-{i}.parquet (text, parsed answer, status). A killed job leaves
# traces/{m}/{d}/shard-{i}.partial/, from which a re-run resumes (docs/traces.md).


def trace_code(wc):
    """The package modules a trace job runs, with this dataset's adapter (it scores the answers)."""
    return code(
        "generate",
        "capture",
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


def trace_resource(m, key, default_key):
    """A trace job's resource: the model's own resources entry, else the config's default."""
    own = model_cfg(m).get("resources") or {}
    return own.get(key, config["resources"][default_key])


def trace_placement(m, key):
    """A SLURM placement key a model may set (gpu_model, gres); "" (ignored by the plugin) if not."""
    return (model_cfg(m).get("resources") or {}).get(key, "")


# cpus_per_task only when some model asks for it, so that a profile's default still applies otherwise
TRACE_CPUS = (
    {"cpus_per_task": lambda wc: (model_cfg(wc.m).get("resources") or {}).get("cpus", 1)}
    if any("cpus" in (model_cfg(m).get("resources") or {}) for m in MODELS)
    else {}
)


rule traces:
    input:
        code=trace_code,
        items_table=R("items/{d}.parquet"),
        item_images=R("items/{d}/images"),
        masks_table=R("masks/{d}.parquet"),
        masked_images=R("masks/{d}/images"),
        model=lambda wc: model_inputs(wc.m),
    output:
        store=directory(R("traces/{m}/{d}/shard-{i}.zarr")),
        sidecar=R("traces/{m}/{d}/shard-{i}.parquet"),
    params:
        model=lambda wc: model_cfg(wc.m),
        model_path=lambda wc: model_path(wc.m),
        dataset=lambda wc: dataset_cfg(wc.d),
        traces=config["traces"],
        seed=config["seed"],
    resources:
        gpu=lambda wc: trace_resource(wc.m, "gpu", "trace_gpus"),
        mem_mb=lambda wc: trace_resource(wc.m, "mem_mb", "trace_mem_mb"),
        runtime=lambda wc: trace_resource(wc.m, "runtime", "trace_runtime"),
        gpu_model=lambda wc: trace_placement(wc.m, "gpu_model"),
        gres=lambda wc: trace_placement(wc.m, "gres"),
        **TRACE_CPUS,
    log:
        LOG("traces/{m}/{d}/shard-{i}"),
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/traces.py"


FINAL_OUTPUTS.append(lambda: [p for m, d in model_dataset_pairs() for p in trace_shards(m, d)])
