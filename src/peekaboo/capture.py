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
sequence per layer. Image positions are per batch row (left padding moves
them), and tensors follow each layer's device, so it works when a device map
spreads the layers over several devices.
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
    _by_device: dict = field(default_factory=dict, repr=False)

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
        key = str(device)
        if key not in self._by_device:
            self._by_device[key] = (self.positions.to(device), self.valid.to(device), self.weights.to(device))
        return self._by_device[key]

    def select(self, rows: Sequence[int]) -> "BatchImages":
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return BatchImages(self.positions[idx], self.valid[idx], self.weights[idx])


class Recorder:
    """Collects, per forward pass (= per generated token), what the capture attention computes.

    ``map_layers``: ``"mean"`` (one map averaged over all layers), ``"all"``
    or a list of layer indices (negative count from the end).
    """

    def __init__(self, model, map_layers: str | Sequence[int] = "mean", keep_heads: bool = False):
        self.modules = attention_modules(model)
        self.n_layers = len(self.modules)
        self.layer_of = {id(m): i for i, m in enumerate(self.modules)}
        cfg = language_model(model).config
        self.n_heads = int(cfg.num_attention_heads)
        self.map_mean = map_layers == "mean"
        self.map_layers = resolve_map_layers(map_layers, self.n_layers)
        self.keep_heads = bool(keep_heads)
        self.images: BatchImages | None = None
        self.steps: list[dict[str, torch.Tensor]] = []
        self._current: dict[int, torch.Tensor] = {}  # layer -> captured row on image tokens [B, H, P]
        self._hook = None
        self._lm = language_model(model)

    # -- lifecycle ---------------------------------------------------------
    def start(self, images: BatchImages) -> None:
        self.images = images
        self.steps = []
        self._current = {}
        if self._hook is None:
            self._hook = self._lm.register_forward_hook(self._end_of_forward)

    def stop(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.images = None
        self._current = {}

    # -- called from the attention function ---------------------------------
    def wants(self, module) -> int | None:
        if self.images is None:
            return None
        return self.layer_of.get(id(module))

    def record(self, layer: int, probs_image: torch.Tensor) -> None:
        """``probs_image`` float32 [B, H, P]: the captured row's attention on each image token.

        Only kept here: the reductions run once per forward pass over all
        layers (``_end_of_forward``), because on a GPU a decode step is bound
        by kernel launches and a few small kernels per layer cost more than
        the arithmetic.
        """
        self._current[layer] = probs_image

    def _end_of_forward(self, module, args, output) -> None:
        if self.images is None or not self._current:
            return
        if len(self._current) != self.n_layers:
            missing = sorted(set(range(self.n_layers)) - set(self._current))
            raise RuntimeError(f"capture saw no attention for layers {missing}: is the capture attention set?")
        # all layers on the first layer's device, reduced together, one host copy per array and step
        device = self._current[0].device
        image = torch.stack([self._current[i].to(device) for i in range(self.n_layers)], 1)  # [B, L, H, P]
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
            step["image_attn"] = head_mean[:, self.map_layers]
            if self.keep_heads:
                step["image_attn_heads"] = image[:, self.map_layers]
        # float32 here (exact comparisons in tests); the store rounds to float16
        self.steps.append({k: v.cpu() for k, v in step.items()})
        self._current = {}

    def stacked(self) -> dict[str, torch.Tensor]:
        """Per array, [B, steps, ...]: row ``t`` belongs to the forward pass that produced token ``t``."""
        if not self.steps:
            return {}
        return {k: torch.stack([s[k] for s in self.steps], 1) for k in self.steps[0]}


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


def _last_row_probs(
    module, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """float32 [B, H, K]: softmax over the keys for the last query row, as the forward pass had it."""
    B, H, _, D = query.shape
    n_kv = key.shape[1]
    # the scale goes on the one query row rather than on every score
    q = query[:, :, -1, :].float() * (scaling if scaling is not None else D**-0.5)  # [B, H, D]
    k = key.float()  # [B, Hkv, K, D]; no copy in float32, float32 scores in half precision
    # query heads h*rep .. h*rep+rep-1 share key head h (repeat_kv's layout): no repeated keys
    rep = H // n_kv
    scores = torch.matmul(q.view(B, n_kv, rep, D), k.transpose(-1, -2)).view(B, H, -1)
    if attention_mask is not None:
        row = attention_mask[:, :, -1, :]  # [B or 1, 1 or H, K]
        if row.dtype == torch.bool:
            scores = scores.masked_fill(~row, float("-inf"))
        else:
            scores = scores + row.float()
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
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    output = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )
    recorder = _ACTIVE
    layer = recorder.wants(module) if recorder is not None else None
    if layer is not None:
        with torch.no_grad():
            probs = _last_row_probs(module, query, key, attention_mask, scaling)
            positions, _, _ = recorder.images.on(probs.device)
            index = positions[:, None, :].expand(-1, probs.shape[1], -1)
            recorder.record(layer, torch.gather(probs, 2, index))
    return output
