# Boxes stage: evidence boxes for a dataset whose `boxes` entry has kind vlm (a
# grounding VLM) or detector (an open-vocabulary detector) -> boxes/{d}.jsonl
# (the box-file format the items stage reads), what was asked and answered,
# the rejects with their reasons, and the agreement with the dataset's own boxes
# where it has some (docs/datasets.md, "Evidence boxes made by a model").
# Only those datasets run it; a hand-made file (kind file, or a plain path) is
# read by the items stage directly.
rule boxes:
    input:
        # the dataset's adapter is imported by name at run time
        code=lambda wc: code("boxes", adapter_module(wc.d)),
        # the dataset's file: editing it re-runs (the model's identity is in the config param)
        data=lambda wc: [p for p in [dataset_cfg(wc.d)["options"].get("path")] if p and Path(p).exists()],
    output:
        boxes=R("boxes/{d}.jsonl"),
        answers=R("boxes/{d}.answers.parquet"),
        rejects=R("boxes/{d}.rejects.parquet"),
        agreement=R("boxes/{d}.agreement.parquet"),
        summary=R("boxes/{d}.summary.csv"),
    params:
        # the model's identity (its weights' hash or hub commit): replaced weights re-run the job
        config=lambda wc: {"dataset": dataset_entry(wc.d), "seed": config["seed"],
                           "model_identity": box_model_identity(wc.d)},
        results=results_dir,
    resources:
        **job_resources("boxes"),
    log:
        LOG("boxes/{d}"),
    benchmark:
        BENCH("boxes/{d}")
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/boxes.py"


FINAL_OUTPUTS.append(
    lambda: [
        R(f"boxes/{d}.{suffix}")
        for d in model_boxes_datasets()
        for suffix in ("jsonl", "answers.parquet", "rejects.parquet", "agreement.parquet", "summary.csv")
    ]
)
