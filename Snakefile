# peekaboo: does each reasoning step of a VLM still rest on the visual evidence?
# Entry point: validates the config against src/peekaboo/config.schema.yaml
# (filling defaults), then includes one rules file per stage.
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the embedded default; a --configfile replaces it rather than
# being deep-merged into it, so another config's datasets and models stand alone.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/boxes.smk"
include: "workflow/rules/items.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/reference.smk"
include: "workflow/rules/traces.smk"
include: "workflow/rules/steps.smk"
include: "workflow/rules/crm.smk"
include: "workflow/rules/collapse.smk"
include: "workflow/rules/collapse_findings.smk"
include: "workflow/rules/regression.smk"
include: "workflow/rules/selective.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/viewer.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
