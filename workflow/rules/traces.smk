# Traces stage: one job per (model, dataset, shard) -> traces/{m}/{d}/shard-{i}.zarr
# (per-token entropy, log-probability, attention on image tokens and regions) and
# shard-{i}.parquet (text, parsed answer, status). A killed job leaves
# traces/{m}/{d}/shard-{i}.partial/, from which a re-run resumes (docs/traces.md).
# A configured source's identity (its weights' hash or hub commit) is part of the
# config, so replaced weights re-run the traces; a reference model's folder is an input.
rule traces:
    input:
        # the adapter scores the answers
        code=lambda wc: code("traces", adapter_module(wc.d)),
        items_table=R("items/{d}.parquet"),
        item_images=R("items/{d}/images"),
        masks_table=R("masks/{d}.parquet"),
        masked_images=R("masks/{d}/images"),
        model=lambda wc: model_inputs(wc.m),
    output:
        store=directory(R("traces/{m}/{d}/shard-{i}.zarr")),
        sidecar=R("traces/{m}/{d}/shard-{i}.parquet"),
    params:
        config=lambda wc: {
            "model": model_cfg(wc.m),
            "dataset": dataset_cfg(wc.d),
            "traces": config["traces"],
            "seed": config["seed"],
            "model_identity": model_identity(wc.m),
        },
        results=results_dir,
    resources:
        **job_resources("trace"),
    log:
        LOG("traces/{m}/{d}/shard-{i}"),
    benchmark:
        BENCH("traces/{m}/{d}/shard-{i}")
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/traces.py"


FINAL_OUTPUTS.append(lambda: [p for m, d in model_dataset_pairs() for p in trace_shards(m, d)])
