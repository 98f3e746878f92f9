"""Seeded random generators derived from the config seed and stable keys.

Python's ``hash()`` is salted per process, so keys are hashed with blake2b to
give the same stream in every run and every worker.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *keys: object) -> int:
    """A 64-bit seed from a base seed and any number of stable keys."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(seed)).encode())
    for key in keys:
        h.update(b"\x1f")
        h.update(str(key).encode())
    return int.from_bytes(h.digest(), "little")


def rng(seed: int, *keys: object) -> np.random.Generator:
    """A numpy generator for (seed, keys); independent streams for different keys."""
    return np.random.default_rng(derive_seed(seed, *keys))


def torch_generator(seed: int, *keys: object, device: str = "cpu"):
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys) % (2**63 - 1))
    return g
