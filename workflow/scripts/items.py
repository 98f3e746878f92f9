"""Rule items: run a dataset's adapter, write items, rejects and normalised images."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import items
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(items.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
