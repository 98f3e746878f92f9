"""Registering an attention function of our own with transformers (the recording and replaying ones).

A model runs it when loaded or switched with ``attn_implementation=<name>``;
SDPA's mask builder goes with it, so the model builds the masks SDPA would.
"""

from __future__ import annotations

from typing import Callable

_registered: set[str] = set()


def register(name: str, forward: Callable) -> str:
    """Register ``forward`` (transformers' attention-function signature) as ``name``; idempotent; returns ``name``."""
    if name not in _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(name, forward)
        AttentionMaskInterface.register(name, sdpa_mask)
        _registered.add(name)
    return name
