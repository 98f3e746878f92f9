"""Rule ``crm``: alignment to the base trace, attribution with control contrast, failure modes, summary."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

import peekaboo.logs

peekaboo.logs.to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake

import torch  # noqa: E402

from peekaboo.crm import crm_stage  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
crm_stage(
    snakemake.input.steps,  # noqa: F821
    list(snakemake.input.sidecars),  # noqa: F821
    snakemake.input.masks_table,  # noqa: F821
    snakemake.input.items_table,  # noqa: F821
    dict(snakemake.output.items()),  # noqa: F821
    snakemake.params.sections["alignment"],  # noqa: F821
    snakemake.params.sections["crm"],  # noqa: F821
    list(snakemake.input.code),  # noqa: F821
)
