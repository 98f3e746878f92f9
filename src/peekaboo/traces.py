"""The ``traces`` stage: one shard of one (model, dataset) replayed from its generations, scored and captured.

The tokens come from a generations file (``peekaboo.generations``): the one
the ``generate`` stage wrote for this shard, or one imported from any engine
(a model's ``generations`` in the config). One teacher-forced forward pass per
batch (``peekaboo.replay``) gives entropy, log-probabilities and the attention
arrays; the dataset's scorer (``peekaboo.scoring``) scores each response. Batches are written
resumably (``peekaboo.tracestore``): a killed job resumes from its finished
batches, provided the plan, the config, the code, the model's identity (its
weights: ``peekaboo.models.identity``) and the generations file are all
unchanged; otherwise the partial batches are discarded and the log says what
differed.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import generations as gen_files
from . import provenance, replay, schema, tracestore
from .devices import claim_device
from .trace_replay import setup_shard
from .logs import get_logger, progress
from .models.identity import identify
from .scoring import get_scorer
from .stage import StageCall

log = get_logger("traces")


def file_digest(path: str | Path) -> str:
    """sha256 (first 16 hex digits) of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def trace_shard(
    *,
    items_path: str | Path,
    masks_path: str | Path,
    results_dir: str | Path,
    model_name: str,
    model_spec: Mapping[str, Any],
    model_path: str | Path,
    dataset: str,
    dataset_spec: Mapping[str, Any],
    shard: int,
    traces_cfg: Mapping[str, Any] | None,
    store_path: str | Path,
    sidecar_path: str | Path,
    generations_path: str | Path | None = None,
    config_section: Any = None,
    code_files: Sequence[str | Path] | None = None,
    device: str | None = None,
) -> tuple[Path, Path]:
    """One (model, dataset, shard) into its store and sidecar, resumably; the (store, sidecar) paths.

    With ``generations_path`` (a generations file: made by the ``generate``
    stage or imported from any engine) the tokens are replayed as they are, in
    the batches generating here would use, so a file of the model's own token
    ids gives the same store; without it each batch is generated, then
    replayed (a notebook's one call). ``model_spec``, ``dataset_spec`` and
    ``traces_cfg`` are the config's entries and section (absent keys take the
    schema's defaults); ``model_path`` is where the weights are.
    """
    model_spec = schema.definition("model", model_spec, where=f"models.{model_name}")
    dataset_spec = schema.definition("dataset", dataset_spec, where=f"datasets.{dataset}")
    traces_cfg = schema.section("traces", traces_cfg)
    # the weights actually loaded, whatever the config says: a retrained or replaced model must not resume
    # batches of the old one
    # (hashed anew, not from the cache, when there are batches to resume: PartialBatches compares it to theirs)
    identity = identify(model_path, model_spec["revision"], where=f"models.{model_name}",
                        fresh=tracestore.has_partial_batches(store_path))
    setup = setup_shard(items_path=items_path, masks_path=masks_path, results_dir=results_dir,
                        model_name=model_name, model_spec=model_spec, model_path=model_path, dataset=dataset,
                        dataset_spec=dataset_spec, shard=shard, traces_cfg=traces_cfg, device=device,
                        scorer=get_scorer(dataset_spec["adapter"]))
    generator, info, requests, batches = setup.generator, setup.info, setup.requests, setup.batches
    prov = provenance.record(config_section, code_files, model_id=info.model_id, model_revision=identity.revision)
    imported = None
    source = "generated"  # each batch generated here, then replayed
    if generations_path is not None:
        generations_path = Path(generations_path)
        imported = gen_files.read_generations(generations_path, [r.generation_id for r in requests],
                                              known=setup.known_ids)
        gen_files.log_problems(imported)
        source = f"from file: {generations_path.name} (sha256 {file_digest(generations_path)})"
        log.info("%s: %d of %d traces have a generation, %d problem lines", generations_path.name,
                 len(requests) - imported.n_failed, len(requests), len(imported.problems))
    map_spec = traces_cfg["map_layers"]
    example = next((generator.prompt_text(r) for r in requests), "")
    attrs = {
        "model": model_name,
        "dataset": dataset,
        "shard": int(shard),
        "model_id": info.model_id,
        "model_revision": identity.revision,
        "family": setup.family,
        "dtype": info.dtype,
        "attn_implementation": (f"{replay.REPLAY_IMPL} (layer outputs by sdpa; "
                                f"model configured {info.attn_implementation})"),
        "generation": generator.settings.as_dict(),
        "generations": source,
        "prompt_template": getattr(setup.processor, "chat_template", None) or "",
        # what the prompt really was: thinking asked for, whether the rendered prompt opens a thinking block
        # (a chain that ends inside it has no answer), and the first request's prompt as the model got it
        "thinking": bool(model_spec["thinking"]),
        "prompt_opens_thinking": bool(example) and generator.opens_thinking(example),
        "prompt_example": example,
        "system_prompt": model_spec["system_prompt"] or "",
        "n_layers": generator.n_layers,
        "n_heads": generator.n_heads,
        "map_layers_config": map_spec if isinstance(map_spec, str) else list(map_spec),
    }
    writer = tracestore.ShardWriter(
        store_path, sidecar_path, [[r.trace_id for r in b] for b in batches],
        n_layers=generator.n_layers, n_heads=generator.n_heads, map_layers=generator.map_layers,
        keep_heads=bool(traces_cfg["keep_heads"]), chunk_traces=int(traces_cfg["chunk_traces"]),
        compression_level=int(traces_cfg["compression_level"]),
        attrs=attrs, provenance=prov, order=[r.trace_id for r in requests],
        fingerprint={"config_hash": prov.get("config_hash"), "code_hash": prov.get("code_hash"),
                     "model_id": info.model_id, "model_revision": identity.revision, "generations": source},
    )
    done = writer.start()
    bar = progress(total=len(requests), desc=f"{model_name}/{dataset} shard {shard}", unit="trace")
    bar.update(sum(len(batches[k]) for k in done))
    n_tokens, started, failed, items_seen = 0, time.perf_counter(), 0, set()
    for k, batch in enumerate(batches):
        if k in done:
            continue
        if imported is None:
            results = generator.generate(batch)
        else:
            results = generator.replay(batch, [imported.get(r.generation_id) for r in batch])
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
    store, sidecar = writer.finalize()
    log_engine_agreement(sidecar, source)
    return store, sidecar


def log_engine_agreement(sidecar_path: str | Path, source: str) -> float | None:
    """Log the shard's largest difference between the replay's log-probabilities and the engine's (a health
    figure: the sidecar's ``engine_logprob_diff`` has it per trace); None where no engine gave its own."""
    from . import tables

    frame = tables.read_table(sidecar_path, columns=["engine_logprob_diff"])
    diffs = frame["engine_logprob_diff"].dropna()
    if diffs.empty:
        return None
    worst = float(diffs.max())
    log.info("engine agreement (%s): largest |replay - engine| log-probability %.3g over %d traces "
             "(median of the per-trace largest %.3g)", source, worst, len(diffs), float(diffs.median()))
    return worst


def run_stage(call: StageCall) -> None:
    """The ``traces`` rule: one shard (wildcards ``m``, ``d``, ``i``) into ``output.store`` and ``output.sidecar``.

    Input ``generations``: the shard's generations file (its own, or the
    model's imported file for the dataset); empty for a model that does not
    generate separately, whose batches are generated here, then replayed. ``config``: ``model`` and
    ``dataset`` (the entries), ``traces`` and ``model_identity``
    (the configured source's identity, so that replaced weights re-run the
    job; None for a reference model, whose folder is the ``model`` input). The
    job first claims its GPUs (resource ``gpu``) so that nothing initialises
    CUDA before ``CUDA_VISIBLE_DEVICES`` is set.
    """
    cfg = call.config
    trained = call.paths("model")
    n_gpus = int(call.resources.get("gpu", 1) or 0)  # 0: take no GPU
    with claim_device(count=n_gpus) as visible:
        log.info("device: %s", f"CUDA_VISIBLE_DEVICES={visible}" if visible else "as found")
        trace_shard(
            items_path=call.path("items_table"),
            masks_path=call.path("masks_table"),
            results_dir=call.results_dir,
            model_name=call.wildcards["m"],
            model_spec=cfg["model"],
            model_path=trained[0] if trained else cfg["model"]["source"],
            dataset=call.wildcards["d"],
            dataset_spec=cfg["dataset"],
            shard=int(call.wildcards["i"]),
            traces_cfg=cfg["traces"],
            store_path=call.output("store"),
            sidecar_path=call.output("sidecar"),
            # none when the model's traces job generates too (models.<m>.generate_separately: false)
            generations_path=call.path("generations") if call.paths("generations") else None,
            config_section=dict(cfg),
            code_files=call.code,
            device=None,  # the model entry's device ("auto": the claimed GPU, else CPU)
        )
