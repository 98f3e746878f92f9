# The entropy x vision interaction logit and its transfer across datasets (docs/analysis.md),
# over every (model, dataset)'s per-trace features.
rule regression:
    input:
        code=code("regression"),
        traces=collapse_outputs("traces", ("regression", "transfer")),
    output:
        coefficients=report(
            R("regression/coefficients.csv"),
            caption="../report/coefficients_table.rst",
            category="Tables",
        ),
        transfer=report(
            R("regression/transfer.csv"),
            caption="../report/transfer_table.rst",
            category="Tables",
        ),
        interaction_by_task=report(
            R("regression/interaction_by_task.csv"),
            caption="../report/interaction_by_task_table.rst",
            category="Tables",
        ),
        summary=report(
            R("regression/summary.txt"),
            caption="../report/regression_summary.rst",
            category="Tables",
        ),
    params:
        config={**sections("regression", "features"), "seed": config["seed"], "analyses": analyses_config()},
        results=results_dir,
    resources:
        **job_resources("default"),
    log:
        LOG("regression/regression"),
    benchmark:
        BENCH("regression/regression")
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/regression.py"


FINAL_OUTPUTS.append(
    lambda: [R(f"regression/{f}") for f in ("coefficients.csv", "transfer.csv", "interaction_by_task.csv", "summary.txt")]
)
