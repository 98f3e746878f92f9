"""Rule boxes: evidence boxes for one dataset from a grounding VLM or an open-vocabulary detector."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # boxes models load from the hub cache or a local path, never fetched

from peekaboo.grounding import stage  # noqa: E402
from peekaboo.stage import run_from_snakemake  # noqa: E402


def main(snakemake):
    run_from_snakemake(stage.run_stage, snakemake)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (snakemake is injected by the script directive)
