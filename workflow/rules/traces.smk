# Traces in two stages (docs/traces.md), one job each per (model, dataset, shard):
#   generate: the shard's token ids and texts -> traces/{m}/{d}/shard-{i}.generations.jsonl (the import
#             format); decode-bound, the expensive step: skipped for a model whose outputs are imported
#             (models.<m>.generations);
#   traces:   the generations replayed once through the model (attention, entropy, log-probabilities) and
#             scored -> shard-{i}.zarr + shard-{i}.parquet; prefill speed, so a scorer or capture change re-runs
#             only this.
# A model with generate_separately: false (the embedded default's reference models: on CPU a job's start costs
# more than their generation) has no generate job: its traces job generates each batch, then replays it.
# A killed job leaves a .partial/ folder beside its output, from which a re-run resumes. A configured source's
# identity (its weights' hash or hub commit) is part of the config, so replaced weights re-run both; a
# reference model's folder is an input.


def trace_job_inputs():
    return dict(
        items_table=R("items/{d}.parquet"),
        item_images=R("items/{d}/images"),
        masks_table=R("masks/{d}.parquet"),
        masked_images=R("masks/{d}/images"),
        model=lambda wc: model_inputs(wc.m),
    )


rule generate:
    input:
        code=code("generate"),
        **trace_job_inputs(),
    output:
        generations=R("traces/{m}/{d}/shard-{i}.generations.jsonl"),
    params:
        config=lambda wc: {
            "model": model_entry(wc.m, _NOT_FOR_GENERATION),
            "dataset": dataset_entry(wc.d),
            "model_identity": model_identity(wc.m),
        },
        results=results_dir,
    resources:
        **job_resources("trace"),
    log:
        LOG("generate/{m}/{d}/shard-{i}"),
    benchmark:
        BENCH("generate/{m}/{d}/shard-{i}")
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/generate.py"


rule traces:
    input:
        # the dataset's scorer scores the answers (its reader is the items rule's: a scorer edit re-runs only this)
        code=lambda wc: code("traces", scorer_module(wc.d)),
        generations=lambda wc: generations_input(wc.m, wc.d, wc.i),
        **trace_job_inputs(),
    output:
        store=directory(R("traces/{m}/{d}/shard-{i}.zarr")),
        sidecar=R("traces/{m}/{d}/shard-{i}.parquet"),
    params:
        config=lambda wc: {
            "model": model_entry(wc.m, _NOT_FOR_TRACES),
            "dataset": dataset_entry(wc.d),
            "traces": config["traces"],
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
