# Traces in two stages (docs/traces.md), one job each per (model, dataset, shard):
#   generate: the shard's token ids and texts -> traces/{m}/{d}/shard-{i}.generations.jsonl (the import
#             format); decode-bound, the expensive step: skipped for a model whose outputs are imported
#             (models.<m>.generations);
#   traces:   the generations replayed once through the model (attention, entropy, log-probabilities) and
#             scored -> shard-{i}.zarr + shard-{i}.parquet; prefill speed, so a scorer or capture change re-runs
#             only this.
# A model with generate_separately: false (the embedded default's reference models: on CPU a job's start costs
# more than their generation) has no generate job: its traces job generates each batch, then replays it.
# A model with engine: vllm generates in its generate job with vLLM, in vLLM's own environment
# (models.<m>.vllm.python; docs/traces.md "Engines"); its prompt ids are checked against the processor's.
# requests (a target, not part of the default run): an OpenAI batch file per (model, dataset) for any engine
# (vllm run-batch, SGLang, a hosted batch API), results/requests/{m}/{d}.jsonl; its output imports as a
# generations file (models.<m>.generations).
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
            "model": model_entry(wc.m, _NOT_FOR_TRACES + _ENGINE_KEYS),
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


rule batch_requests:
    input:
        code=code("batch_requests"),
        items_table=R("items/{d}.parquet"),
        item_images=R("items/{d}/images"),
        masks_table=R("masks/{d}.parquet"),
        masked_images=R("masks/{d}/images"),
        model=lambda wc: model_inputs(wc.m),
    output:
        requests=R("requests/{m}/{d}.jsonl"),
    params:
        config=lambda wc: {
            "model": model_entry(wc.m, _NOT_FOR_GENERATION),
            "dataset": dataset_entry(wc.d),
            "requests": config["requests"],
            "served_model": model_path(wc.m),
        },
        results=results_dir,
    resources:
        **job_resources("default"),
    log:
        LOG("batch_requests/{m}/{d}"),
    benchmark:
        BENCH("batch_requests/{m}/{d}")
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/batch_requests.py"


rule requests:
    """Every (model, dataset)'s OpenAI batch file: `snakemake requests`."""
    input:
        lambda wc: [R(f"requests/{m}/{d}.jsonl") for m, d in model_dataset_pairs()],


localrules:
    requests,
