"""Rule figures: every figure from the result tables, and figures/manifest.json."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from pathlib import Path

from peekaboo import figures, logs

logs.to_file(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)



def as_list(value):
    # a named input holding one file comes back as a plain string
    return [value] if isinstance(value, str) else list(value)


inputs = {key: as_list(snakemake.input[key]) for key in (  # noqa: F821
    "collapse_steps", "collapse_traces", "collapse_maps", "attribution", "modes")}
inputs.update({key: snakemake.input[key] for key in ("coefficients", "selective_curves", "selective_summary")})  # noqa: F821

figures.make_figures(
    inputs=inputs,
    # figures/manifest.json lies directly in the results directory's figures/ folder
    results_dir=Path(snakemake.output.manifest).parent.parent,  # noqa: F821
    out_dir=Path(snakemake.output.manifest).parent,  # noqa: F821
    figures_cfg=snakemake.params.sections["figures"],  # noqa: F821
    manifest_path=snakemake.output.manifest,  # noqa: F821
)
