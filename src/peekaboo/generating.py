"""The ``generate`` stage: one shard of one (model, dataset) generated into a generations file.

Generation is the expensive, decode-bound step, so it is a stage of its own:
a fix to a scorer or to the attention capture re-runs only the ``traces``
stage, which replays this file at prefill speed. The file is in the import
format (``peekaboo.generations``): a model's outputs written by any engine
can stand in for it (``models.<m>.generations``). Batches are written
resumably: a killed job goes on from its finished batches, provided the plan,
config, code and the model's identity are unchanged.
"""

from __future__ import annotations


from .devices import claim_device
from .generate import generate_shard, setup_shard
from .logs import get_logger
from .models.identity import identify
from .tracestore import has_partial_batches
from .stage import StageCall

log = get_logger("generating")


def run_stage(call: StageCall) -> None:
    """The ``generate`` rule: one shard (wildcards ``m``, ``d``, ``i``) into ``output.generations``.

    ``config``: ``model`` and ``dataset`` (the entries) and
    ``model_identity``; what the traces stage alone reads (the ``traces``
    section, the replay's memory bound) is not here, so editing it does not
    re-generate.
    """
    cfg = call.config
    trained = call.paths("model")
    model_path = trained[0] if trained else cfg["model"]["source"]
    name = call.wildcards["m"]
    n_gpus = int(call.resources.get("gpu", 1) or 0)
    with claim_device(count=n_gpus) as visible:
        log.info("device: %s", f"CUDA_VISIBLE_DEVICES={visible}" if visible else "as found")
        # batches to resume: the weights are hashed anew (not from the cache) and must be the ones they were made with
        identity = identify(model_path, cfg["model"]["revision"], where=f"models.{name}",
                            fresh=has_partial_batches(call.output("generations")))
        setup = setup_shard(items_path=call.path("items_table"), masks_path=call.path("masks_table"),
                            results_dir=call.results_dir, model_name=name, model_spec=cfg["model"],
                            model_path=model_path, dataset=call.wildcards["d"], dataset_spec=cfg["dataset"],
                            shard=int(call.wildcards["i"]), traces_cfg=None, device=None)
        prov = call.provenance(model_id=setup.info.model_id, model_revision=identity.revision)
        generate_shard(setup, call.output("generations"),
                       fingerprint={"config_hash": prov["config_hash"], "code_hash": prov["code_hash"],
                                    "model_revision": identity.revision})
