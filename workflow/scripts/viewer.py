"""Rule viewer: the static per-item viewer under results/viewer/ (peekaboo.viewer)."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import viewer
from peekaboo.stage import run_from_snakemake


def main(snakemake):
    run_from_snakemake(viewer.run_stage, snakemake)


if __name__ == "__main__":  # Snakemake runs the script with `snakemake` defined
    main(snakemake)  # noqa: F821
