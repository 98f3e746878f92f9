# Reference models: tiny Qwen3-VL models with planted behaviour under masking ->
# reference/{m}/ (model, processor, training.json). Only models with a `reference`
# entry use these rules; the trace stage loads the directory like any hub model
# (model_path in common.smk). Two rules make that folder, chosen per model by
# reference.source:
# - ship_reference (source: shipped): the trained weights that ship with the
#   project (shipped/reference/{m}, made by scripts/ship_reference.py from a run
#   of train_reference), copied after every file's sha256 is checked against
#   shipped/reference/manifest.json. The shipped files are inputs, so editing one
#   re-runs the copy (which then fails, naming the file) and everything after it.
# - train_reference (source: train): trains the model. Its config holds the
#   model's reference entry and the training dataset's options (less the test
#   set's seed and size), so editing them re-trains the model.
# reference_spec (peekaboo.models.reference.spec) and reference_init come from common.smk.
from peekaboo.models.reference import shipped as reference_shipped

SHIPPED_REFERENCE = reference_shipped.shipped_dir(Path(workflow.main_snakefile).resolve().parent)
SHIPPED_MODELS = [m for m in MODELS if reference_spec.is_shipped(config, m)]
TRAINED_MODELS = [m for m in MODELS if model_cfg(m).get("reference") and m not in SHIPPED_MODELS]


def _shipped_entries():
    """Each shipped model's manifest entry, its config checked against the model's entry (a clear error if not)."""
    if not SHIPPED_MODELS:
        return {}
    try:
        manifest = reference_shipped.load_manifest(SHIPPED_REFERENCE)
        entries = {m: reference_shipped.model_entry(manifest, m, SHIPPED_REFERENCE) for m in SHIPPED_MODELS}
        for m, entry in entries.items():
            reference_shipped.check_config(entry, reference_spec.training_config(config, m), m, SHIPPED_REFERENCE)
    except reference_shipped.ShippedModelError as exc:
        raise WorkflowError(str(exc)) from None
    return entries


SHIPPED_ENTRIES = _shipped_entries()


def _only(models):
    """A wildcard constraint matching exactly these models (none: a pattern that matches nothing)."""
    return "|".join(map(re.escape, models)) if models else "(?!)"


rule ship_reference:
    input:
        code=code("ship_reference"),
        manifest=SHIPPED_REFERENCE / reference_shipped.MANIFEST,
        files=lambda wc: reference_shipped.model_files(SHIPPED_REFERENCE, wc.m, SHIPPED_ENTRIES[wc.m]),
    output:
        model=directory(R("reference/{m}")),
    wildcard_constraints:
        m=_only(SHIPPED_MODELS),
    params:
        # the entry holds the files' hashes: new weights re-run the copy and what follows
        config=lambda wc: {"source": "shipped", "entry": SHIPPED_ENTRIES[wc.m]},
        results=results_dir,
    localrule: True
    log:
        LOG("reference/{m}"),
    benchmark:
        BENCH("ship_reference/{m}")
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/ship_reference.py"


rule train_reference:
    input:
        code=code("train_reference"),
        init=lambda wc: reference_init(wc.m),
    output:
        model=directory(R("reference/{m}")),
    wildcard_constraints:
        m=_only(TRAINED_MODELS),
    params:
        config=lambda wc: reference_spec.training_config(config, wc.m),
        results=results_dir,
    # torch threads plus the batch-building worker processes, each on a core of its own
    threads: lambda wc: reference_spec.job_threads(config, wc.m)
    # before any traces job that is ready too: the fine-tunes, not the traces of the models already
    # trained, are what the rest of the run waits for
    priority: 10
    resources:
        **job_resources("train"),
    log:
        LOG("reference/{m}"),
    benchmark:
        BENCH("reference/{m}")
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/train_reference.py"


FINAL_OUTPUTS.append(lambda: [R(f"reference/{m}") for m in MODELS if model_cfg(m).get("reference")])
