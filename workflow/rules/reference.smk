# Reference models: tiny Qwen3-VL models trained by the workflow on a panels
# dataset, with planted behaviour under masking -> reference/{m}/ (model,
# processor, training.json). Only models with a `reference` entry use this rule;
# the trace stage loads the directory like any hub model (model_path in common.smk).


def reference_spec(m):
    spec = model_cfg(m).get("reference")
    if not spec:
        raise WorkflowError(f"models.{m}: has no 'reference' entry, so reference/{m} cannot be trained")
    return spec


def reference_training_options(m):
    """The panels options that shape training images; the test set's seed and size are left out
    so that resizing the test set does not retrain the models."""
    options = dict(dataset_cfg(pcfg.reference_dataset(config, m))["options"])
    for key in ("seed", "n_items", "counts"):
        options.pop(key, None)
    return options


def reference_init(m):
    init = reference_spec(m).get("init_from") or ""
    return [R(f"reference/{init}")] if init else []


rule train_reference:
    input:
        code=code("models.reference", "datasets.panels", "datasets.base", "prompting"),
        init=lambda wc: reference_init(wc.m),
    output:
        model=directory(R("reference/{m}")),
    params:
        reference=lambda wc: reference_spec(wc.m),
        options=lambda wc: reference_training_options(wc.m),
        system_prompt=lambda wc: model_cfg(wc.m)["system_prompt"],
        thinking=lambda wc: model_cfg(wc.m)["thinking"],
        seed=config["seed"],
    threads: lambda wc: reference_spec(wc.m)["threads"]
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime"],
    log:
        LOG("reference/{m}"),
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/train_reference.py"


FINAL_OUTPUTS.append(lambda: [R(f"reference/{m}") for m in MODELS if model_cfg(m).get("reference")])
