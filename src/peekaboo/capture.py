"""Recording attention: the layer output of SDPA, plus probabilities for the rows that matter.

``register()`` adds an attention function named ``peekaboo_capture`` to
transformers' ``AttentionInterface`` (and SDPA's mask builder under the same
name to ``AttentionMaskInterface``, so the model builds exactly the mask an
SDPA run builds). Switched on for the language model only
(:func:`capturing`), it

* computes the layer output by calling transformers' own SDPA attention
  function with the unchanged arguments, so the output, and therefore every
  generated token, is what an unrecorded SDPA run gives;
* for the one query row that produces the next token (the last prompt position
  in prefill, the single new token in decode) computes
  ``softmax(q k^T * scale + mask)`` in float32 over the whole context (image
  and text), GQA handled by grouping query heads over their shared key head
  (no repeated keys), with the mask row the model used (causal + padding; when
  SDPA ran with ``is_causal`` and no mask, the last row's causal mask is "every
  key", and padding is then absent by construction);
* keeps the image-token columns of that row: per layer the total image mass per
  head and the attention on each annotated region (each image token weighted by
  the share of its box inside the region, head mean); for the kept map layers
  the head-mean attention on every image token (optionally per head).

The ``[query, key]`` matrix is never formed for the prefill: one row per
sequence per layer. A GPU decode step is bound by kernel launches, so the
work per layer is kept to a few operations and the reductions over layers run
once per forward pass; captured steps reach the host in blocks. Image
positions are per batch row (left padding moves them), and tensors follow each
layer's device, so it works when a device map spreads the layers over several
devices.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterator, Sequence

import numpy as np
import torch

CAPTURE_IMPL = "peekaboo_capture"

_registered = False


def register() -> str:
    """Register the capture attention (and SDPA's mask builder) under ``CAPTURE_IMPL``; idempotent."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(CAPTURE_IMPL, capture_attention_forward)
        AttentionMaskInterface.register(CAPTURE_IMPL, sdpa_mask)
        _registered = True
    return CAPTURE_IMPL


def language_model(model) -> torch.nn.Module:
    """The text decoder of a VLM (``model.model.language_model`` in transformers 5)."""
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is None or not hasattr(lm, "layers"):
        raise ValueError(f"{type(model).__name__}: no language_model with decoder layers found")
    return lm


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer, in layer order."""
    return [layer.self_attn for layer in language_model(model).layers]


@dataclass
class BatchImages:
    """Where the image tokens of each batch row are, and how they weigh into regions.

    ``positions`` int64 [B, P] (index into the key axis; padded entries point
    at 0 and have ``valid`` False), ``weights`` float32 [B, P, R] (0 where
    invalid).
    """

    positions: torch.Tensor
    valid: torch.Tensor
    weights: torch.Tensor
    _by_device: dict = field(default_factory=dict, repr=False)  # device -> (positions, valid, weights) there
    _gather_indices: dict = field(default_factory=dict, repr=False)  # (device, n_kv, rep) -> gather index

    @cached_property
    def all_valid(self) -> bool:
        return bool(self.valid.all())

    @classmethod
    def from_rows(cls, positions: Sequence[np.ndarray], weights: Sequence[np.ndarray]) -> "BatchImages":
        n_patch = max([len(p) for p in positions] + [0])
        n_region = max([w.shape[1] if w.ndim == 2 else 0 for w in weights] + [0])
        B = len(positions)
        pos = torch.zeros(B, n_patch, dtype=torch.long)
        valid = torch.zeros(B, n_patch, dtype=torch.bool)
        wts = torch.zeros(B, n_patch, n_region, dtype=torch.float32)
        for b, (p, w) in enumerate(zip(positions, weights)):
            pos[b, : len(p)] = torch.as_tensor(p, dtype=torch.long)
            valid[b, : len(p)] = True
            if w.size:
                wts[b, : w.shape[0], : w.shape[1]] = torch.as_tensor(w, dtype=torch.float32)
        return cls(pos, valid, wts)

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if device not in self._by_device:
            self._by_device[device] = (self.positions.to(device), self.valid.to(device), self.weights.to(device))
        return self._by_device[device]

    def gather_index(self, device: torch.device, n_kv: int, rep: int) -> torch.Tensor:
        """int64 [B*n_kv, rep, P]: the image columns for scores grouped by key head (made once per device)."""
        key = (device, n_kv, rep)
        if key not in self._gather_indices:
            B, P = self.positions.shape
            index = self.positions[:, None, None, :].expand(B, n_kv, rep, P).reshape(B * n_kv, rep, P)
            self._gather_indices[key] = index.to(device)
        return self._gather_indices[key]

    def select(self, rows: Sequence[int]) -> "BatchImages":
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return BatchImages(self.positions[idx], self.valid[idx], self.weights[idx])


class MaskBias:
    """The attention mask's last row as an additive float32 bias on the grouped scores, made once per mask.

    Every layer of a forward pass gets the same mask object, so the bias is
    made once per forward pass, not once per layer.
    """

    def __init__(self) -> None:
        self._zero: torch.Tensor | None = None
        self.clear()

    def clear(self) -> None:
        self._mask: torch.Tensor | None = None
        self._shape: tuple[int, int] | None = None
        self._bias: torch.Tensor | None = None

    def __call__(self, attention_mask: torch.Tensor | None, batch: int, n_kv: int,
                 device: torch.device) -> tuple[torch.Tensor, float]:
        """(bias float32 [batch*n_kv, 1 or rep, K], beta): beta 0 and a zero bias without a mask."""
        if attention_mask is None:
            if self._zero is None or self._zero.device != device:
                self._zero = torch.zeros(1, 1, 1, device=device)
            return self._zero, 0.0
        if attention_mask is not self._mask or (batch, n_kv) != self._shape:
            row = attention_mask[:, :, -1, :]  # [B or 1, 1 or H, K]
            row = torch.where(row, 0.0, float("-inf")) if row.dtype == torch.bool else row.float()
            _, heads, K = row.shape
            if heads == 1:  # one row for every head: broadcast over each key head's group of query heads
                bias = row.expand(batch, n_kv, K).reshape(batch * n_kv, 1, K)
            else:  # a row per query head: grouped like the scores
                bias = row.expand(batch, heads, K).reshape(batch * n_kv, heads // n_kv, K)
            self._mask, self._shape, self._bias = attention_mask, (batch, n_kv), bias
        return self._bias, 1.0


class Recorder:
    """Collects, per forward pass (= per generated token), what the capture attention computes.

    ``map_layers``: ``"mean"`` (one map averaged over all layers), ``"all"``
    or a list of layer indices (negative count from the end).
    """

    def __init__(self, model, map_layers: str | Sequence[int] = "mean", keep_heads: bool = False):
        self.modules = attention_modules(model)
        self.n_layers = len(self.modules)
        self.layer_of = {id(m): i for i, m in enumerate(self.modules)}
        self.map_mean = map_layers == "mean"
        self.map_layers = resolve_map_layers(map_layers, self.n_layers)
        # a slice where the kept layers are consecutive: indexing a GPU tensor with a list copies the list there
        first, last = self.map_layers[0], self.map_layers[-1]
        consecutive = self.map_layers == list(range(first, last + 1))
        self._map_index = slice(first, last + 1) if consecutive else self.map_layers
        self.keep_heads = bool(keep_heads)
        self.images: BatchImages | None = None
        self._blocks: list[dict[str, torch.Tensor]] = []  # on the host, float32, [B, steps, ...] each
        self._pending: list[dict[str, torch.Tensor]] = []  # on the device, not yet copied to the host
        self.mask_bias = MaskBias()
        self._current: dict[int, torch.Tensor] = {}  # layer -> captured row on image tokens [B*n_kv, rep, P]
        self._hook = None
        self._lm = language_model(model)

    # -- lifecycle ---------------------------------------------------------
    def start(self, images: BatchImages) -> None:
        self.images = images
        self._blocks = []
        self._pending = []
        self._current = {}
        self.mask_bias.clear()
        if self._hook is None:
            self._hook = self._lm.register_forward_hook(self._end_of_forward)

    def stop(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._flush()
        self.images = None
        self._current = {}
        self.mask_bias.clear()

    # -- called from the attention function ---------------------------------
    def record(self, layer: int, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
               scaling: float | None) -> None:
        """Keep this layer's captured row on the image tokens, float32 [B*n_kv, rep, P] (grouped heads).

        Only that is done per layer: the reductions run once per forward pass
        over all layers (``_end_of_forward``). A GPU decode step is bound by
        kernel launches and by the Python that issues them, so every operation
        per layer counts.
        """
        probs = _last_row_probs(self.mask_bias, query, key, attention_mask, scaling)
        index = self.images.gather_index(probs.device, key.shape[1], probs.shape[1])
        self._current[layer] = torch.gather(probs, 2, index)

    # steps copied to the host in blocks: a copy per token would stall the GPU queue each token, keeping
    # them all on the device would grow its memory with the chain
    FLUSH_STEPS = 32
    FLUSH_BYTES = 64 * 2**20

    def _end_of_forward(self, module, args, output) -> None:
        if self.images is None or not self._current:
            return
        if len(self._current) != self.n_layers:
            missing = sorted(set(range(self.n_layers)) - set(self._current))
            raise RuntimeError(f"capture saw no attention for layers {missing}: is the capture attention set?")
        # all layers on the first layer's device, reduced together
        rows = [self._current[i] for i in range(self.n_layers)]
        device = rows[0].device
        if any(r.device != device for r in rows):  # layers spread over devices by a device map
            rows = [r.to(device) for r in rows]
        grouped = torch.stack(rows)  # [L, B*n_kv, rep, P]
        L, _, rep, P = grouped.shape
        image = grouped.view(L, self.images.positions.shape[0], -1, P).transpose(0, 1)  # [B, L, H, P]
        _, valid, weights = self.images.on(device)
        if not self.images.all_valid:  # rows with fewer image tokens point their padding at key 0
            image = image * valid[:, None, None, :]
        head_mean = image.mean(2)  # [B, L, P]
        step = {"image_mass": image.sum(-1), "region_mass": torch.matmul(head_mean, weights)}  # [B, L, H], [B, L, R]
        if self.map_mean:
            step["image_attn"] = head_mean.mean(1, keepdim=True)
            if self.keep_heads:
                step["image_attn_heads"] = image.mean(1, keepdim=True)
        else:
            step["image_attn"] = head_mean[:, self._map_index]
            if self.keep_heads:
                step["image_attn_heads"] = image[:, self._map_index]
        self._pending.append(step)
        self._current = {}
        self.mask_bias.clear()  # the next forward pass has a longer mask
        step_bytes = sum(v.numel() * v.element_size() for v in step.values())
        if len(self._pending) >= min(self.FLUSH_STEPS, max(1, self.FLUSH_BYTES // step_bytes)):
            self._flush()

    def _flush(self) -> None:
        """Copy the pending steps to the host (float32: exact comparisons in tests; the store rounds to float16)."""
        if self._pending:
            self._blocks.append({k: torch.stack([s[k] for s in self._pending], 1).cpu() for k in self._pending[0]})
            self._pending = []

    def stacked(self) -> dict[str, torch.Tensor]:
        """Per array, [B, steps, ...]: row ``t`` belongs to the forward pass that produced token ``t``."""
        self._flush()
        if not self._blocks:
            return {}
        return {k: torch.cat([b[k] for b in self._blocks], 1) for k in self._blocks[0]}


def resolve_map_layers(map_layers: str | Sequence[int], n_layers: int) -> list[int]:
    """Layer indices kept for the full map; ``[-1]`` stands for "mean over all layers"."""
    if map_layers == "mean":
        return [-1]
    if map_layers == "all":
        return list(range(n_layers))
    out = []
    for layer in map_layers:
        idx = int(layer) + (n_layers if int(layer) < 0 else 0)
        if not 0 <= idx < n_layers:
            raise ValueError(f"traces.map_layers: layer {layer} out of range for a model with {n_layers} layers")
        if idx not in out:
            out.append(idx)
    return sorted(out)


_ACTIVE: Recorder | None = None
_SDPA = None


def _sdpa():
    """transformers' SDPA attention function (looked up once: this runs for every layer and token)."""
    global _SDPA
    if _SDPA is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        _SDPA = sdpa_attention_forward
    return _SDPA


@contextmanager
def capturing(model, recorder: Recorder, images: BatchImages) -> Iterator[Recorder]:
    """Run the language model with the capture attention and ``recorder`` collecting, then restore it."""
    global _ACTIVE
    register()
    lm = language_model(model)
    previous = lm.config._attn_implementation
    model.set_attn_implementation({"text_config": CAPTURE_IMPL})
    if lm.config._attn_implementation != CAPTURE_IMPL:  # pragma: no cover - a transformers change
        raise RuntimeError("could not switch the language model to the capture attention")
    _ACTIVE = recorder
    recorder.start(images)
    try:
        yield recorder
    finally:
        recorder.stop()
        _ACTIVE = None
        model.set_attn_implementation({"text_config": previous})


_HALF = (torch.float16, torch.bfloat16)


def _last_row_probs(
    mask_bias: MaskBias, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """float32 [B*n_kv, rep, K]: softmax over the keys for the last query row, as the forward pass had it.

    Query heads h*rep .. h*rep+rep-1 share key head h (repeat_kv's layout), so
    the scores are one batched matmul per key head, keys not repeated; it folds
    in the scale and the mask (``scale * q k^T + bias``). Then one softmax.
    """
    B, H, _, D = query.shape
    n_kv = key.shape[1]
    q = query.select(2, -1).reshape(B * n_kv, H // n_kv, D)
    k_t = key.reshape(B * n_kv, -1, D).mT  # [B*n_kv, D, K]
    bias, beta = mask_bias(attention_mask, B, n_kv, query.device)
    scale = scaling if scaling is not None else D**-0.5
    if query.is_cuda and query.dtype in _HALF:
        # float32 products and sums straight from the half-precision q and k: no float32 copy of the key cache
        scores = torch.baddbmm(bias, q, k_t, beta=beta, alpha=scale, out_dtype=torch.float32)
    else:
        scores = torch.baddbmm(bias, q.float(), k_t.float(), beta=beta, alpha=scale)
    return torch.softmax(scores, dim=-1)


def capture_attention_forward(
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
    """transformers attention function: SDPA's output, plus the captured row (see the module doc)."""
    output = _sdpa()(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )
    recorder = _ACTIVE
    if recorder is not None and recorder.images is not None:
        layer = recorder.layer_of.get(id(module))
        if layer is not None:
            if torch.is_grad_enabled():  # outside generate: keep the captured rows out of any autograd graph
                with torch.no_grad():
                    recorder.record(layer, query, key, attention_mask, scaling)
            else:
                recorder.record(layer, query, key, attention_mask, scaling)
    return output
