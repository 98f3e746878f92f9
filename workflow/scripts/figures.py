"""Rule figures: every figure from the result tables, and figures/manifest.json."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import figures
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(figures.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
