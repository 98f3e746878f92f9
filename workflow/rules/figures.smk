# Every figure of the report, from the result tables alone (peekaboo.figures), plus
# figures/manifest.json. `snakemake figures` regenerates them; editing figures.py
# re-runs this rule only. PNGs (or PDFs when PNG is off) go into `snakemake --report`.
from peekaboo.figures import FIGURES


# Named outputs {name_fmt: path}; the report shows one format per figure, with its caption.
_FIGURE_FORMATS = config["figures"]["formats"]
_REPORT_FORMAT = "png" if "png" in _FIGURE_FORMATS else _FIGURE_FORMATS[0]
FIGURE_OUTPUTS = {
    f"{name}_{fmt}": R(f"figures/{name}.{fmt}") for name in FIGURES for fmt in _FIGURE_FORMATS
}
for _name in FIGURES:
    _key = f"{_name}_{_REPORT_FORMAT}"
    FIGURE_OUTPUTS[_key] = report(FIGURE_OUTPUTS[_key], caption=f"../report/{_name}.rst", category="Figures")


rule figures:
    input:
        collapse_traces=collapse_outputs("traces"),
        collapse_maps=collapse_outputs("maps"),
        collapse_layers=collapse_outputs("layers"),
        attribution=[R(f"crm/{m}/{d}/attribution.parquet") for m, d in pairs_for("crm")],
        modes=[R(f"crm/{m}/{d}/modes.parquet") for m, d in pairs_for("crm")],
        collapse_trajectory=R("collapse/trajectory.csv"),
        collapse_accuracy=R("collapse/accuracy.csv"),
        coefficients=R("regression/coefficients.csv"),
        transfer=R("regression/transfer.csv"),
        interaction_by_task=R("regression/interaction_by_task.csv"),
        selective_curves=R("selective/curves.parquet"),
        selective_summary=R("selective/summary.csv"),
        entropy_comparison=R("selective/entropy_comparison.csv"),
        selective_reliability=R("selective/reliability.csv"),
        # the attention strips draw the items' images
        items_tables=expand(R("items/{d}.parquet"), d=DATASETS),
        code=code("figures"),
    output:
        manifest=R("figures/manifest.json"),
        **FIGURE_OUTPUTS,
    params:
        config=sections("figures"),
        results=results_dir,
    resources:
        **job_resources("default"),
    log:
        LOG("figures/figures"),
    benchmark:
        BENCH("figures/figures")
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/figures.py"


FINAL_OUTPUTS.append(
    lambda: [R("figures/manifest.json")]
    + [R(f"figures/{n}.{fmt}") for n in FIGURES for fmt in config["figures"]["formats"]]
)
