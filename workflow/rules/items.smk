# Items stage: the dataset's adapter -> items/{d}.parquet, rejects, normalised images.
# The dataset entry and the seed are its config, so editing them re-runs the stage;
# a file-based dataset's file (and its boxes file) are inputs for the same reason.
# box_file_path, boxes_kind and BOX_MODEL_KINDS come from common.smk.
rule items:
    input:
        # this dataset's adapter only: editing another adapter must not re-run it
        code=lambda wc: code("items", adapter_module(wc.d)),
        data=lambda wc: [
            p
            for p in (
                dataset_cfg(wc.d)["options"].get("path"),
                box_file_path(dataset_cfg(wc.d)["boxes"]),
            )
            if p and Path(p).is_file()
        ],
        # boxes made by a model (kind vlm or detector): the boxes stage's JSONL
        boxes=lambda wc: [R(f"boxes/{wc.d}.jsonl")] if boxes_kind(wc.d) in BOX_MODEL_KINDS else [],
    output:
        table=R("items/{d}.parquet"),
        rejects=R("items/{d}.rejects.parquet"),
        images=directory(R("items/{d}/images")),
    params:
        config=lambda wc: {"dataset": dataset_entry(wc.d), "seed": config["seed"]},
        results=results_dir,
    resources:
        **job_resources("default"),
    log:
        LOG("items/{d}"),
    benchmark:
        BENCH("items/{d}")
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/items.py"


FINAL_OUTPUTS.append(
    lambda: expand(R("items/{d}.parquet"), d=DATASETS)
    + expand(R("items/{d}.rejects.parquet"), d=DATASETS)
)
