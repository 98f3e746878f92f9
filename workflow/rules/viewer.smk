# The per-item viewer (docs/viewer.md): a static site under results/viewer/ from the result tables and
# trace stores alone. On demand, not part of `all`: `snakemake viewer` builds it (seconds on the
# default results) and `snakemake all viewer --report report.zip` puts it into the report (Snakemake
# takes an HTML folder into zip reports only; `--report report.html` links to it from its front page).
_VIEWER_PACKAGE = Path(workflow.main_snakefile).resolve().parent / "src" / "peekaboo" / "viewer"


def viewer_code():
    """The stage's code input, plus the templates and static files the pages are built from."""
    assets = [p for folder in ("templates", "static") for p in sorted((_VIEWER_PACKAGE / folder).rglob("*"))]
    return code("viewer") + [str(p) for p in assets if p.is_file()]


rule viewer:
    input:
        items_tables=expand(R("items/{d}.parquet"), d=DATASETS),
        masks_tables=expand(R("masks/{d}.parquet"), d=DATASETS),
        sidecars=[p for m, d in model_dataset_pairs() for p in trace_shards(m, d)],
        stores=[p for m, d in model_dataset_pairs() for p in trace_stores(m, d)],
        steps=[R(f"steps/{m}/{d}.parquet") for m, d in model_dataset_pairs()],
        alignment=[R(f"crm/{m}/{d}/alignment.parquet") for m, d in pairs_for("crm")],
        attribution=[R(f"crm/{m}/{d}/attribution.parquet") for m, d in pairs_for("crm")],
        modes=[R(f"crm/{m}/{d}/modes.parquet") for m, d in pairs_for("crm")],
        collapse_steps=collapse_outputs(),
        collapse_traces=collapse_outputs("traces"),
        collapse_sinks=collapse_outputs("sinks"),
        code=viewer_code(),
    output:
        site=report(
            directory(R("viewer")),
            htmlindex="index.html",
            caption="../report/viewer.rst",
            category="Viewer",
        ),
    params:
        config={"viewer": config["viewer"], "collapse": {"layers": config["collapse"]["layers"]}},
        results=results_dir,
    resources:
        **job_resources("default"),
    log:
        LOG("viewer/viewer"),
    benchmark:
        BENCH("viewer/viewer")
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/viewer.py"
