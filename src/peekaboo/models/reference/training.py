"""Training a reference model: the loop with its teacher-forced probe, and the ``train_reference`` stage.

Training runs on freshly generated items, loss on the answer tokens only
(everything up to and including the assistant header is masked), AdamW +
linear warm-up + cosine decay, seeded and deterministic on CPU for a given
thread count. Learning comes in jumps while the loss sits on a plateau, so
progress is judged by a teacher-forced probe on held-out items (every target
token must be the argmax) rather than by the loss; when the probe is perfect
on ``stop_patience`` consecutive checks the run skips ahead to a short
cool-down (``cooldown_steps`` of decaying learning rate) and stops.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ... import synthetic as P
from ...logs import get_logger, progress
from ...seeding import derive_seed, rng
from ...stage import StageCall
from . import attention
from .architecture import build_config, build_model, fast_vision_kernels, n_parameters, resolved_architecture
from .data import BatchPlan, BatchSource, collate, make_examples
from .spec import training_spec
from .tokenizer import build_processor

log = get_logger("reference")


class ReferenceProbeError(RuntimeError):
    """A reference model did not reach its probe target within its steps: the message holds the probe's numbers."""


def _probe_passes(result: Mapping[str, Any], stop_accuracy: float, max_blink_share: float | None) -> bool:
    """Whether one probe meets the target: its pass rate, and (the blinker) no blink item looking."""
    ok = result["accuracy"] >= float(stop_accuracy)
    if max_blink_share is not None and "attention" in result:
        # not looking is part of the behaviour: the probe passes only once no blink item looks
        ok = ok and result["attention"]["max_blink"] <= float(max_blink_share)
    return ok


def probe_failure(where: str, final: Mapping[str, Any], history: list[Mapping[str, Any]], cfg: Mapping[str, Any]) -> str:
    """The message of a training run whose probe missed its target: the target and the probe's numbers."""
    stop = float(cfg["stop_accuracy"])
    below = [f"{group} {value:.3f}" for group, value in final["by_group"].items() if value < stop]
    best = max(history, key=lambda r: r["accuracy"], default=None)
    parts = [
        f"{where}: the probe did not reach its target within {final['step']} steps "
        f"(stop_accuracy {stop:g} on {int(cfg['stop_patience'])} probes in a row"
        + (f", max_blink_share {cfg['max_blink_share']:g}" if "attention" in final and cfg.get("max_blink_share") is not None else "")
        + ")",
        f"final probe {final['accuracy']:.3f} (tokens {final['token_accuracy']:.4f})",
    ]
    if below:
        parts.append("below target: " + ", ".join(below))
    if "attention" in final:
        parts.append(f"largest blink evidence share {final['attention']['max_blink']:.3f}")
    if best is not None:
        parts.append(f"best probe {best['accuracy']:.3f} at step {best['step']}")
    return "; ".join(parts) + ". Nothing was saved: raise steps, or change the schedule or the behaviour"


def probe(model, batches, recorder: attention.AttentionRecorder | None = None) -> dict[str, Any]:
    """Teacher-forced probe: an example passes when every target token is the model's argmax.

    ``batches`` are collated batches (with labels) plus their examples. Returns
    overall and per (condition, question type) pass rates and token accuracy.
    With ``recorder`` (the blinker's training) also the reasoning tokens'
    evidence share (``attention``): its mean over the look and the blink
    examples, the largest blink and the smallest look share.
    """
    import torch

    was_training = model.training
    model.eval()
    passed: dict[str, list[bool]] = {}
    shares: dict[str, list[float]] = {"look": [], "blink": []}
    tokens_ok = tokens = 0
    with torch.no_grad():
        for batch, examples in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels" and k not in attention.TERM_KEYS}
            logits = model(**inputs, use_cache=False).logits
            if recorder is not None:
                share = attention.evidence_share(recorder.take(), batch)
                for value, sign in zip(share.tolist(), batch["attn_sign"].tolist()):
                    if sign:
                        shares["look" if sign > 0 else "blink"].append(value)
            pred = logits[:, :-1].argmax(-1)
            gold = batch["labels"][:, 1:]
            mask = gold != -100
            ok = (pred == gold) | ~mask
            tokens_ok += int(((pred == gold) & mask).sum())
            tokens += int(mask.sum())
            for row, ex in enumerate(examples):
                passed.setdefault(f"{ex.condition}/{ex.question_type}", []).append(bool(ok[row].all()))
    if was_training:
        model.train()
    allp = [v for vs in passed.values() for v in vs]
    result = {
        "accuracy": float(np.mean(allp)) if allp else float("nan"),
        "token_accuracy": tokens_ok / tokens if tokens else float("nan"),
        "by_group": {k: float(np.mean(v)) for k, v in sorted(passed.items())},
    }
    if recorder is not None:
        result["attention"] = {
            "look": float(np.mean(shares["look"])) if shares["look"] else float("nan"),
            "blink": float(np.mean(shares["blink"])) if shares["blink"] else float("nan"),
            "min_look": min(shares["look"], default=float("nan")),
            "max_blink": max(shares["blink"], default=float("nan")),
        }
    return result


def lr_at(step: int, total: int, warmup: int, base: float, floor: float = 0.05) -> float:
    """Linear warm-up, then cosine decay from ``base`` to ``floor * base`` at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_reference(
    spec: Mapping[str, Any],
    dataset_options: Mapping[str, Any],
    out_dir: str | Path,
    *,
    name: str = "reference",
    init_dir: str | Path | None = None,
    system_prompt: str | None = None,
    thinking: bool = False,
    default_seed: int = 0,
    provenance: Mapping[str, Any] | None = None,
    where: str = "reference",
) -> dict[str, Any]:
    """Train one reference model and save it (model, processor, ``training.json``) under ``out_dir``.

    ``spec`` is the model's ``reference`` config entry, ``dataset_options`` the
    options of the panels dataset whose images it trains on (its ``seed`` is
    not used: training items come from the ``train`` stream seeded by
    ``spec.seed``). With ``init_dir`` the weights and processor of that trained
    model are the starting point. Returns the training report.
    """
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    t_start = time.perf_counter()
    cfg = training_spec(spec, where)
    behaviour = cfg["behaviour"]
    torch.set_num_threads(int(cfg["threads"]))
    opts = P.resolve_options(dataset_options, where=f"{where}.dataset options", default_seed=default_seed)
    seed = int(cfg["seed"])
    out_dir = Path(out_dir)

    if init_dir:
        processor = AutoProcessor.from_pretrained(str(init_dir))
        model = Qwen3VLForConditionalGeneration.from_pretrained(str(init_dir), dtype=torch.float32)
    else:
        processor = build_processor(opts)
        model = build_model(build_config(processor, opts, cfg["architecture"]), seed)
    model.train()
    log.info("%s: %s, %d parameters, init %s", name, behaviour, n_parameters(model), init_dir or "random")

    # the blinker's attention term (module attention): only the blinker runs through it
    term = behaviour == "blinker" and float(cfg["attention_weight"]) > 0
    layers = attention.resolve_layers(cfg["attention_layers"], model.config.text_config.num_hidden_layers,
                                      where=f"{where}.attention_layers")
    blink = P.blink_rule(opts) if behaviour == "blinker" else None

    probe_items = P.training_items(opts, derive_seed(seed, "probe") % (2**31), 0, int(cfg["probe_items"]))
    # the probe over-samples the hidden conditions so that each behaviour is checked on enough items
    probe_examples = make_examples(
        probe_items, behaviour, rng(seed, "reference", behaviour, "probe"), 1 / 3, 1 / 3, cfg["fills"], blink=blink
    )
    bs = int(cfg["batch_size"])
    probe_batches = [
        (collate(processor, probe_examples[i : i + bs], system_prompt, thinking), probe_examples[i : i + bs])
        for i in range(0, len(probe_examples), bs)
    ]
    if term:
        for batch, examples in probe_batches:
            batch.update(attention.term_inputs(processor, batch, examples))
    weight = float(cfg["attention_weight"])
    max_blink_share = cfg["max_blink_share"]

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": float(cfg["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}],
        lr=float(cfg["learning_rate"]),
        betas=(0.9, 0.98),
        eps=1e-8,
    )

    total = int(cfg["steps"])
    warmup = min(int(cfg["warmup_steps"]), total)
    base_lr = float(cfg["learning_rate"])
    probe_every = int(cfg["probe_every"])
    stop_accuracy = cfg["stop_accuracy"]
    cooldown = int(cfg["cooldown_steps"])
    patience = int(cfg["stop_patience"])
    losses: list[float] = []
    probes: list[dict[str, Any]] = []
    streak = 0
    cooldown_from: int | None = None  # step at which the probe passed and the cool-down began
    passed_at: int | None = None  # step at which the probe had passed `patience` times in a row
    data_seconds = 0.0
    step = 0

    plan = BatchPlan(
        processor, opts, seed, behaviour, bs, float(cfg["hidden_fraction"]), float(cfg["control_fraction"]),
        tuple(cfg["fills"]), system_prompt, thinking, attention_term=term,
    )
    source = BatchSource(plan, workers=int(cfg["data_workers"]))
    bar = progress(total=total, desc=f"train {name}", unit="step")
    term_losses: list[float] = []
    try:
        with fast_vision_kernels(), (attention.recording(model, layers) if term else nullcontext()) as recorder:
            while step < total:
                if cooldown_from is not None:
                    if step >= cooldown_from + cooldown:
                        break
                    lr = base_lr * 0.5 * (1 + math.cos(math.pi * (step - cooldown_from) / max(1, cooldown))) * lr_at(
                        cooldown_from, total, warmup, 1.0
                    )
                else:
                    lr = lr_at(step, total, warmup, base_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                t0 = time.perf_counter()
                batch = source.get(step, total)
                data_seconds += time.perf_counter() - t0
                if term:
                    terms = {k: batch.pop(k) for k in attention.TERM_KEYS}
                    out = model(**batch, use_cache=False)
                    share = attention.evidence_share(recorder.take(), terms)
                    term_loss = attention.term_loss(share, terms["attn_sign"])
                    loss = out.loss + weight * term_loss
                    term_losses.append(float(term_loss.detach()))
                else:
                    out = model(**batch, use_cache=False)
                    loss = out.loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses.append(float(out.loss.detach()))
                step += 1
                bar.update(1)
                if probe_every and (step % probe_every == 0 or step == total):
                    result = probe(model, probe_batches, recorder)
                    result["step"] = step
                    result["loss"] = float(np.mean(losses[-probe_every:]))
                    if term:
                        result["attention_loss"] = float(np.mean(term_losses[-probe_every:]))
                    probes.append(result)
                    log.info("%s step %d: loss %.4f probe %.3f (tokens %.4f) %s%s", name, step, result["loss"],
                             result["accuracy"], result["token_accuracy"], result["by_group"],
                             f" attention {result['attention']}" if term else "")
                    if cooldown_from is None and stop_accuracy is not None:
                        ok = _probe_passes(result, stop_accuracy, max_blink_share if term else None)
                        streak = streak + 1 if ok else 0
                        if streak >= patience and passed_at is None:
                            passed_at = step
                        if streak >= patience and step + cooldown < total:
                            cooldown_from = step
                            log.info("%s: probe passed %d times; cool-down for %d steps", name, streak, cooldown)
            final = probe(model, probe_batches, recorder)
    finally:
        source.close()
    bar.close()
    final["step"] = step
    if stop_accuracy is not None:
        # the probe is the behaviour's target: a model that misses it is not saved, so nothing downstream runs on it
        # (without probes during training, the final probe alone is judged)
        passed = passed_at is not None if probe_every else _probe_passes(final, stop_accuracy, max_blink_share if term else None)
        if not passed:
            message = probe_failure(where, final, probes, cfg)
            log.error("%s", message)
            raise ReferenceProbeError(message)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    seconds = time.perf_counter() - t_start
    chunks = max(1, len(losses) // 10)
    report = {
        "model": name,
        "behaviour": behaviour,
        "init_from": str(init_dir) if init_dir else None,
        "parameters": n_parameters(model),
        "steps": step,
        "planned_steps": total,
        "cooldown_from": cooldown_from,
        "probe_passed_at": passed_at,
        "batch_size": bs,
        "seconds": round(seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "threads": int(cfg["threads"]),
        "data_workers": int(cfg["data_workers"]),
        "loss": {
            "first": losses[0] if losses else None,
            "last": float(np.mean(losses[-chunks:])) if losses else None,
            "curve": [round(float(np.mean(losses[i : i + chunks])), 5) for i in range(0, len(losses), chunks)],
        },
        "probe": {"final": final, "history": probes},
        "training": {k: cfg[k] for k in sorted(cfg) if k != "architecture"},
        **({"attention_loss": {
            "layers": layers,
            "first": term_losses[0] if term_losses else None,
            "last": float(np.mean(term_losses[-chunks:])) if term_losses else None,
            "curve": [round(float(np.mean(term_losses[i : i + chunks])), 5) for i in range(0, len(term_losses), chunks)],
        }} if term else {}),
        "architecture": resolved_architecture(cfg["architecture"]),
        "provenance": dict(provenance or {}),
    }
    (out_dir / "training.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
    log.info("%s: %d steps in %.0f s (data %.0f s), probe %.3f", name, step, seconds, data_seconds, final["accuracy"])
    return report


def run_stage(call: StageCall) -> None:
    """The ``train_reference`` rule: train one reference model into ``output.model``.

    ``config``: ``reference`` (the model's reference entry), ``options`` (the
    training dataset's panels options), ``system_prompt``, ``thinking``,
    ``seed``; input ``init``: the trained model to start from (none or one).
    """
    # everything is built locally; never reach for a hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = call.config
    name = call.wildcards["m"]
    spec = dict(cfg["reference"])
    # the weights depend on the torch thread count: never more than Snakemake granted, and the workers
    # (which do not change the weights) give way first when fewer cores were granted
    spec["threads"] = max(1, min(int(spec["threads"]), call.threads))
    spec["data_workers"] = max(0, min(int(spec["data_workers"]), call.threads - spec["threads"]))
    init = call.paths("init")
    train_reference(
        spec,
        cfg["options"],
        call.output("model"),
        name=name,
        init_dir=init[0] if init else None,
        system_prompt=cfg["system_prompt"],
        thinking=cfg["thinking"],
        default_seed=cfg["seed"],
        provenance=call.provenance(model_id=name),
        where=f"models.{name}.reference",
    )
