"""Rule crm: alignment to the base trace, attribution with control contrast, failure modes, summary."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import crm
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(crm.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
