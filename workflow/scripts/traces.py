"""Rule traces: generate one shard's traces (entropy, attention capture) into its Zarr store and sidecar."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import traces
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(traces.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
