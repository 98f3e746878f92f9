"""Rule train_reference: train one reference model and save it with its processor and training report."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; never reach for a hub

from peekaboo import logs, provenance
from peekaboo.models import reference


def main(smk) -> None:
    logs.to_file(smk.log[0])
    spec = dict(smk.params.reference)
    # the weights depend on the torch thread count: never more than Snakemake granted, and the workers
    # (which do not change the weights) give way first when fewer cores were granted
    spec["threads"] = max(1, min(int(spec.get("threads") or 1), int(smk.threads)))
    spec["data_workers"] = max(0, min(int(spec.get("data_workers") or 0), int(smk.threads) - spec["threads"]))
    reference.train_reference(
        spec,
        smk.params.options,
        smk.output.model,
        name=smk.wildcards.m,
        init_dir=smk.input.init[0] if smk.input.init else None,
        system_prompt=smk.params.system_prompt,
        thinking=smk.params.thinking,
        default_seed=smk.params.seed,
        provenance=provenance.record(
            {"reference": smk.params.reference, "options": smk.params.options},
            smk.input.code,
            model_id=smk.wildcards.m,
        ),
        where=f"models.{smk.wildcards.m}.reference",
    )


# batch-building workers are spawned processes that import this file again: only the parent trains
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
