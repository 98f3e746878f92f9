"""Trace generation, first step: generate the tokens (the replay that captures is :mod:`peekaboo.trace_replay`).

One :class:`TraceGenerator` per (model, shard).

**Generating** (:meth:`TraceGenerator.generate_ids`), per batch of requests:

* loads the images and builds the prompt through the model's chat template
  (:mod:`peekaboo.prompting`, shared with reference-model training); a request
  whose image cannot be read or processed, or whose prompt does not fit the
  model's context, fails with the reason, and the rest of the batch goes on;
* collates the prompts with left padding and runs transformers' ``generate``
  with plain SDPA attention, nothing recorded: greedy unless
  ``generation.do_sample`` (then seeded from ``generation.seed`` and the
  batch's first trace id); each row stops at a stop token, at
  ``max_new_tokens`` or where the model's context ends (then ``truncated``);
  with ``generation.compile`` on CUDA, a static cache and transformers'
  ``torch.compile`` of the decoding step;
* on ``torch.OutOfMemoryError`` splits the batch in halves and retries each,
  recording the number of splits; a single request that still does not fit
  fails with the reason.

It gives one :class:`peekaboo.generations.Generation` per request: the token
ids (stop token included), their text and the finish reason, which is a line
of a generations file.

**Replaying** is :class:`peekaboo.trace_replay.TraceReplayer`, a
``TraceGenerator`` that also replays generations (made here or imported from
any engine) in one teacher-forced forward pass per batch and captures. It
lives apart so that this module, and with it the ``generate`` stage's code
inputs, holds neither the replay, the capture code nor the trace store:
editing them re-runs the ``traces`` stage, never the decode-bound generation.

Batches (:func:`plan_batches`) are sorted by prompt length so that rows of a
batch pad little; the store keeps the shard's order. Results are plain numpy
arrays per trace (:class:`TraceResult`), which :mod:`peekaboo.tracestore`
writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import geometry, prompting, schema
from .generations import Generation
from .logs import get_logger
from .models.loading import language_model
from .seeding import derive_seed

log = get_logger("generate")


# the schema's defaults of a model's generation entry: the one source of them
_DEFAULTS = schema.definition("generation")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = _DEFAULTS["max_new_tokens"]
    do_sample: bool = _DEFAULTS["do_sample"]
    temperature: float = _DEFAULTS["temperature"]
    top_p: float = _DEFAULTS["top_p"]
    top_k: int = _DEFAULTS["top_k"]
    seed: int = _DEFAULTS["seed"]
    compile: bool = _DEFAULTS["compile"]  # static cache + torch.compile of decoding, CUDA only

    @classmethod
    def from_config(cls, generation: Mapping[str, Any] | None) -> "GenerationSettings":
        """Settings from a model's ``generation`` entry, checked against the schema (absent keys: its defaults)."""
        return cls(**schema.definition("generation", generation, where="generation"))

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

    @property
    def generation_id(self) -> str:
        """The request's id in a generations file: its mask id (the same for every model), else the trace id."""
        return str(self.meta.get("mask_id") or self.trace_id)


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
    # largest |replay - engine| log-probability over the trace's tokens, where the engine gave its own
    engine_logprob_diff: float | None = None

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
    thinking_open: bool = False  # the prompt ends inside an open thinking block (the chat template opened it)

    @property
    def prompt_len(self) -> int:
        return int(self.encoding["input_ids"].shape[1])


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


def prompt_text(processor, request: TraceRequest, thinking: bool, system_prompt: str | None) -> str:
    """The request's prompt through the model's chat template (``peekaboo.prompting``)."""
    msgs = prompting.messages(request.question, len(request.images), system_prompt)
    return prompting.render(processor, msgs, thinking=thinking)


def encode_prompt(processor, request: TraceRequest, thinking: bool, system_prompt: str | None):
    """``(prompt text, the processor's encoding, image sizes)`` of a request, or the reason it has none.

    The one place a prompt becomes token ids: the replay, the transformers
    engine and the prompt check of another engine's ids
    (``peekaboo.engines``) all read these.
    """
    images, sizes = [], []
    for k, source in enumerate(request.images):
        try:
            img = load_image(source)
        except Exception as exc:  # any unreadable image fails this trace only
            return f"image {k} ({source}) could not be loaded: {exc}"
        images.append(img)
        sizes.append(img.size)
    try:
        text = prompt_text(processor, request, thinking, system_prompt)
        enc = processor(text=[text], images=images or None, return_tensors="pt")
    except Exception as exc:
        return f"the processor rejected the prompt or image: {exc}"
    return text, enc, sizes


def decode_with_offsets(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[int], list[int]]:
    """Text of the tokens (special tokens dropped) and each token's [start, end) character span in it.

    Linear in the chain: tokens are decoded one by one, and only runs of tokens
    that split a character between them (each decodes to U+FFFD alone) are
    decoded together, each run on its own, with :func:`prefix_offsets`. A token
    that decodes cleanly is whole UTF-8, so it starts and ends on character
    boundaries and a run never needs its neighbours. Should the pieces not add
    up to the text (a tokenizer whose decoding is not piecewise), the whole
    chain goes through :func:`prefix_offsets`.
    """
    ids = [int(t) for t in token_ids]

    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    text = decode(ids)
    pieces = [decode([t]) for t in ids]
    starts, ends, parts, pos, k = [], [], [], 0, 0
    while k < len(ids):
        if "\ufffd" not in pieces[k]:
            starts.append(pos)
            pos += len(pieces[k])
            ends.append(pos)
            parts.append(pieces[k])
            k += 1
            continue
        end = k
        while end < len(ids) and "\ufffd" in pieces[end]:
            end += 1
        run = decode(ids[k:end])
        run_starts, run_ends = prefix_offsets(decode, ids[k:end], run)
        starts += [pos + x for x in run_starts]
        ends += [pos + x for x in run_ends]
        pos += len(run)
        parts.append(run)
        k = end
    if "".join(parts) == text:
        return text, starts, ends
    return (text, *prefix_offsets(decode, ids, text))


def prefix_offsets(decode: Callable[[list[int]], str], ids: list[int], text: str) -> tuple[list[int], list[int]]:
    """Each token's span in ``text`` (the decoding of ``ids``) from the decodings of growing prefixes, kept
    monotone: a character split over tokens belongs to the token where it starts. Quadratic in ``ids``."""
    starts, ends, last = [], [], 0
    for k in range(len(ids)):
        prefix = decode(ids[: k + 1])
        end = min(len(text), max(last, len(prefix) if text.startswith(prefix[:-1]) else last))
        starts.append(last)
        ends.append(end)
        last = end
    if ends:
        ends[-1] = len(text)
    return starts, ends


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class TraceGenerator:
    """Generate token ids for batches of requests (see the module doc; the replay is
    :class:`peekaboo.trace_replay.TraceReplayer`).

    ``static_cache``: None follows
    ``settings.compile`` (a static cache, which transformers compiles, on CUDA;
    on another device the switch is left unused with a log line); True or
    False force it (tests, benchmarks).
    """

    def __init__(
        self,
        model,
        processor,
        family: str,
        settings: GenerationSettings | None = None,
        *,
        thinking: bool = False,
        system_prompt: str | None = None,
        context_length: int | None = None,
        static_cache: bool | None = None,
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
        lm_config = language_model(model).config
        self.n_layers = int(lm_config.num_hidden_layers)
        self.n_heads = int(lm_config.num_attention_heads)
        self.context_length = int(context_length or lm_config.max_position_embeddings)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        gen_cfg = model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
        pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))
        if static_cache is None:
            on_cuda = model.device.type == "cuda"
            if self.settings.compile and not on_cuda:
                log.info("generation.compile (static cache + torch.compile) is used on CUDA only: generating on %s "
                         "with the dynamic cache", model.device)
            static_cache = self.settings.compile and on_cuda
        self.static_cache = bool(static_cache)

    # -- preparing ------------------------------------------------------------
    def prompt_text(self, request: TraceRequest) -> str:
        return prompt_text(self.processor, request, self.thinking, self.system_prompt)

    @staticmethod
    def opens_thinking(prompt: str) -> bool:
        """Whether a rendered prompt ends inside an open thinking block (``prompting.thinking_open``)."""
        return prompting.thinking_open(prompt)

    def prepare(self, request: TraceRequest) -> _Prepared | TraceResult:
        """Images loaded, prompt encoded, image tokens located; or a failed result with the reason."""
        encoded = encode_prompt(self.processor, request, self.thinking, self.system_prompt)
        if isinstance(encoded, str):
            return TraceResult.failed(request, encoded)
        text, enc, sizes = encoded
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
                         budget=min(self.settings.max_new_tokens, room), thinking_open=self.opens_thinking(text))

    def prompt_lengths(self, requests: Sequence[TraceRequest]) -> list[int]:
        """Each request's prompt length in tokens (0 where it cannot be prepared: it fails at once anyway)."""
        out = []
        for request in requests:
            prepared = self.prepare(request)
            out.append(0 if isinstance(prepared, TraceResult) else prepared.prompt_len)
        return out

    def collate(self, prepared: Sequence[_Prepared]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Left-padded batch inputs and each row's padding offset."""
        lengths = [p.prompt_len for p in prepared]
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

    def _prepare_all(self, requests: Sequence[TraceRequest]) -> tuple[list[TraceResult | None],
                                                                      list[tuple[int, _Prepared]]]:
        failed: list[TraceResult | None] = [None] * len(requests)
        ready: list[tuple[int, _Prepared]] = []
        for i, request in enumerate(requests):
            prepared = self.prepare(request)
            if isinstance(prepared, TraceResult):
                log.warning("trace %s failed: %s", request.trace_id, prepared.error)
                failed[i] = prepared
            else:
                ready.append((i, prepared))
        return failed, ready

    # -- failures ----------------------------------------------------------------
    def _split_on_failure(self, items: list, run: Callable[[list, int], list], fail: Callable[[Any, str, int], Any],
                      retries: int = 0) -> list:
        """``run(items, retries)``; when it fails, halves are retried alone, and a single item that still fails
        fails alone (``fail(item, reason, retries)``): one bad trace never costs the batch or the shard.

        Out of memory is the usual cause (the split counts as a retry); any
        other error (a request the model or processor cannot take) is split
        the same way, so that the trace it belongs to fails with the reason and
        the others of its batch go on.
        """
        if not items:
            return []
        try:
            return run(items, retries)
        except torch.OutOfMemoryError as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(items) == 1:
                return [fail(items[0], f"out of memory on a batch of one: {_first_line(exc)}", retries + 1)]
            half = (len(items) + 1) // 2
            log.warning("out of memory on a batch of %d: splitting into %d + %d", len(items), half, len(items) - half)
            return (self._split_on_failure(items[:half], run, fail, retries + 1)
                    + self._split_on_failure(items[half:], run, fail, retries + 1))
        except Exception as exc:  # noqa: BLE001 - any failure of one request must stay that request's
            if len(items) == 1:
                return [fail(items[0], f"{type(exc).__name__}: {_first_line(exc)}", retries)]
            half = (len(items) + 1) // 2
            log.warning("a batch of %d failed (%s: %s): splitting into %d + %d to find the trace at fault",
                        len(items), type(exc).__name__, _first_line(exc), half, len(items) - half)
            return (self._split_on_failure(items[:half], run, fail, retries)
                    + self._split_on_failure(items[half:], run, fail, retries))

    # -- generating -----------------------------------------------------------
    def generate_ids(self, requests: Sequence[TraceRequest]) -> list[Generation]:
        """One generation per request, in their order (failed ones with the reason): a generations file's lines."""
        failed, ready = self._prepare_all(requests)
        out: list[Generation | None] = [None if f is None else Generation(requests[i].generation_id, error=f.error)
                                        for i, f in enumerate(failed)]
        for (i, _), g in zip(ready, self._generate_split([p for _, p in ready])):
            out[i] = g
        return out  # type: ignore[return-value]

    def _generate_split(self, prepared: list[_Prepared]) -> list[Generation]:
        def fail(p: _Prepared, reason: str, retries: int) -> Generation:
            log.warning("trace %s failed: %s", p.request.trace_id, reason)
            return Generation(p.request.generation_id, error=reason, retries=retries)

        return self._split_on_failure(prepared, self._generate_batch, fail)

    def _generate_batch(self, prepared: list[_Prepared], retries: int) -> list[Generation]:
        batch, _ = self.collate(prepared)
        device = self.model.device
        batch = {k: v.to(device) for k, v in batch.items()}
        S = int(batch["input_ids"].shape[1])
        budgets = [p.budget for p in prepared]
        s = self.settings
        kwargs: dict[str, Any] = dict(max_new_tokens=max(budgets), do_sample=s.do_sample,
                                      pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids))
        if s.do_sample:
            kwargs.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
            torch.manual_seed(derive_seed(s.seed, "generate", prepared[0].request.trace_id) % (2**63 - 1))
        else:
            # greedy: neutral values so a checkpoint's sampling defaults do not warn or apply
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.static_cache:
            kwargs["cache_implementation"] = "static"  # transformers compiles the decoding step for it on CUDA
        from transformers import StoppingCriteriaList

        kwargs["stopping_criteria"] = StoppingCriteriaList([_RowBudget(S, budgets)])
        with torch.inference_mode():
            out = self.model.generate(**batch, **kwargs)
        generated = out[:, S:].cpu().numpy().astype(np.int64)
        return [self._generation(p, generated[r], retries) for r, p in enumerate(prepared)]

    def _generation(self, p: _Prepared, ids: np.ndarray, retries: int) -> Generation:
        n = min(len(ids), p.budget)
        stop = next((k for k in range(n) if int(ids[k]) in self.eos_ids), None)
        token_ids = ids[: n if stop is None else stop + 1]
        text = self.tokenizer.decode(token_ids.tolist(), skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)
        return Generation(p.request.generation_id, token_ids=tuple(int(t) for t in token_ids), text=text,
                          finish_reason="length" if stop is None else "stop", retries=retries)

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


def plan_batches(requests: Sequence[TraceRequest], batch_size: int,
                 prompt_lengths: Sequence[int] | None = None) -> list[list[TraceRequest]]:
    """Fixed batches, the unit of resume, so a re-run batches exactly the same way.

    With ``prompt_lengths`` the requests are sorted by prompt length first
    (stable: equal lengths keep the shard's order), so that a batch's rows pad
    little; without, batches follow the shard's order.
    """
    size = max(1, int(batch_size))
    order = list(range(len(requests)))
    if prompt_lengths is not None:
        if len(prompt_lengths) != len(requests):
            raise ValueError(f"{len(prompt_lengths)} prompt lengths for {len(requests)} requests")
        order.sort(key=lambda i: (int(prompt_lengths[i]), i))
    ordered = [requests[i] for i in order]
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def write_generations(generator: TraceGenerator, batches: Sequence[Sequence[TraceRequest]], path: str | Path, *,
                      order: Sequence[TraceRequest] | None = None,
                      fingerprint: Mapping[str, Any] | None = None) -> Path:
    """Generate the token ids of every batch into a generations file, resumably (a killed run goes on from the
    last finished batch); the file's lines follow ``order`` (default: the batches')."""
    from .generations import GenerationsWriter

    writer = GenerationsWriter(path, [[r.generation_id for r in b] for b in batches], fingerprint,
                               order=None if order is None else [r.generation_id for r in order])
    done = writer.start()
    for k, batch in enumerate(batches):
        if k not in done:
            writer.write_batch(k, generator.generate_ids(batch))
    return writer.finalize()


@dataclass
class ShardSetup:
    """One (model, dataset, shard) ready to run: its requests in shard order, the planned batches (sorted by
    prompt length) and the generator with the model loaded."""

    requests: list[TraceRequest]
    batches: list[list[TraceRequest]]
    generator: TraceGenerator
    family: str
    info: Any  # peekaboo.models.loading.ModelInfo
    processor: Any
    known_ids: list[str]  # every mask id of the dataset: a generations line with another id is unknown
    n_items: int


def setup_shard(
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
    device: str | None = None,
    make_generator: Callable[..., TraceGenerator] | None = None,
) -> ShardSetup:
    """Load the model and plan the shard's batches, as both generating and replaying a shard need it.

    ``model_spec`` and ``dataset_spec`` are config entries (absent keys take
    the schema's defaults). ``make_generator`` builds the generator from
    ``(model, processor, family, settings, thinking=, system_prompt=)``:
    :class:`TraceGenerator` by default; the replay passes its
    ``peekaboo.trace_replay.TraceReplayer`` with what it captures and its
    scorer (``peekaboo.trace_replay.setup_shard``). This module imports neither
    the replay, the capture code, the store nor a scorer, so that editing them
    re-runs neither the generate stage nor the boxes stage (which uses the
    generator too).
    """
    model_spec = schema.definition("model", model_spec, where=f"models.{model_name}")
    dataset_spec = schema.definition("dataset", dataset_spec, where=f"datasets.{dataset}")
    from . import tables
    from .models.loading import load_model

    items = tables.read_table(items_path)
    masks = tables.read_table(masks_path)
    shard_size = int(dataset_spec["shard_size"])
    requests = shard_requests(items, masks, shard, shard_size, model_name, dataset, results_dir)
    model, processor, family, info = load_model(model_spec, model_path, device=device, name=model_name)
    generator = (make_generator or TraceGenerator)(
        model, processor, family, GenerationSettings.from_config(model_spec["generation"]),
        thinking=bool(model_spec["thinking"]),
        system_prompt=model_spec["system_prompt"],
    )
    batches = plan_batches(requests, int(model_spec["batch_size"]), generator.prompt_lengths(requests))
    n_items = len(items.iloc[shard * shard_size:(shard + 1) * shard_size])
    log.info("%s/%s shard %d: %d traces from %d items in %d batches (sorted by prompt length)", model_name, dataset,
             shard, len(requests), n_items, len(batches))
    return ShardSetup(requests, batches, generator, family, info, processor, [str(m) for m in masks["mask_id"]],
                      n_items)


def generate_shard(setup: ShardSetup, path: str | Path, fingerprint: Mapping[str, Any] | None = None) -> Path:
    """Generate a shard's token ids into a generations file (lines in shard order), resumably per batch."""
    return write_generations(setup.generator, setup.batches, path, order=setup.requests, fingerprint=fingerprint)
