# Traces stage: one job per (model, dataset, shard) -> traces/{m}/{d}/shard-{i}.zarr
# (per-token entropy, log-probability, attention on image tokens and regions) and
# shard-{i}.parquet (text, parsed answer, status). A killed job leaves
# traces/{m}/{d}/shard-{i}.partial/, from which a re-run resumes (docs/traces.md).


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
        **job_resources("trace"),
    log:
        LOG("traces/{m}/{d}/shard-{i}"),
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/traces.py"


FINAL_OUTPUTS.append(lambda: [p for m, d in model_dataset_pairs() for p in trace_shards(m, d)])
