"""Trace generation, second step: replay the generated tokens once and capture (:class:`TraceReplayer`).

A :class:`TraceReplayer` is a :class:`peekaboo.generate.TraceGenerator` that
also replays, per batch of requests and their generations (made by the
generator or imported from any engine through :mod:`peekaboo.generations`):
it prepares the prompts the same way, turns an imported text into the model
tokenizer's tokens, checks the ids against the vocabulary and the context (a
bad one fails that trace with the reason), and makes one teacher-forced
forward pass per batch (:mod:`peekaboo.replay`) that yields entropy,
log-probability and every attention array; out-of-memory splitting as in
generation. :meth:`TraceReplayer.generate` does both with one preparation per
request.

This half lives apart from :mod:`peekaboo.generate` so that the ``generate``
stage's code inputs hold neither the replay, the capture code
(:mod:`peekaboo.capture`) nor the store: the ``traces`` stage uses this module,
and an edit to any of them re-runs the traces, not the generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import capture, replay, schema
from . import generate
from .generate import TraceGenerator, TraceRequest, TraceResult, _Prepared, decode_with_offsets
from .generations import Generation, check_prompt
from .logs import get_logger

log = get_logger("trace_replay")


@dataclass
class _ToReplay:
    prepared: _Prepared
    token_ids: np.ndarray  # int64, at least one
    truncated: bool
    retries: int  # splits so far (generation)
    engine_logprobs: np.ndarray | None = None  # the engine's log-probabilities of the tokens, where it gave them


class TraceReplayer(TraceGenerator):
    """Generate token ids, and replay them to capture (see the module doc).

    ``map_layers`` and ``keep_heads``: what is captured (the ``traces``
    section); ``score``: ``(request, text, thinking_open=...) ->
    peekaboo.scores.Score``, or None to leave responses unscored.
    ``replay_chunk_mb`` bounds the replay's float32 working set per chunk of
    rows (:class:`peekaboo.replay.Replayer`). The rest as
    :class:`peekaboo.generate.TraceGenerator`.
    """

    def __init__(
        self,
        model,
        processor,
        family: str,
        settings: generate.GenerationSettings | None = None,
        *,
        map_layers: str | Sequence[int] = "mean",
        keep_heads: bool = False,
        score: Callable[..., Any] | None = None,  # (request, text, thinking_open=...) -> peekaboo.scores.Score
        replay_chunk_mb: float | None = None,  # None: the schema's default (models.<m>.replay_chunk_mb)
        **options: Any,
    ):
        super().__init__(model, processor, family, settings, **options)
        self.replayer = replay.Replayer(model, map_layers, keep_heads, chunk_mb=replay_chunk_mb)
        self.map_layers = self.replayer.map_layers
        self.keep_heads = keep_heads
        self.score = score

    # -- replaying ------------------------------------------------------------
    def replay(self, requests: Sequence[TraceRequest], generations: Sequence[Generation]) -> list[TraceResult]:
        """Results for ``requests`` from their generations (made here or imported), in the requests' order."""
        if len(requests) != len(generations):
            raise ValueError(f"{len(requests)} requests but {len(generations)} generations")
        results: list[TraceResult | None] = [None] * len(requests)
        ready: list[tuple[int, _Prepared]] = []
        for i, (request, g) in enumerate(zip(requests, generations)):
            if not g.ok:
                log.warning("trace %s failed: %s", request.trace_id, g.error)
                results[i] = TraceResult.failed(request, g.error, retries=g.retries)
                continue
            prepared = self.prepare(request)
            if isinstance(prepared, TraceResult):
                log.warning("trace %s failed: %s", request.trace_id, prepared.error)
                prepared.retries = g.retries
                results[i] = prepared
            else:
                ready.append((i, prepared))
        self._replay_ready(results, [(i, p, generations[i]) for i, p in ready])
        return results  # type: ignore[return-value]

    def generate(self, requests: Sequence[TraceRequest]) -> list[TraceResult]:
        """Generate, then replay: results for ``requests`` in their order (failed ones included)."""
        results, ready = self._prepare_all(requests)
        generated = self._generate_split([p for _, p in ready])
        todo = []
        for (i, p), g in zip(ready, generated):
            if g.ok:
                todo.append((i, p, g))
            else:
                results[i] = TraceResult.failed(p.request, g.error, retries=g.retries)
        self._replay_ready(results, todo)
        return results  # type: ignore[return-value]

    def to_replay(self, p: _Prepared, g: Generation) -> _ToReplay | str:
        """The tokens to replay for a generation, or why it cannot be replayed with this model and prompt.

        Token ids are taken as they are; a text is encoded by the model's
        tokenizer without special tokens. The finish reason says whether the
        generation was cut (``length``); without one, ids that do not end with a
        stop token were cut, and a text was not.
        """
        if g.token_ids is not None:
            ids = np.asarray(g.token_ids, dtype=np.int64)
        else:
            ids = np.asarray(self.tokenizer(g.text, add_special_tokens=False)["input_ids"], dtype=np.int64)
            if not ids.size:
                return "the text encodes to no tokens"
        if g.prompt_token_ids is not None:  # another engine's prompt: it must be the one replayed, token for token
            mismatch = check_prompt(p.encoding["input_ids"][0].tolist(), g.prompt_token_ids, self.tokenizer)
            if mismatch:
                return mismatch
        outside = np.flatnonzero((ids < 0) | (ids >= self.vocab_size))
        if outside.size:
            k = int(outside[0])
            return f"token id {int(ids[k])} at position {k} is outside the model's vocabulary of {self.vocab_size}"
        if p.prompt_len + len(ids) > self.context_length:
            source = "token ids" if g.token_ids is not None else "text"
            return (f"the generation ({source}) of {len(ids)} tokens after a prompt of {p.prompt_len} tokens does "
                    f"not fit the model's context of {self.context_length}")
        if g.finish_reason in ("stop", "length") or g.token_ids is None:
            truncated = g.finish_reason == "length"
        else:
            truncated = int(ids[-1]) not in self.eos_ids
        engine_logprobs = (np.asarray(g.logprobs, dtype=np.float64)
                           if g.logprobs is not None and g.token_ids is not None else None)
        return _ToReplay(p, ids, truncated, g.retries, engine_logprobs)

    def _replay_ready(self, results: list[TraceResult | None],
                      todo: Sequence[tuple[int, _Prepared, Generation]]) -> None:
        items: list[tuple[int, _ToReplay]] = []
        for i, p, g in todo:
            item = self.to_replay(p, g)
            if isinstance(item, str):
                log.warning("trace %s failed: %s", p.request.trace_id, item)
                results[i] = TraceResult.failed(p.request, item, retries=g.retries)
            else:
                items.append((i, item))

        def fail(item: _ToReplay, reason: str, retries: int) -> TraceResult:
            log.warning("trace %s failed: %s", item.prepared.request.trace_id, reason)
            return TraceResult.failed(item.prepared.request, reason, retries=item.retries + retries)

        for (i, _), result in zip(items, self._split_on_failure([it for _, it in items], self._replay_batch, fail)):
            results[i] = result

    def _replay_batch(self, items: list[_ToReplay], retries: int) -> list[TraceResult]:
        prepared = [it.prepared for it in items]
        batch, offsets = self.collate(prepared)
        images = capture.BatchImages.from_rows(
            [p.images.positions + off for p, off in zip(prepared, offsets)], [p.weights for p in prepared])
        arrays = self.replayer.run(replay.replay_inputs(batch, [it.token_ids for it in items], self.pad_id, images))
        return [self._result(it, r, arrays, retries) for r, it in enumerate(items)]

    def _result(self, item: _ToReplay, row: int, arrays: Mapping[str, np.ndarray], retries: int) -> TraceResult:
        p = item.prepared
        n = len(item.token_ids)
        token_ids = item.token_ids.astype(np.int32)
        text, starts, ends = decode_with_offsets(self.tokenizer, token_ids)
        P, R = len(p.images), p.weights.shape[1]
        # views into the batch's arrays: no second copy of them while the batch's results live
        result = TraceResult(
            request=p.request,
            token_ids=token_ids,
            logprob=arrays["logprob"][row, :n],
            entropy=arrays["entropy"][row, :n],
            image_attn=arrays["image_attn"][row, :n, :, :P],
            image_mass=arrays["image_mass"][row, :n],
            region_mass=arrays["region_mass"][row, :n, :, :R],
            image_attn_heads=arrays["image_attn_heads"][row, :n, :, :, :P] if "image_attn_heads" in arrays else None,
            patch_box=p.images.boxes,
            patch_image=p.images.image,
            n_regions=R,
            text=text,
            token_char_start=starts,
            token_char_end=ends,
            truncated=item.truncated,
            retries=item.retries + retries,
        )
        if item.engine_logprobs is not None and len(item.engine_logprobs) == n:
            result.engine_logprob_diff = float(np.max(np.abs(result.logprob.astype(np.float64)
                                                             - item.engine_logprobs)))
        if self.score is not None:
            try:
                # a chain that ends inside the thinking block the prompt opened has no answer: unparsed, truncated
                scored = self.score(p.request, text, thinking_open=p.thinking_open)
                result.answer_text, result.correct = scored.answer_text, scored.correct
                result.abstained = bool(scored.abstained)
                result.truncated = bool(result.truncated or scored.truncated)
            except Exception as exc:  # a scoring bug must not lose the trace
                log.warning("trace %s could not be scored: %s", p.request.trace_id, exc)
        return result


def setup_shard(
    *,
    traces_cfg: Mapping[str, Any] | None,
    scorer: Any = None,
    **shard: Any,
) -> generate.ShardSetup:
    """:func:`peekaboo.generate.setup_shard` with a :class:`TraceReplayer` as the generator.

    ``traces_cfg``: the ``traces`` section (what is captured; absent keys and
    None take the schema's defaults). ``scorer``: the dataset's scorer
    (``peekaboo.scoring.get_scorer``) when responses are to be scored, None to
    leave them unscored. ``shard``: the keyword arguments of
    :func:`peekaboo.generate.setup_shard`.
    """
    traces_cfg = schema.section("traces", traces_cfg)
    model_spec = schema.definition("model", shard["model_spec"], where=f"models.{shard['model_name']}")
    make = partial(
        TraceReplayer,
        map_layers=traces_cfg["map_layers"], keep_heads=bool(traces_cfg["keep_heads"]),
        score=None if scorer is None else lambda request, text, thinking_open=False: scorer.score(
            request.item or {}, text, thinking_open=thinking_open),
        replay_chunk_mb=float(model_spec["replay_chunk_mb"]),
    )
    return generate.setup_shard(**shard, make_generator=make)
