"""Rule traces: generate one shard's traces (entropy, attention capture) into its Zarr store and sidecar."""

import _bootstrap  # noqa: F401 (puts src/ on sys.path)

from pathlib import Path

from peekaboo import logs

logs.to_file(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)

from peekaboo.devices import claim_device  # noqa: E402
from peekaboo.generate import run_shard  # noqa: E402

params = snakemake.params  # noqa: F821
store = Path(snakemake.output.store)  # noqa: F821

# claim the job's GPUs (several for a model spread by a device map) before anything initialises CUDA;
# they are released when the job ends, however it ends
n_gpus = int(snakemake.resources.get("gpu", 1) or 0)  # noqa: F821 (0: take no GPU)
with claim_device(count=n_gpus) as visible:
    logs.get_logger("traces").info("device: %s", f"CUDA_VISIBLE_DEVICES={visible}" if visible else "as found")
    run_shard(
        items_path=snakemake.input.items_table,  # noqa: F821
        masks_path=snakemake.input.masks_table,  # noqa: F821
        # items/{d}.parquet lies directly in the results directory's items/ folder
        results_dir=Path(snakemake.input.items_table).parent.parent,  # noqa: F821
        model_name=snakemake.wildcards.m,  # noqa: F821
        model_spec=params.model,
        model_path=params.model_path,
        dataset=snakemake.wildcards.d,  # noqa: F821
        dataset_spec=params.dataset,
        seed=params.seed,
        shard=int(snakemake.wildcards.i),  # noqa: F821
        traces_cfg=params.traces,
        store_path=store,
        sidecar_path=snakemake.output.sidecar,  # noqa: F821
        config_section={"model": params.model, "dataset": params.dataset, "traces": params.traces,
                        "seed": params.seed},
        code_files=snakemake.input.code,  # noqa: F821
        device=None,  # the model entry's device ("auto": the claimed GPU, else CPU)
    )
