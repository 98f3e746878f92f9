"""Rule masks: hide evidence regions (and controls) of every item, write the masks table and images."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from pathlib import Path

from peekaboo import logs, masks

logs.to_file(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)

masks.run_stage(
    items_path=snakemake.input.items_table,  # noqa: F821
    masks_cfg=snakemake.params.masks,  # noqa: F821
    # masks/{d}.parquet lies directly in the results directory's masks/ folder
    results_dir=Path(snakemake.output.table).parent.parent,  # noqa: F821
    dataset=snakemake.wildcards.d,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    masks_path=snakemake.output.table,  # noqa: F821
    skipped_path=snakemake.output.skipped,  # noqa: F821
    enabled=snakemake.params.enabled,  # noqa: F821
    code_files=snakemake.input.code,  # noqa: F821
)
