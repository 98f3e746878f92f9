"""Rule ship_reference: copy a shipped reference model into the results after checking every file's sha256."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo.models.reference import shipped
from peekaboo.stage import run_from_snakemake


def main(snakemake) -> None:
    run_from_snakemake(shipped.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
