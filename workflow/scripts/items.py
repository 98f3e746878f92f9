"""Rule items: run a dataset's adapter, write items, rejects and normalised images."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from pathlib import Path

from peekaboo import items, logs

logs.to_file(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)

items.run_stage(
    dataset=snakemake.wildcards.d,  # noqa: F821
    spec=snakemake.params.dataset,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    # items/{d}.parquet lies directly in the results directory's items/ folder
    results_dir=Path(snakemake.output.table).parent.parent,  # noqa: F821
    items_path=snakemake.output.table,  # noqa: F821
    rejects_path=snakemake.output.rejects,  # noqa: F821
    code_files=snakemake.input.code,  # noqa: F821
    base_dir=Path.cwd(),
    # the boxes stage's JSONL when a model makes the dataset's boxes
    boxes_path=snakemake.input.boxes[0] if snakemake.input.boxes else None,  # noqa: F821
)
