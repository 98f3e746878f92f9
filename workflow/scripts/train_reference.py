"""Rule train_reference: train one reference model and save it with its processor and training report."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo.models.reference import training
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(training.run_stage, snakemake)


# batch-building workers are spawned processes that import this file again: only the parent trains
if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
