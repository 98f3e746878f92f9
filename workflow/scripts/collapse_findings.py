"""Rule collapse_findings: the trajectory, drop and accuracy tables of evidence collapse."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import collapse_findings
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(collapse_findings.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
