"""Rule selective: risk-coverage curves, AURC, E-AURC, risk at coverage and the vision veto."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import selective
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(selective.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
