# Reference models: tiny Qwen3-VL models trained by the workflow on a panels
# dataset, with planted behaviour under masking -> reference/{m}/ (model,
# processor, training.json). Only models with a `reference` entry use this rule;
# the trace stage loads the directory like any hub model (model_path in common.smk).
# Params hold the model's reference entry and the training dataset's options
# (less the test set's seed and size), so editing them re-trains the model.
# reference_models (peekaboo.models.reference) and reference_init come from common.smk.


rule train_reference:
    input:
        code=code("models.reference", "datasets.panels", "datasets.base", "prompting"),
        init=lambda wc: reference_init(wc.m),
    output:
        model=directory(R("reference/{m}")),
    params:
        reference=lambda wc: reference_models.model_spec(config, wc.m),
        options=lambda wc: reference_models.training_options(config, wc.m),
        system_prompt=lambda wc: model_cfg(wc.m)["system_prompt"],
        thinking=lambda wc: model_cfg(wc.m)["thinking"],
        seed=config["seed"],
    # torch threads plus the batch-building worker processes, each on a core of its own
    threads: lambda wc: reference_models.job_threads(config, wc.m)
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
