# Alignment and Contrastive Region Masking (docs/crm.md): one job per (model, dataset), on the steps
# of workflow/rules/steps.smk.
rule crm:
    input:
        code=code("crm"),
        steps=R("steps/{m}/{d}.parquet"),
        sidecars=lambda w: trace_shards(w.m, w.d),
        masks_table=R("masks/{d}.parquet"),
        items_table=R("items/{d}.parquet"),
    output:
        alignment=R("crm/{m}/{d}/alignment.parquet"),
        attribution=R("crm/{m}/{d}/attribution.parquet"),
        modes=R("crm/{m}/{d}/modes.parquet"),
        summary=R("crm/{m}/{d}/summary.csv"),
    params:
        config=sections("alignment", "crm"),
        results=results_dir,
    threads: 1
    resources:
        **job_resources("default"),
    log:
        LOG("crm/{m}/{d}"),
    benchmark:
        BENCH("crm/{m}/{d}")
    conda:
        "../../envs/crm.yaml"
    script:
        "../scripts/crm.py"


FINAL_OUTPUTS.append(
    lambda: [
        R(f"crm/{m}/{d}/{name}")
        for m, d in pairs_for("crm")
        for name in ("alignment.parquet", "attribution.parquet", "modes.parquet", "summary.csv")
    ]
)
