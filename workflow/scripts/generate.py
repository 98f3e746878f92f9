"""Rule generate: one shard's token ids and texts into its generations file (the import format)."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import generating
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(generating.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
