"""Rule ``steps``: segment the traces of one (model, dataset) into reasoning steps."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

import peekaboo.logs

peekaboo.logs.to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake

from peekaboo.steps import steps_stage  # noqa: E402

steps_stage(
    list(snakemake.input.sidecars),  # noqa: F821
    snakemake.output[0],  # noqa: F821
    snakemake.params.segmenter,  # noqa: F821
    snakemake.params.sections["steps"],  # noqa: F821
    list(snakemake.input.code),  # noqa: F821
)
