"""Rule collapse: per-step and per-trace evidence measures, features, sinks and example maps of one (model, dataset)."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import collapse
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(collapse.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
