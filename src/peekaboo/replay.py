"""Teacher-forced capture: one forward pass over prompt + generated tokens yields every recorded row.

Attention is causal: the attention row of generated token ``t`` (the query row
at the position that produced it) depends only on the prompt and the tokens
before ``t``. So a single forward pass over the prompt and the generated
tokens, the way a prefill runs, gives exactly the rows that recording during
decoding would give, at prefill speed, and it does not care which engine
generated the tokens.

``Replayer.run`` makes that pass over a batch (left padding as in
``TraceGenerator.collate``; rows with fewer generated tokens padded on the
right, which no earlier query row can see). The language model's attention is
switched to ``peekaboo_replay``, an attention function registered with
transformers' ``AttentionInterface`` (and SDPA's mask builder under the same
name), which

* computes the layer output by calling transformers' SDPA attention function
  with the unchanged arguments, so hidden states are those of a plain SDPA
  forward pass;
* for the query rows that produced generated tokens (the last prompt position
  through the second-to-last generated token), chunk of rows by chunk of rows,
  computes ``q k^T * scale + mask`` in float32 over the keys up to the chunk's
  last row, each row's log-normaliser over all those keys, and keeps only the
  image-token columns, ``exp(score - lognormaliser)``: per layer the image mass
  per head and the head-mean region masses, for the kept map layers the
  head-mean map (and per head with ``keep_heads``). Grouped-query attention is
  handled by grouping query heads over their key head (no repeated keys). The
  ``[query, key]`` scores exist for one chunk of rows at a time, never for the
  whole sequence and all heads at once.

Entropy of the full next-token distribution and the log-probability of the
token that followed come from the same pass: the final hidden states of the
captured rows go through the LM head in chunks of positions, so no
``[tokens, vocab]`` float32 array of the whole chain is made.

``chunk_mb`` bounds the float32 working set of one chunk (scores and their
temporaries, or logits and log-probabilities). Layers spread over devices by a
device map work: each layer's rows are computed on its own device and moved to
the first layer's device, where the per-batch results are kept.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from . import attention_impl, schema
from .capture import BatchImages, attention_modules, resolve_map_layers
from .models.loading import language_model

REPLAY_IMPL = "peekaboo_replay"



def register() -> str:
    """Register the replay attention (and SDPA's mask builder) under ``REPLAY_IMPL``; idempotent."""
    return attention_impl.register(REPLAY_IMPL, replay_attention_forward)


@dataclass
class ReplayBatch:
    """One forward pass: model inputs over prompt + generated tokens, and which rows to record.

    ``inputs``: the collated prompt (left padding) followed by each row's
    generated tokens but its last (right padding after shorter rows), with the
    attention mask (and token-type ids) extended to match; ``first_row``: the
    query row of the last prompt position (the same for every row, prompts
    being left-padded); ``generated``: int64 [B, G], each row's generated
    tokens, padded with 0; ``lengths``: each row's number of generated tokens
    (at least 1); ``images``: where each row's image tokens are.
    """

    inputs: dict[str, torch.Tensor]
    first_row: int
    generated: torch.Tensor
    lengths: Sequence[int]
    images: BatchImages

    @property
    def n_rows(self) -> int:
        return int(max(self.lengths))


_EXTENDED = {"attention_mask": 1, "mm_token_type_ids": 0, "token_type_ids": 0}


def replay_inputs(prompt_batch: dict[str, torch.Tensor], generated: Sequence[Sequence[int]], pad_id: int,
                  images: BatchImages) -> ReplayBatch:
    """The replay batch for left-padded prompt inputs and each row's generated token ids (at least one each)."""
    lengths = [len(g) for g in generated]
    if not lengths or min(lengths) < 1:
        raise ValueError("replay needs at least one generated token per row")
    B, S = prompt_batch["input_ids"].shape
    G = max(lengths)
    gen = torch.zeros(B, G, dtype=torch.long)
    for b, ids in enumerate(generated):
        gen[b, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
    # the last generated token is never an input: no recorded row comes after it
    fed = G - 1
    inputs = {}
    for key, value in prompt_batch.items():
        if key == "input_ids":
            tail = torch.full((B, fed), pad_id, dtype=value.dtype)
            for b, n in enumerate(lengths):
                tail[b, : n - 1] = gen[b, : n - 1].to(value.dtype)
            inputs[key] = torch.cat([value, tail], 1)
        elif key in _EXTENDED:
            tail = torch.zeros(B, fed, dtype=value.dtype)
            if _EXTENDED[key]:
                for b, n in enumerate(lengths):
                    tail[b, : n - 1] = 1
            inputs[key] = torch.cat([value, tail], 1)
        elif value.ndim >= 2 and value.shape[:2] == (B, S) and key not in ("pixel_values", "image_grid_thw"):
            raise ValueError(f"prompt input '{key}' runs along the sequence and is not handled by the replay")
        else:
            inputs[key] = value
    return ReplayBatch(inputs, S - 1, gen, lengths, images)


class Replayer:
    """Teacher-forced capture with one loaded model (see the module doc).

    ``map_layers``: ``"mean"`` (one map averaged over all layers), ``"all"`` or
    a list of layer indices (negative count from the end); ``keep_heads``:
    also the per-head maps of the kept layers; ``chunk_mb``: the float32
    working set of one chunk of rows.
    """

    def __init__(self, model, map_layers: str | Sequence[int] = "mean", keep_heads: bool = False,
                 chunk_mb: float | None = None):
        self.model = model
        self.lm = language_model(model)
        self.modules = attention_modules(model)
        self.layer_of = {id(m): i for i, m in enumerate(self.modules)}
        self.n_layers = len(self.modules)
        self.n_heads = int(self.lm.config.num_attention_heads)
        self.map_mean = map_layers == "mean"
        self.map_layers = resolve_map_layers(map_layers, self.n_layers)
        self.map_slot = {layer: m for m, layer in enumerate(self.map_layers)}
        self.keep_heads = bool(keep_heads)
        if chunk_mb is None:  # the schema's default of models.<m>.replay_chunk_mb
            chunk_mb = schema.default("model", "replay_chunk_mb")
        if not chunk_mb > 0:
            raise ValueError(f"replay chunk_mb must be positive, got {chunk_mb}")
        self.chunk_bytes = float(chunk_mb) * 2**20
        self.lm_head = model.get_output_embeddings()

    def rows_per_chunk(self, bytes_per_row: float, cap: int | None = None) -> int:
        rows = max(1, int(self.chunk_bytes // max(bytes_per_row, 1.0)))
        return rows if cap is None else min(rows, cap)

    def run(self, batch: ReplayBatch) -> dict[str, np.ndarray]:
        """Per array, float32 [B, G, ...] (row ``t`` belongs to generated token ``t``; rows past a trace's length are
        padding): ``entropy``, ``logprob`` [B, G]; ``image_mass`` [B, G, L, H]; ``region_mass`` [B, G, L, R];
        ``image_attn`` [B, G, M, P]; ``image_attn_heads`` [B, G, M, H, P] with ``keep_heads``."""
        device = self.model.device
        inputs = {k: v.to(device) for k, v in batch.inputs.items()}
        state = _Pass(self, batch)
        with torch.inference_mode(), replaying(self.model, state):
            # the decoder without the LM head: logits only for the recorded rows, in chunks
            hidden = self.model.model(**inputs, use_cache=False).last_hidden_state
        if state.layers_seen != self.n_layers:
            raise RuntimeError(f"replay saw attention for {state.layers_seen} of {self.n_layers} layers: "
                               "is the replay attention set for every decoder layer?")
        with torch.inference_mode():
            entropy, logprob = self._token_stats(hidden, batch)
            out = state.finish()
        out["entropy"], out["logprob"] = entropy, logprob
        return out

    def _token_stats(self, hidden: torch.Tensor, batch: ReplayBatch) -> tuple[np.ndarray, np.ndarray]:
        """Entropy of the next-token distribution and log-probability of the token that followed, per recorded row."""
        B, G = batch.generated.shape
        vocab = int(self.lm_head.weight.shape[0])
        # logits, log-probabilities and their product: three float32 [B, rows, vocab] arrays at most
        step = self.rows_per_chunk(3 * 4 * B * vocab)
        entropy = torch.empty(B, G, dtype=torch.float32)
        logprob = torch.empty(B, G, dtype=torch.float32)
        for r0 in range(0, G, step):
            r1 = min(G, r0 + step)
            rows = hidden[:, batch.first_row + r0: batch.first_row + r1]
            logp = torch.log_softmax(self.lm_head(rows).float(), dim=-1)  # [B, c, V], raw logits
            # entr(p) = -p log p, and 0 where the model rules a token out entirely (p = 0)
            entropy[:, r0:r1] = torch.special.entr(logp.exp()).sum(-1).cpu()
            emitted = batch.generated[:, r0:r1].to(logp.device)
            logprob[:, r0:r1] = logp.gather(-1, emitted[..., None])[..., 0].cpu()
            del logp
        return entropy.numpy(), logprob.numpy()


class _Pass:
    """What one replay forward pass records, layer by layer (called from the attention function)."""

    def __init__(self, replayer: Replayer, batch: ReplayBatch):
        self.r = replayer
        self.batch = batch
        self.first_row = batch.first_row
        self.G = batch.n_rows
        B, P = batch.images.positions.shape
        R = batch.images.weights.shape[-1]
        L, H, M = replayer.n_layers, replayer.n_heads, len(replayer.map_layers)
        self.B, self.P, self.R, self.L, self.H, self.M = B, P, R, L, H, M
        self.home: torch.device | None = None  # the first layer's device: per-batch results live there
        self.layers_seen = 0
        self._masks: dict[tuple, ChunkMask] = {}  # (mask object, chunk) -> its parts, for this pass's masks
        # on the host from the start: these can be large (every kept layer's map, per-head maps); the mean map
        # is summed on the first layer's device instead
        self.image_attn = None if replayer.map_mean else torch.zeros(B, self.G, M, P, dtype=torch.float32)
        self.heads = torch.zeros(B, self.G, M, H, P, dtype=torch.float32) if replayer.keep_heads else None

    def _allocate(self, device: torch.device) -> None:
        self.home = device
        self.image_mass = torch.zeros(self.B, self.G, self.L, self.H, dtype=torch.float32, device=device)
        self.region_mass = torch.zeros(self.B, self.G, self.L, self.R, dtype=torch.float32, device=device)
        self.map_sum = (torch.zeros(self.B, self.G, self.P, dtype=torch.float32, device=device)
                        if self.r.map_mean else None)

    def layer(self, layer: int, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
              scaling: float | None) -> None:
        device = query.device
        if self.home is None:
            self._allocate(device)
        B, H, _, D = query.shape
        positions, valid, weights = self.batch.images.on(device)
        all_valid = self.batch.images.all_valid
        scale = scaling if scaling is not None else D**-0.5
        last_key = self.first_row + self.G  # keys past the last recorded row are masked for every recorded row
        # float32 scores plus softmax temporaries for one row of every batch row and head; capped so that the
        # keys a chunk computes past its own rows (masked by causality) stay few
        step = self.r.rows_per_chunk(2 * 4 * B * H * last_key, cap=MAX_CHUNK_ROWS)
        map_slot = None if self.r.map_mean else self.r.map_slot.get(layer)
        layer_map = (torch.empty(B, self.G, self.P, dtype=torch.float32, device=device)
                     if map_slot is not None else None)
        for r0 in range(0, self.G, step):
            r1 = min(self.G, r0 + step)
            start, stop = self.first_row + r0, self.first_row + r1
            probs = chunk_probs(query, key, self.chunk_mask(attention_mask, start, stop), scale, start, stop,
                                positions)  # [B, H, c, P]
            if not all_valid:  # rows with fewer image tokens point their padding at key 0
                probs = probs * valid[:, None, None, :]
            head_mean = probs.mean(1)  # [B, c, P]
            mass = probs.sum(-1).transpose(1, 2)  # [B, c, H]
            region = torch.bmm(head_mean, weights)  # [B, c, R]
            home = self.home
            self.image_mass[:, r0:r1, layer] = mass.to(home)
            self.region_mass[:, r0:r1, layer] = region.to(home)
            if self.map_sum is not None:
                self.map_sum[:, r0:r1] += head_mean.to(home)
            elif layer_map is not None:
                layer_map[:, r0:r1] = head_mean
            if self.heads is not None:
                per_head = probs.transpose(1, 2).cpu()  # [B, c, H, P]
                if self.r.map_mean:
                    self.heads[:, r0:r1, 0] += per_head
                elif map_slot is not None:
                    self.heads[:, r0:r1, map_slot] = per_head
        if layer_map is not None:
            self.image_attn[:, :, map_slot] = layer_map.cpu()
        self.layers_seen += 1

    def chunk_mask(self, attention_mask: torch.Tensor | None, start: int, stop: int) -> "ChunkMask":
        """The mask of a chunk of rows, made once per forward pass (every layer gets the same mask object)."""
        key = (id(attention_mask), start, stop)
        if key not in self._masks:
            self._masks[key] = ChunkMask.of(attention_mask, start, stop)
        return self._masks[key]

    def finish(self) -> dict[str, np.ndarray]:
        out = {"image_mass": self.image_mass.cpu().numpy(), "region_mass": self.region_mass.cpu().numpy()}
        if self.map_sum is not None:
            self.image_attn = self.map_sum.div_(self.L).cpu()[:, :, None]  # in place: no second copy on a CPU
        out["image_attn"] = self.image_attn.numpy()
        if self.heads is not None:
            if self.r.map_mean:
                self.heads /= self.L
            out["image_attn_heads"] = self.heads.numpy()
        return out


_HALF = (torch.float16, torch.bfloat16)

# rows per chunk at most: a chunk computes scores for keys up to its last row, so a row sees on average
# half a chunk of keys that causality masks; 256 rows keep that waste small next to a prompt of ~1,000 tokens
MAX_CHUNK_ROWS = 256


@dataclass
class ChunkMask:
    """The model's attention mask for a chunk of query rows ``[start, stop)`` over keys ``[0, stop)``.

    transformers' SDPA masks for these models are causal plus key padding
    (left padding of the prompt, right padding of shorter chains): every row of
    a chunk then sees the keys before the chunk alike (``key_bias``, an
    additive float32 row folded into the score matmul) and the chunk's own
    columns causally. Any other mask (sliding windows, additive or per-head
    masks) is applied in ``full``.
    """

    key_bias: torch.Tensor | None = None  # float32 [B or 1, stop]: 0 or -inf per key, the same for every row
    full: torch.Tensor | None = None  # [B or 1, 1 or H, c, stop]: bool (True = attend) or additive

    @classmethod
    def of(cls, attention_mask: torch.Tensor | None, start: int, stop: int) -> "ChunkMask":
        if attention_mask is None:  # SDPA ran causal without a mask
            return cls()
        rows = attention_mask[:, :, start:stop, :stop]
        if rows.dtype == torch.bool and rows.shape[1] == 1:
            last = rows[:, 0, -1, :]  # the chunk's last row sees every key a row of the chunk may see
            causal = (torch.arange(stop, device=rows.device)[None, :]
                      <= torch.arange(start, stop, device=rows.device)[:, None])  # [c, stop]
            if torch.equal(rows[:, 0], last[:, None, :] & causal):
                return cls(key_bias=torch.zeros(last.shape, dtype=torch.float32, device=rows.device)
                           .masked_fill_(~last, float("-inf")))
        return cls(full=rows)


def chunk_probs(query: torch.Tensor, key: torch.Tensor, mask: ChunkMask, scale: float, start: int, stop: int,
                positions: torch.Tensor) -> torch.Tensor:
    """float32 [B, H, stop - start, P]: softmax(q k^T * scale + mask) of query rows [start, stop) on the image keys.

    The scores of the chunk run over keys ``[0, stop)`` (later keys are masked
    for every row of the chunk by causality); each row's log-normaliser is
    taken over all of them, and only the image columns (``positions``, int64
    [B, P]) are exponentiated. Query heads ``h * rep .. h * rep + rep - 1``
    share key head ``h`` (repeat_kv's layout): one batched matmul per key head,
    keys not repeated, with the scale and the key bias folded in.
    """
    B, H, _, D = query.shape
    n_kv = key.shape[1]
    rep = H // n_kv
    c = stop - start
    q = query[:, :, start:stop].reshape(B * n_kv, rep * c, D)  # heads grouped by key head, then rows
    k_t = key[:, :, :stop].reshape(B * n_kv, stop, D).mT
    half = query.is_cuda and query.dtype in _HALF
    if not half:
        q, k_t = q.float(), k_t.float()
    # float32 products and sums straight from half-precision q and k: no float32 copy of the keys
    extra = {"out_dtype": torch.float32} if half else {}
    if mask.key_bias is not None:
        bias = mask.key_bias.to(q.device)[:, None, None, :].expand(B, n_kv, 1, stop).reshape(B * n_kv, 1, stop)
        scores = torch.baddbmm(bias, q, k_t, alpha=scale, **extra)
    else:
        scores = torch.bmm(q, k_t, **extra).mul_(scale)
    scores = scores.view(B, n_kv, rep, c, stop)
    if mask.full is None:  # causal inside the chunk's own columns: row i sees keys up to start + i
        ahead = torch.ones(c, c, dtype=torch.bool, device=scores.device).triu_(1)
        scores[..., start:].masked_fill_(ahead, float("-inf"))
    else:
        full = mask.full.to(scores.device)
        shape = (full.shape[0], 1, 1, c, stop) if full.shape[1] == 1 else (full.shape[0], n_kv, rep, c, stop)
        if full.dtype == torch.bool:
            scores.masked_fill_(~full.reshape(shape), float("-inf"))
        else:
            scores.add_(full.reshape(shape).float())
    lognorm = torch.logsumexp(scores, dim=-1, keepdim=True)  # [B, n_kv, rep, c, 1]
    index = positions[:, None, None, None, :].expand(B, n_kv, rep, c, positions.shape[1])
    image = torch.gather(scores, -1, index)
    del scores
    return image.sub_(lognorm).exp_().view(B, H, c, -1)


_ACTIVE: _Pass | None = None
_SDPA = None


def _sdpa():
    """transformers' SDPA attention function (looked up once: this runs for every layer)."""
    global _SDPA
    if _SDPA is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        _SDPA = sdpa_attention_forward
    return _SDPA


@contextmanager
def replaying(model, state: _Pass) -> Iterator[_Pass]:
    """Run the language model with the replay attention recording into ``state``, then restore its attention."""
    global _ACTIVE
    register()
    lm = language_model(model)
    previous = lm.config._attn_implementation
    model.set_attn_implementation({"text_config": REPLAY_IMPL})
    if lm.config._attn_implementation != REPLAY_IMPL:  # pragma: no cover - a transformers change
        raise RuntimeError("could not switch the language model to the replay attention")
    _ACTIVE = state
    try:
        yield state
    finally:
        _ACTIVE = None
        model.set_attn_implementation({"text_config": previous})


def replay_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
):
    """transformers attention function: SDPA's output, plus the recorded rows (see the module doc)."""
    output = _sdpa()(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )
    state = _ACTIVE
    if state is not None:
        layer = state.r.layer_of.get(id(module))
        if layer is not None:
            with torch.no_grad():
                state.layer(layer, query, key, attention_mask, scaling)
    return output
