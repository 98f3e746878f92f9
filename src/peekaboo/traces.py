"""The ``traces`` stage: one shard of one (model, dataset) generated, scored and captured into its store.

For each planned batch of the shard's trace requests (mask rows of the
shard's items, in items order) the model generates, the dataset's adapter
scores the response, and the per-token arrays are written resumably
(``peekaboo.tracestore``): a killed job resumes from its finished batches,
provided the plan, the config, the code and the model's identity (its weights:
``peekaboo.models.identity``) are all unchanged; otherwise the partial batches
are discarded and the log says why.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import capture, provenance, schema, tables, tracestore
from .datasets import get_adapter
from .devices import claim_device
from .generate import GenerationSettings, TraceGenerator, plan_batches, shard_requests
from .logs import get_logger, progress
from .models.identity import identify
from .models.loading import load_model
from .stage import StageCall

log = get_logger("traces")


def generate_shard(
    *,
    items_path: str | Path,
    masks_path: str | Path,
    results_dir: str | Path,
    model_name: str,
    model_spec: Mapping[str, Any],
    model_path: str | Path,
    dataset: str,
    dataset_spec: Mapping[str, Any],
    seed: int,
    shard: int,
    traces_cfg: Mapping[str, Any] | None,
    store_path: str | Path,
    sidecar_path: str | Path,
    config_section: Any = None,
    code_files: Sequence[str | Path] | None = None,
    device: str | None = None,
    base_dir: str | Path = ".",
) -> tuple[Path, Path]:
    """Generate one (model, dataset, shard), write it resumably, assemble the store; the (store, sidecar) paths.

    ``model_spec``, ``dataset_spec`` and ``traces_cfg`` are the config's model
    and dataset entries and ``traces`` section (absent keys take the schema's
    defaults); ``model_path`` is where the weights are (the entry's source, or
    a trained reference model's folder).
    """
    model_spec = schema.definition("model", model_spec, where=f"models.{model_name}")
    dataset_spec = schema.definition("dataset", dataset_spec, where=f"datasets.{dataset}")
    traces_cfg = schema.section("traces", traces_cfg)
    items = tables.read_table(items_path)
    masks = tables.read_table(masks_path)
    shard_size = int(dataset_spec["shard_size"])
    requests = shard_requests(items, masks, shard, shard_size, model_name, dataset, results_dir)
    batches = plan_batches(requests, int(model_spec["batch_size"]))
    settings = GenerationSettings.from_config(model_spec["generation"])
    map_spec, keep_heads = traces_cfg["map_layers"], bool(traces_cfg["keep_heads"])
    log.info("%s/%s shard %d: %d traces from %d items in %d batches", model_name, dataset, shard, len(requests),
             len(items.iloc[shard * shard_size:(shard + 1) * shard_size]), len(batches))

    # the weights actually loaded, whatever the config says: a retrained or replaced model must not
    # resume batches of the old one
    identity = identify(model_path, model_spec.get("revision"), where=f"models.{model_name}")
    model, processor, family, info = load_model(model_spec, model_path, device=device, name=model_name)
    prov = provenance.record(config_section, code_files, model_id=info.model_id, model_revision=identity.revision)
    adapter = get_adapter(dataset, dataset_spec, seed=seed, base_dir=base_dir)
    generator = TraceGenerator(
        model, processor, family, settings,
        thinking=bool(model_spec["thinking"]),
        system_prompt=model_spec["system_prompt"],
        map_layers=map_spec, keep_heads=keep_heads,
        score=lambda request, text: adapter.score(request.item or {}, text),
    )
    attrs = {
        "model": model_name,
        "dataset": dataset,
        "shard": int(shard),
        "model_id": info.model_id,
        "model_revision": identity.revision,
        "family": family,
        "dtype": info.dtype,
        "attn_implementation": (f"{capture.CAPTURE_IMPL} (layer outputs by sdpa; "
                                f"model configured {info.attn_implementation})"),
        "generation": settings.as_dict(),
        "prompt_template": getattr(processor, "chat_template", None) or "",
        "thinking": bool(model_spec["thinking"]),
        "system_prompt": model_spec["system_prompt"] or "",
        "n_layers": generator.n_layers,
        "n_heads": generator.n_heads,
        "map_layers_config": map_spec if isinstance(map_spec, str) else list(map_spec),
    }
    writer = tracestore.ShardWriter(
        store_path, sidecar_path, [[r.trace_id for r in b] for b in batches],
        n_layers=generator.n_layers, n_heads=generator.n_heads, map_layers=generator.map_layers,
        keep_heads=keep_heads, chunk_traces=int(traces_cfg["chunk_traces"]),
        compression_level=int(traces_cfg["compression_level"]),
        attrs=attrs, provenance=prov,
        fingerprint={"config_hash": prov.get("config_hash"), "code_hash": prov.get("code_hash"),
                     "model_id": info.model_id, "model_revision": identity.revision},
    )
    done = writer.start()
    bar = progress(total=len(requests), desc=f"{model_name}/{dataset} shard {shard}", unit="trace")
    bar.update(sum(len(batches[k]) for k in done))
    n_tokens, started, failed, items_seen = 0, time.perf_counter(), 0, set()
    for k, batch in enumerate(batches):
        if k in done:
            continue
        results = generator.generate(batch)
        writer.write_batch(k, results)
        n_tokens += sum(r.n_tokens for r in results)
        failed += sum(r.status != "ok" for r in results)
        elapsed = max(time.perf_counter() - started, 1e-9)
        items_seen.update(r.request.meta.get("item_id") for r in results)
        bar.set_postfix(items=len(items_seen), tok_s=f"{n_tokens / elapsed:.1f}", failed=failed, refresh=False)
        bar.update(len(batch))
        # the bar goes to stderr; the same figures go to the job's log file
        log.info("batch %d/%d: %d/%d traces, %d items, %.1f tokens/s, %d failed", k + 1, len(batches), bar.n,
                 len(requests), len(items_seen), n_tokens / elapsed, failed)
    bar.close()
    return writer.finalize()


def run_stage(call: StageCall) -> None:
    """The ``traces`` rule: one shard (wildcards ``m``, ``d``, ``i``) into ``output.store`` and ``output.sidecar``.

    ``config``: ``model`` and ``dataset`` (the entries), ``traces``, ``seed``
    and ``model_identity`` (the configured source's identity, so that replaced
    weights re-run the job; None for a reference model, whose folder is the
    ``model`` input). The job first claims its GPUs (resource ``gpu``) so that
    nothing initialises CUDA before ``CUDA_VISIBLE_DEVICES`` is set.
    """
    cfg = call.config
    trained = call.paths("model")
    model_path = trained[0] if trained else cfg["model"]["source"]
    n_gpus = int(call.resources.get("gpu", 1) or 0)  # 0: take no GPU
    with claim_device(count=n_gpus) as visible:
        log.info("device: %s", f"CUDA_VISIBLE_DEVICES={visible}" if visible else "as found")
        generate_shard(
            items_path=call.path("items_table"),
            masks_path=call.path("masks_table"),
            results_dir=call.results_dir,
            model_name=call.wildcards["m"],
            model_spec=cfg["model"],
            model_path=model_path,
            dataset=call.wildcards["d"],
            dataset_spec=cfg["dataset"],
            seed=cfg["seed"],
            shard=int(call.wildcards["i"]),
            traces_cfg=cfg["traces"],
            store_path=call.output("store"),
            sidecar_path=call.output("sidecar"),
            config_section=dict(cfg),
            code_files=call.code,
            device=None,  # the model entry's device ("auto": the claimed GPU, else CPU)
            base_dir=Path.cwd(),
        )
