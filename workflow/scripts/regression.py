"""Rule regression: the entropy x vision interaction logit per (model, dataset) and pooled, and transfer."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import regression
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(regression.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
