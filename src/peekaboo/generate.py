"""Batched generation of reasoning traces, with entropy, log-probabilities and attention capture.

One :class:`TraceGenerator` per (model, shard). For each planned batch of
trace requests it

* loads the images and builds the prompt through the model's chat template
  (:mod:`peekaboo.prompting`, shared with reference-model training); a request
  whose image cannot be read or processed, or whose prompt does not fit the
  model's context, becomes a ``failed`` result with the reason, and the rest of
  the batch goes on;
* collates the prompts with left padding (image token positions tracked per
  row) and runs transformers' ``generate``: greedy unless
  ``generation.do_sample`` (then seeded from ``generation.seed`` and the
  batch's first trace id); each row stops at EOS, at ``max_new_tokens`` or
  where the model's context ends (then ``truncated``);
* computes, in a forward hook on the model's raw output logits, the entropy of
  the full next-token distribution and the log-probability of the token the
  model then emitted (under the model's own distribution, before any sampling
  warpers), one ``[batch, vocab]`` row at a time: no ``[tokens, vocab]`` array;
* records attention with :mod:`peekaboo.capture` (switchable off);
* on ``torch.OutOfMemoryError`` splits the batch in halves and retries each,
  recording the number of splits per trace; a single trace that still does
  not fit fails with the reason.

Results are plain numpy arrays per trace (:class:`TraceResult`), which
:mod:`peekaboo.tracestore` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import capture, geometry, prompting
from .logs import get_logger
from .seeding import derive_seed

log = get_logger("generate")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    @classmethod
    def from_config(cls, generation: Mapping[str, Any] | None) -> "GenerationSettings":
        known = {k: v for k, v in dict(generation or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class TraceRequest:
    """One trace to generate: a question about (possibly masked) images."""

    trace_id: str
    question: str
    images: list[Any] = field(default_factory=list)  # paths or PIL images, the masked one first
    regions: list[Mapping[str, Any]] = field(default_factory=list)  # {box: [x0,y0,x1,y1], image: k}
    meta: dict[str, Any] = field(default_factory=dict)  # sidecar columns (model, dataset, item_id, ...)
    item: Mapping[str, Any] | None = None  # the items-table row, for scoring


@dataclass
class TraceResult:
    request: TraceRequest
    status: str = "ok"
    error: str | None = None
    token_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    logprob: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    entropy: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    image_attn: np.ndarray | None = None  # [n, map_layer, P]
    image_attn_heads: np.ndarray | None = None  # [n, map_layer, H, P]
    image_mass: np.ndarray | None = None  # [n, L, H]
    region_mass: np.ndarray | None = None  # [n, L, R]
    patch_box: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    patch_image: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    n_regions: int = 0
    text: str = ""
    token_char_start: list[int] = field(default_factory=list)
    token_char_end: list[int] = field(default_factory=list)
    truncated: bool = False
    retries: int = 0
    answer_text: str | None = None
    correct: bool | None = None
    abstained: bool = False

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @classmethod
    def failed(cls, request: TraceRequest, reason: str, retries: int = 0) -> "TraceResult":
        return cls(request=request, status="failed", error=reason, retries=retries,
                   n_regions=len(request.regions))


@dataclass
class _Prepared:
    request: TraceRequest
    encoding: dict[str, torch.Tensor]
    images: geometry.PromptImages
    weights: np.ndarray  # [P, R]
    budget: int  # new tokens this trace may generate


class _LogitStats:
    """Forward hook on the model: entropy and emitted-token log-probability from the raw logits."""

    def __init__(self) -> None:
        self.entropy: list[torch.Tensor] = []
        self.logprob: list[torch.Tensor] = []
        self._prev: torch.Tensor | None = None

    def __call__(self, module, args, kwargs, output) -> None:
        logits = output.logits[:, -1].float()
        if self._prev is not None:
            emitted = kwargs.get("input_ids")
            if emitted is None:  # pragma: no cover - the supported families decode from input_ids
                raise RuntimeError("decode step without input_ids: cannot tell the emitted token")
            self.logprob.append(self._gather(emitted[:, -1]))
        logp = torch.log_softmax(logits, dim=-1)
        # entr(p) = -p log p, and 0 where the model rules a token out entirely (p = 0);
        # kept on the device until the end: a host copy per token would stall the GPU queue each token
        self.entropy.append(torch.special.entr(logp.exp()).sum(-1))
        self._prev = logp

    def _gather(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._prev.gather(1, tokens.to(self._prev.device).long()[:, None])[:, 0]

    def finish(self, generated: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """[B, G] entropy and log-probability for the G generated columns."""
        n = generated.shape[1]
        if len(self.logprob) < n and self._prev is not None:
            self.logprob.append(self._gather(generated[:, len(self.logprob)]))
        if not n:
            empty = np.zeros((generated.shape[0], 0), np.float32)
            return empty, empty.copy()
        entropy = torch.stack(self.entropy[:n], 1).cpu().numpy()
        logprob = torch.stack(self.logprob[:n], 1).cpu().numpy()
        return entropy.astype(np.float32), logprob.astype(np.float32)


class _RowBudget:
    """Stopping criterion: row b stops after ``budget[b]`` new tokens (its context limit)."""

    def __init__(self, prompt_len: int, budget: Sequence[int]):
        self.prompt_len = prompt_len
        self.budget = torch.as_tensor(list(budget), dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids.shape[1] - self.prompt_len
        if self.budget.device != input_ids.device:  # moved once, not a host-to-device copy per token
            self.budget = self.budget.to(input_ids.device)
        return self.budget <= new


def load_image(source: Any):
    """An RGB PIL image from a path or image; errors name the file."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    with Image.open(source) as img:
        img.load()
        return img.convert("RGB")


def decode_with_offsets(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[int], list[int]]:
    """Text of the tokens (special tokens dropped) and each token's [start, end) character span in it."""
    ids = [int(t) for t in token_ids]
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    pieces = [tokenizer.decode([t], skip_special_tokens=True, clean_up_tokenization_spaces=False) for t in ids]
    if "".join(pieces) == text:
        ends = np.cumsum([len(p) for p in pieces]).tolist()
        starts = [0] + ends[:-1]
        return text, [int(s) for s in starts], [int(e) for e in ends]
    # byte-level tokens that split a character: decode growing prefixes (kept monotone)
    starts, ends, last = [], [], 0
    for k in range(len(ids)):
        prefix = tokenizer.decode(ids[: k + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        end = min(len(text), max(last, len(prefix) if text.startswith(prefix[:-1]) else last))
        starts.append(last)
        ends.append(end)
        last = end
    if ends:
        ends[-1] = len(text)
    return text, starts, ends


class TraceGenerator:
    """Generate traces for batches of requests with one loaded model (see the module doc)."""

    def __init__(
        self,
        model,
        processor,
        family: str,
        settings: GenerationSettings | None = None,
        *,
        thinking: bool = False,
        system_prompt: str | None = None,
        map_layers: str | Sequence[int] = "mean",
        keep_heads: bool = False,
        capture_attention: bool = True,
        score: Callable[[TraceRequest, str], Any] | None = None,
        context_length: int | None = None,
    ):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.family = family
        self.settings = settings or GenerationSettings()
        self.thinking = thinking
        self.system_prompt = system_prompt
        self.grid = geometry.token_grid(processor, family)
        self.image_token_id = int(model.config.image_token_id)
        lm_config = capture.language_model(model).config
        self.n_layers = int(lm_config.num_hidden_layers)
        self.n_heads = int(lm_config.num_attention_heads)
        self.context_length = int(context_length or lm_config.max_position_embeddings)
        gen_cfg = model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
        pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))
        self.recorder = capture.Recorder(model, map_layers, keep_heads) if capture_attention else None
        self.map_layers = capture.resolve_map_layers(map_layers, self.n_layers)
        self.keep_heads = keep_heads
        self.score = score

    # -- preparing ------------------------------------------------------------
    def prompt_text(self, request: TraceRequest) -> str:
        msgs = prompting.messages(request.question, len(request.images), self.system_prompt)
        return prompting.render(self.processor, msgs, thinking=self.thinking)

    def prepare(self, request: TraceRequest) -> _Prepared | TraceResult:
        """Images loaded, prompt encoded, image tokens located; or a failed result with the reason."""
        images, sizes = [], []
        for k, source in enumerate(request.images):
            try:
                img = load_image(source)
            except Exception as exc:  # any unreadable image fails this trace only
                return TraceResult.failed(request, f"image {k} ({source}) could not be loaded: {exc}")
            images.append(img)
            sizes.append(img.size)
        try:
            text = self.prompt_text(request)
            enc = self.processor(text=[text], images=images or None, return_tensors="pt")
        except Exception as exc:
            return TraceResult.failed(request, f"the processor rejected the prompt or image: {exc}")
        prompt_len = int(enc["input_ids"].shape[1])
        room = self.context_length - prompt_len
        if room < 1:
            return TraceResult.failed(
                request, f"prompt of {prompt_len} tokens does not fit the model's context of {self.context_length}"
            )
        try:
            located = geometry.prompt_images(
                enc["input_ids"][0].numpy(), self.image_token_id, enc.get("image_grid_thw", np.zeros((0, 3))),
                sizes, self.grid, row=request.trace_id)
        except geometry.GeometryError as exc:
            return TraceResult.failed(request, str(exc))
        boxes = [list(map(float, r["box"])) for r in request.regions]
        region_image = [int(r.get("image", 0) or 0) for r in request.regions]
        weights = (geometry.region_weights(located.boxes, np.asarray(boxes).reshape(-1, 4), located.image,
                                           region_image) if boxes else np.zeros((len(located), 0), np.float32))
        return _Prepared(request, dict(enc), located, weights.reshape(len(located), len(boxes)),
                         budget=min(self.settings.max_new_tokens, room))

    def collate(self, prepared: Sequence[_Prepared]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Left-padded batch inputs and each row's padding offset."""
        lengths = [int(p.encoding["input_ids"].shape[1]) for p in prepared]
        S = max(lengths)
        padded: dict[str, list[torch.Tensor]] = {}
        stacked: dict[str, list[torch.Tensor]] = {}
        for p, n in zip(prepared, lengths):
            for key, value in p.encoding.items():
                if key in ("pixel_values", "image_grid_thw"):
                    stacked.setdefault(key, []).append(value)
                elif key in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"):
                    fill = self.pad_id if key == "input_ids" else 0
                    pad = torch.full((1, S - n), fill, dtype=value.dtype)
                    padded.setdefault(key, []).append(torch.cat([pad, value], 1))
                else:
                    raise ValueError(f"processor output '{key}' is not handled by the batch collation")
        batch = {k: torch.cat(v, 0) for k, v in padded.items()}
        batch.update({k: torch.cat(v, 0) for k, v in stacked.items()})
        return batch, [S - n for n in lengths]

    # -- generating -----------------------------------------------------------
    def generate(self, requests: Sequence[TraceRequest]) -> list[TraceResult]:
        """Results for ``requests`` in their order (failed ones included)."""
        results: list[TraceResult | None] = [None] * len(requests)
        ready: list[tuple[int, _Prepared]] = []
        for i, request in enumerate(requests):
            prepared = self.prepare(request)
            if isinstance(prepared, TraceResult):
                log.warning("trace %s failed: %s", request.trace_id, prepared.error)
                results[i] = prepared
            else:
                ready.append((i, prepared))
        for (i, _), result in zip(ready, self._generate_split([p for _, p in ready], retries=0)):
            results[i] = result
        return results  # type: ignore[return-value]

    def _generate_split(self, prepared: list[_Prepared], retries: int) -> list[TraceResult]:
        if not prepared:
            return []
        try:
            return self._generate_batch(prepared, retries)
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(prepared) == 1:
                reason = f"out of memory on a batch of one: {str(exc).splitlines()[0] if str(exc) else 'OOM'}"
                log.warning("trace %s failed: %s", prepared[0].request.trace_id, reason)
                return [TraceResult.failed(prepared[0].request, reason, retries=retries + 1)]
            half = (len(prepared) + 1) // 2
            log.warning("out of memory on a batch of %d: splitting into %d + %d", len(prepared), half,
                        len(prepared) - half)
            return self._generate_split(prepared[:half], retries + 1) + \
                self._generate_split(prepared[half:], retries + 1)

    def _generate_batch(self, prepared: list[_Prepared], retries: int) -> list[TraceResult]:
        batch, offsets = self.collate(prepared)
        device = self.model.device
        batch = {k: v.to(device) for k, v in batch.items()}
        S = int(batch["input_ids"].shape[1])
        budgets = [p.budget for p in prepared]
        images = capture.BatchImages.from_rows(
            [p.images.positions + off for p, off in zip(prepared, offsets)], [p.weights for p in prepared])
        s = self.settings
        kwargs: dict[str, Any] = dict(max_new_tokens=max(budgets), do_sample=s.do_sample,
                                      pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids))
        if s.do_sample:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
            torch.manual_seed(derive_seed(s.seed, "generate", prepared[0].request.trace_id) % (2**63 - 1))
        else:
            # greedy: neutral values so a checkpoint's sampling defaults do not warn or apply
            kwargs.update(temperature=None, top_p=None, top_k=None)
        from transformers import StoppingCriteriaList

        kwargs["stopping_criteria"] = StoppingCriteriaList([_RowBudget(S, budgets)])
        stats = _LogitStats()
        handle = self.model.register_forward_hook(stats, with_kwargs=True)
        try:
            with torch.inference_mode():
                if self.recorder is not None:
                    with capture.capturing(self.model, self.recorder, images):
                        out = self.model.generate(**batch, **kwargs)
                    captured = self.recorder.stacked()
                else:
                    out = self.model.generate(**batch, **kwargs)
                    captured = {}
        finally:
            handle.remove()
        generated = out[:, S:].cpu()
        entropy, logprob = stats.finish(generated)
        return [self._result(p, r, generated[r], entropy[r], logprob[r], captured, retries)
                for r, p in enumerate(prepared)]

    def _result(self, p: _Prepared, row: int, generated: torch.Tensor, entropy, logprob, captured, retries):
        ids = generated.numpy().astype(np.int64)
        n = min(len(ids), p.budget)
        stop = next((k for k in range(n) if int(ids[k]) in self.eos_ids), None)
        n_tokens = n if stop is None else stop + 1
        token_ids = ids[:n_tokens].astype(np.int32)
        text, starts, ends = decode_with_offsets(self.tokenizer, token_ids)
        P = len(p.images)
        result = TraceResult(
            request=p.request,
            token_ids=token_ids,
            logprob=np.asarray(logprob[:n_tokens], np.float32),
            entropy=np.asarray(entropy[:n_tokens], np.float32),
            patch_box=p.images.boxes,
            patch_image=p.images.image,
            n_regions=p.weights.shape[1],
            text=text,
            token_char_start=starts,
            token_char_end=ends,
            truncated=stop is None,
            retries=retries,
        )
        if captured:
            R = p.weights.shape[1]
            result.image_attn = captured["image_attn"][row, :n_tokens, :, :P].numpy()
            result.image_mass = captured["image_mass"][row, :n_tokens].numpy()
            result.region_mass = captured["region_mass"][row, :n_tokens, :, :R].numpy()
            if "image_attn_heads" in captured:
                result.image_attn_heads = captured["image_attn_heads"][row, :n_tokens, :, :, :P].numpy()
        if self.score is not None:
            try:
                scored = self.score(p.request, text)
                result.answer_text, result.correct = scored.answer_text, scored.correct
                result.abstained = bool(scored.abstained)
            except Exception as exc:  # a scoring bug must not lose the trace
                log.warning("trace %s could not be scored: %s", p.request.trace_id, exc)
        return result


def shard_requests(
    items,
    masks,
    shard: int,
    shard_size: int,
    model_name: str,
    dataset: str,
    results_dir: str | Path,
) -> list[TraceRequest]:
    """The requests of shard ``shard``: mask rows of items ``[shard*size, (shard+1)*size)`` in items order."""
    results_dir = Path(results_dir)
    chosen = items.iloc[shard * shard_size:(shard + 1) * shard_size]
    by_item = {item_id: group for item_id, group in masks.groupby("item_id", sort=False)}
    requests = []
    for _, item in chosen.iterrows():
        regions = [{"label": r.get("label"), "box": [float(v) for v in r["box"]], "image": int(r.get("image") or 0)}
                   for r in (item["regions"] if item["regions"] is not None else [])]
        item_row = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in item.items()}
        rows = by_item.get(item["item_id"])
        if rows is None:
            log.warning("item %s has no mask rows (not even base): skipped", item["item_id"])
            continue
        for _, m in rows.iterrows():
            images = list(m["images"]) if m["images"] is not None and len(m["images"]) else (
                [m["image"]] if isinstance(m["image"], str) and m["image"] else [])
            requests.append(TraceRequest(
                trace_id=f"{model_name}|{m['mask_id']}",
                question=item["question"],
                images=[results_dir / im for im in images],
                regions=regions,
                meta={"model": model_name, "dataset": dataset, "item_id": item["item_id"],
                      "mask_id": m["mask_id"], "variant": m["variant"], "fill": m["fill"]},
                item=item_row,
            ))
    return requests


def plan_batches(requests: Sequence[TraceRequest], batch_size: int) -> list[list[TraceRequest]]:
    """Fixed batches in shard order: the unit of resume, so a re-run batches exactly the same way."""
    size = max(1, int(batch_size))
    return [list(requests[i:i + size]) for i in range(0, len(requests), size)]
