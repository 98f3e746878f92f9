"""Rule batch_requests: a (model, dataset)'s requests as an OpenAI batch file, for any engine."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import batch_requests
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(batch_requests.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
