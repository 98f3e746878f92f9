# Reference models: tiny Qwen3-VL models trained by the workflow on a panels
# dataset, with planted behaviour under masking -> reference/{m}/ (model,
# processor, training.json). Only models with a `reference` entry use this rule;
# the trace stage loads the directory like any hub model (model_path in common.smk).
# Its config holds the model's reference entry and the training dataset's options
# (less the test set's seed and size), so editing them re-trains the model.
# reference_spec (peekaboo.models.reference.spec) and reference_init come from common.smk.
rule train_reference:
    input:
        code=code("train_reference"),
        init=lambda wc: reference_init(wc.m),
    output:
        model=directory(R("reference/{m}")),
    params:
        config=lambda wc: {
            "reference": reference_spec.model_spec(config, wc.m),
            "options": reference_spec.training_options(config, wc.m),
            "system_prompt": model_cfg(wc.m)["system_prompt"],
            "thinking": model_cfg(wc.m)["thinking"],
            "seed": config["seed"],
        },
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
