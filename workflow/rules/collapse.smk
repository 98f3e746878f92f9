# Evidence collapse (docs/analysis.md): per (model, dataset), per-step and per-trace
# evidence measures, per-trace features, attention sinks and example attention maps.
rule collapse:
    input:
        code=code("collapse"),
        stores=lambda w: trace_stores(w.m, w.d),
        sidecars=lambda w: trace_shards(w.m, w.d),
        steps=R("steps/{m}/{d}.parquet"),
        items_table=R("items/{d}.parquet"),
    output:
        steps=R("collapse/{m}/{d}.parquet"),
        traces=R("collapse/{m}/{d}.traces.parquet"),
        sinks=R("collapse/{m}/{d}.sinks.parquet"),
        maps=R("collapse/{m}/{d}.maps.parquet"),
        layers=R("collapse/{m}/{d}.layers.parquet"),
    params:
        config=sections("collapse", "features", "seed"),
        results=results_dir,
    resources:
        **job_resources("default"),
    log:
        LOG("collapse/{m}/{d}"),
    benchmark:
        BENCH("collapse/{m}/{d}")
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/collapse.py"


FINAL_OUTPUTS.append(
    lambda: [p for kind in ("", "traces", "sinks", "maps", "layers") for p in collapse_outputs(kind)]
)
