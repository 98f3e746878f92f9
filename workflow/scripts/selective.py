"""Rule selective: risk-coverage curves, AURC, E-AURC, risk at coverage and the vision veto."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import logs, selective

logs.to_file(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)
traces = snakemake.input.traces  # noqa: F821
# one (model, dataset) pair: a named input holding one file comes back as a plain string
traces = [traces] if isinstance(traces, str) else list(traces)

selective.run_stage(
    traces_paths=traces,
    outputs={k: snakemake.output[k] for k in ("curves", "summary")},  # noqa: F821
    config=snakemake.params.sections,  # noqa: F821
    code_files=snakemake.input.code,  # noqa: F821
)
