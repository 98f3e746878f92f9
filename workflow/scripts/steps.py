"""Rule steps: segment the traces of one (model, dataset) into reasoning steps."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import steps
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(steps.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
