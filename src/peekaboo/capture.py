"""What the trace store records of attention, shared by the capture code: layers, image tokens, map layers.

Attention is recorded by replaying the generated tokens in one teacher-forced
forward pass (:mod:`peekaboo.replay`); this module holds what that needs to
know about a model and a batch: the attention modules of its text decoder
(found by :func:`peekaboo.models.loading.language_model`, which loading and
generation use too, so that they need not import the capture code),
where each batch row's image tokens are and how they weigh into the annotated
regions (:class:`BatchImages`), and which layers keep a full per-patch map
(:func:`resolve_map_layers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import numpy as np
import torch

from .models.loading import language_model


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
