# Evidence collapse as a finding (docs/analysis.md): the trajectory over normalised reasoning
# position, the drop from the first to the last reasoning step, and accuracy against it, from
# the unmasked traces of every (model, dataset) whose dataset feeds `collapse`.
rule collapse_findings:
    input:
        code=code("collapse_findings"),
        traces=collapse_outputs("traces", ("collapse",)),
        steps=collapse_outputs("", ("collapse",)),
    output:
        summary=report(
            R("collapse/summary.csv"),
            caption="../report/collapse_summary_table.rst",
            category="Tables",
        ),
        trajectory=report(
            R("collapse/trajectory.csv"),
            caption="../report/collapse_trajectory_table.rst",
            category="Tables",
        ),
        accuracy=report(
            R("collapse/accuracy.csv"),
            caption="../report/collapse_accuracy_table.rst",
            category="Tables",
        ),
    params:
        config={
            "collapse": {k: config["collapse"][k] for k in ("position_bins", "bootstrap")},
            "seed": config["seed"],
        },
        results=results_dir,
    resources:
        **job_resources("default"),
    log:
        LOG("collapse_findings/collapse_findings"),
    benchmark:
        BENCH("collapse_findings/collapse_findings")
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/collapse_findings.py"


FINAL_OUTPUTS.append(lambda: [R(f"collapse/{name}.csv") for name in ("summary", "trajectory", "accuracy")])
