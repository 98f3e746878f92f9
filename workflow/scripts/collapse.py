"""Rule collapse: per-step and per-trace evidence measures, features, sinks and example maps of one (model, dataset)."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from peekaboo import collapse, logs

logs.to_file(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)


def as_list(value):
    # a named input holding one file comes back as a plain string
    return [value] if isinstance(value, str) else list(value)


collapse.run_stage(
    store_paths=as_list(snakemake.input.stores),  # noqa: F821
    sidecar_paths=as_list(snakemake.input.sidecars),  # noqa: F821
    steps_path=snakemake.input.steps,  # noqa: F821
    items_path=snakemake.input.items_table,  # noqa: F821
    outputs={k: snakemake.output[k] for k in ("steps", "traces", "sinks", "maps")},  # noqa: F821
    config=snakemake.params.sections,  # noqa: F821
    code_files=snakemake.input.code,  # noqa: F821
    model=snakemake.wildcards.m,  # noqa: F821
    dataset=snakemake.wildcards.d,  # noqa: F821
)
