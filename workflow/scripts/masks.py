"""Rule masks: hide evidence regions (and controls) of every item, write the masks table and images."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import masks
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(masks.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
