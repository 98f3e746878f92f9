"""Rule regression: the entropy x vision interaction logit per (model, dataset) and pooled, and transfer."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import logs, regression

logs.to_file(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)
traces = snakemake.input.traces  # noqa: F821
# one (model, dataset) pair: a named input holding one file comes back as a plain string
traces = [traces] if isinstance(traces, str) else list(traces)

regression.run_stage(
    traces_paths=traces,
    outputs={k: snakemake.output[k] for k in ("coefficients", "transfer", "summary")},  # noqa: F821
    config=snakemake.params.sections,  # noqa: F821
    code_files=snakemake.input.code,  # noqa: F821
)
