# Boxes stage: evidence boxes for a dataset whose `boxes` entry has kind vlm (a
# grounding VLM) or detector (an open-vocabulary detector) -> boxes/{d}.jsonl
# (the box-file format the items stage reads), what was asked and answered,
# the rejects with their reasons, and the agreement with the dataset's own boxes
# where it has some (docs/datasets.md, "Evidence boxes made by a model").
# Only those datasets run it; a hand-made file (kind file, or a plain path) is
# read by the items stage directly.
from peekaboo.closure import closure_files


def boxes_code(wc):
    """The boxes stage's import closure, with this dataset's adapter (chosen at run time from the config)."""
    return closure_files(
        "peekaboo.grounding.stage", "peekaboo.stage", f"peekaboo.datasets.{dataset_cfg(wc.d)['adapter']}"
    )


def boxes_data(wc):
    """The dataset's file and, when the box model is a local folder, that folder: editing either re-runs."""
    spec = dataset_cfg(wc.d)
    paths = [spec["options"].get("path"), spec["boxes"]["model"]["source"]]
    return [p for p in paths if p and Path(p).exists()]


rule boxes:
    input:
        code=boxes_code,
        data=boxes_data,
    output:
        boxes=R("boxes/{d}.jsonl"),
        answers=R("boxes/{d}.answers.parquet"),
        rejects=R("boxes/{d}.rejects.parquet"),
        agreement=R("boxes/{d}.agreement.parquet"),
        summary=R("boxes/{d}.summary.csv"),
    params:
        config=lambda wc: {"dataset": dataset_cfg(wc.d), "seed": config["seed"]},
        results=RESULTS,
    resources:
        **job_resources("boxes"),
    log:
        LOG("boxes/{d}"),
    benchmark:
        R("benchmarks/boxes/{d}.tsv")
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
