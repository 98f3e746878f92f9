# Masks stage: base, drop:k, drop:all, keep:evidence and ctrl:k images per item,
# in every configured fill -> masks/{d}.parquet, skipped variants, masked images.


rule masks:
    input:
        code=code("masks"),
        items_table=R("items/{d}.parquet"),
        item_images=R("items/{d}/images"),
    output:
        table=R("masks/{d}.parquet"),
        skipped=R("masks/{d}.skipped.parquet"),
        images=directory(R("masks/{d}/images")),
    params:
        config=lambda wc: masks_config(wc.d),
        results=results_dir,
    resources:
        **job_resources("default"),
    log:
        LOG("masks/{d}"),
    benchmark:
        BENCH("masks/{d}")
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/masks.py"


FINAL_OUTPUTS.append(
    lambda: expand(R("masks/{d}.parquet"), d=DATASETS)
    + expand(R("masks/{d}.skipped.parquet"), d=DATASETS)
)
