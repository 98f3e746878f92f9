# Steps (docs/crm.md): every trace's chain of thought segmented into steps, one job per (model, dataset).
rule steps:
    input:
        code=code("steps"),
        sidecars=lambda w: trace_shards(w.m, w.d),
    output:
        steps=R("steps/{m}/{d}.parquet"),
    params:
        config=lambda wc: {"steps": config["steps"], "segmenter": model_cfg(wc.m)["segmenter"]},
        results=results_dir,
    resources:
        **job_resources("default"),
    log:
        LOG("steps/{m}/{d}"),
    benchmark:
        BENCH("steps/{m}/{d}")
    conda:
        "../../envs/crm.yaml"
    script:
        "../scripts/steps.py"
