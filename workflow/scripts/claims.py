"""Rule claims: the papers' headline findings against this run's estimates, with verdicts."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import claims
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(claims.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
