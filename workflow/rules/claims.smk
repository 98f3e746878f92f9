# The claims table (docs/analysis.md, "The claims table"): each headline finding of the two papers
# against this run's estimate, with a verdict, read from the findings tables alone.
rule claims:
    input:
        code=code("claims"),
        collapse_summary=R("collapse/summary.csv"),
        transfer=R("regression/transfer.csv"),
        interaction_by_task=R("regression/interaction_by_task.csv"),
        selective_summary=R("selective/summary.csv"),
        entropy_comparison=R("selective/entropy_comparison.csv"),
        modes=[R(f"crm/{m}/{d}/modes.parquet") for m, d in pairs_for("crm")],
    output:
        claims=report(R("claims.csv"), caption="../report/claims.rst", category="Claims"),
    params:
        config={"features": config["features"], "claims": config["claims"], "seed": config["seed"]},
        results=results_dir,
    resources:
        **job_resources("default"),
    log:
        LOG("claims/claims"),
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/claims.py"


FINAL_OUTPUTS.append(lambda: [R("claims.csv")])
