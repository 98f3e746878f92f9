"""Rule train_reference: train one reference model and save it with its processor and training report."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; never reach for a hub

from peekaboo import logs, provenance
from peekaboo.models import reference

logs.to_file(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)

spec = dict(snakemake.params.reference)  # noqa: F821
# never more threads than Snakemake granted (the weights depend on the thread count: keep it fixed)
spec["threads"] = min(int(spec.get("threads") or 1), int(snakemake.threads))  # noqa: F821
reference.train_reference(
    spec,
    snakemake.params.options,  # noqa: F821
    snakemake.output.model,  # noqa: F821
    name=snakemake.wildcards.m,  # noqa: F821
    init_dir=snakemake.input.init[0] if snakemake.input.init else None,  # noqa: F821
    system_prompt=snakemake.params.system_prompt,  # noqa: F821
    thinking=snakemake.params.thinking,  # noqa: F821
    default_seed=snakemake.params.seed,  # noqa: F821
    provenance=provenance.record(
        {"reference": snakemake.params.reference, "options": snakemake.params.options},  # noqa: F821
        snakemake.input.code,  # noqa: F821
        model_id=snakemake.wildcards.m,  # noqa: F821
    ),
    where=f"models.{snakemake.wildcards.m}.reference",  # noqa: F821
)
