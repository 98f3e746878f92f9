# Selective prediction: risk-coverage, AURC, E-AURC, risk at coverage, and the vision veto
# fitted leave-one-dataset-out (docs/analysis.md).
rule selective:
    input:
        code=code("selective"),
        traces=collapse_outputs("traces", ("selective", "transfer")),
    output:
        curves=R("selective/curves.parquet"),
        summary=report(
            R("selective/summary.csv"),
            caption="../report/selective_table.rst",
            category="Tables",
        ),
        entropy_comparison=report(
            R("selective/entropy_comparison.csv"),
            caption="../report/entropy_comparison_table.rst",
            category="Tables",
        ),
        calibration=report(
            R("selective/calibration.csv"),
            caption="../report/calibration_table.rst",
            category="Tables",
        ),
        reliability=R("selective/reliability.csv"),
    params:
        config={**sections("selective", "regression", "features"), "analyses": analyses_config()},
        results=results_dir,
    resources:
        **job_resources("default"),
    log:
        LOG("selective/selective"),
    benchmark:
        BENCH("selective/selective")
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/selective.py"


FINAL_OUTPUTS.append(
    lambda: [R("selective/curves.parquet"), R("selective/summary.csv"), R("selective/entropy_comparison.csv"),
             R("selective/calibration.csv"), R("selective/reliability.csv")]
)
