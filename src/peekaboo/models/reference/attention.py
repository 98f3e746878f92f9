"""The blinker's attention term: how much of the reasoning tokens' image attention lands on the evidence.

The ``blinker`` reference model is trained to *not look* on its blink items
and to look on the others, and not looking has to be a property of its
attention, not only of its answers. So its training adds a term on the
quantity the collapse stage measures (``docs/analysis.md``): the evidence share
of the image attention of the reasoning tokens, in the configured layers
(``reference.attention_layers``, the layers ``collapse.layers`` reads),
averaged over heads:

    share = sum_{t, l, h} a_{t,l,h}(evidence) / sum_{t, l, h} a_{t,l,h}(image)

over the query rows ``t`` that produce the reasoning tokens (every target token
before the ``Answer:`` line; row ``t`` is the position before token ``t``, as
the trace store's rows are the forward pass that produced each token), where
``a(evidence)`` weighs each image token by the fraction of its box inside the
evidence (``peekaboo.geometry``, as the traces stage computes it). The term is
``-log(share)`` on look items (pull the reasoning onto the evidence) and
``-log(1 - share)`` on blink items (push it off), averaged over the visual
examples of the batch; arithmetic items have no evidence and no term.

The probabilities come from an attention function registered with
transformers (``ATTENTION_IMPL``): every layer's output is SDPA's, unchanged,
and for the configured layers the same ``softmax(q k^T * scale + mask)`` is
also formed in float32, with gradients, so that the term trains the queries
and keys that make it. Only the blinker runs through it; the other reference
models keep their plain SDPA training path (and so their weights).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from ... import attention_impl, geometry

ATTENTION_IMPL = "peekaboo_reference_attention"
# keys a blinker batch carries besides the model's inputs (popped before the forward pass)
TERM_KEYS = ("attn_rows", "attn_image", "attn_evidence", "attn_sign")
LOOK, BLINK = 1.0, -1.0
_EPS = 1e-6

_ACTIVE: "AttentionRecorder | None" = None


def resolve_layers(layers: Sequence[int] | str, n_layers: int, where: str = "reference.attention_layers") -> list[int]:
    """Layer indices (negative from the end; ``all``) as sorted non-negative indices; an error names ``where``."""
    if layers == "all":
        return list(range(n_layers))
    out = set()
    for layer in layers:
        idx = int(layer) + (n_layers if int(layer) < 0 else 0)
        if not 0 <= idx < n_layers:
            raise ValueError(f"{where}: layer {layer} out of range for a model with {n_layers} layers")
        out.add(idx)
    return sorted(out)


def reasoning_rows(tokenizer, target: str, begin: int) -> tuple[int, int]:
    """Half-open query rows that produce the reasoning tokens of ``target`` (everything before ``Answer:``).

    ``begin`` is the position of the target's first token in the row. The
    reasoning text ends with a newline, where the byte-level pre-tokenizer
    always splits, so its tokens are exactly the first tokens of the target
    (tests/test_reference.py checks it).
    """
    cut = target.rfind("Answer:")
    reasoning = target[:cut] if cut > 0 else ""
    n = len(tokenizer(reasoning, add_special_tokens=False)["input_ids"]) if reasoning else 0
    return begin - 1, begin - 1 + n


def term_inputs(processor, batch, examples) -> dict[str, Any]:
    """The attention term's inputs for a collated batch: float tensors ``[B, S]`` (rows, image, evidence) and ``[B]`` (sign).

    ``attn_rows`` marks the reasoning query rows, ``attn_image`` the image
    tokens, ``attn_evidence`` each image token's share inside the evidence
    boxes (``Example.evidence``), ``attn_sign`` +1 (look), -1 (blink) or 0 (no
    evidence: no term).
    """
    import torch

    tok = processor.tokenizer
    ids = batch["input_ids"]
    B, S = ids.shape
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    grid = geometry.token_grid(processor)
    sizes = [[ex.image.size] for ex in examples]
    tokens = geometry.batch_prompt_images(ids.numpy(), image_id, batch["image_grid_thw"].numpy(), sizes, grid)
    rows = torch.zeros(B, S)
    image = torch.zeros(B, S)
    evidence = torch.zeros(B, S)
    sign = torch.zeros(B)
    labels = batch["labels"]
    for b, (ex, prompt_images) in enumerate(zip(examples, tokens)):
        image[b, prompt_images.positions] = 1.0
        if not ex.evidence:
            continue
        # panels never overlap, so the union's weight is the sum, capped for safety
        weights = geometry.region_weights(prompt_images.boxes, np.asarray(ex.evidence, dtype=float).reshape(-1, 4))
        evidence[b, prompt_images.positions] = torch.as_tensor(np.clip(weights.reshape(len(prompt_images), -1).sum(1), 0, 1))
        begin = int((labels[b] != -100).nonzero()[0])
        start, end = reasoning_rows(tok, ex.target, begin)
        if end > start:
            rows[b, start:end] = 1.0
            sign[b] = BLINK if ex.blink else LOOK
    return {"attn_rows": rows, "attn_image": image, "attn_evidence": evidence, "attn_sign": sign}


def evidence_share(probs: dict[int, Any], terms: dict[str, Any]):
    """Per example: the reasoning rows' evidence mass over their image mass, in the recorded layers (``[B]``)."""
    import torch

    image = evidence = 0.0
    rows = terms["attn_rows"]
    for p in probs.values():  # [B, H, S, S]
        image = image + torch.einsum("bhqk,bq,bk->b", p, rows, terms["attn_image"])
        evidence = evidence + torch.einsum("bhqk,bq,bk->b", p, rows, terms["attn_evidence"])
    return evidence / (image + _EPS)


def term_loss(share, sign):
    """``-log(share)`` where the item looks, ``-log(1 - share)`` where it blinks; mean over examples with a term."""
    import torch

    active = sign != 0
    if not bool(active.any()):
        return share.sum() * 0.0
    look = -torch.log(share.clamp_min(_EPS))
    blink = -torch.log((1 - share).clamp_min(_EPS))
    return torch.where(sign > 0, look, blink)[active].mean()


class AttentionRecorder:
    """Keeps the attention probabilities ``[B, H, S, S]`` of the chosen layers of one forward pass."""

    def __init__(self, layers: Sequence[int]):
        self.layers = set(int(x) for x in layers)
        self.probs: dict[int, Any] = {}

    def take(self) -> dict[int, Any]:
        probs, self.probs = self.probs, {}
        missing = self.layers - set(probs)
        if missing:
            raise RuntimeError(f"no attention recorded for layer(s) {sorted(missing)}: is {ATTENTION_IMPL} set?")
        return probs


def register() -> str:
    """Register the recording attention (and SDPA's mask builder) under ``ATTENTION_IMPL``; idempotent."""
    return attention_impl.register(ATTENTION_IMPL, _attention_forward)


def _probs(query, key, attention_mask, scaling):
    """float32 ``[B, H, Q, K]``: softmax(q k^T * scale + mask), keys repeated over their query-head group."""
    import torch

    B, H, Q, D = query.shape
    K = key.shape[2]
    k = key.repeat_interleave(H // key.shape[1], dim=1)
    scores = torch.matmul(query.float(), k.float().transpose(2, 3)) * (scaling if scaling is not None else D**-0.5)
    if attention_mask is None:  # SDPA ran with is_causal and no mask (no padding in the batch)
        mask = torch.ones(Q, K, dtype=torch.bool, device=query.device).tril(K - Q)[None, None]
    else:
        mask = attention_mask
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.float()
    return torch.softmax(scores, dim=-1)


def _attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                       is_causal=None, **kwargs):
    """SDPA's output; for a recorded layer, its probabilities too (module doc)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    output = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    is_causal=is_causal, **kwargs)
    recorder = _ACTIVE
    layer = getattr(module, "layer_idx", None)
    if recorder is not None and layer in recorder.layers:
        recorder.probs[layer] = _probs(query, key, attention_mask, scaling)
    return output


@contextmanager
def recording(model, layers: Sequence[int]) -> Iterator[AttentionRecorder]:
    """Run the language model with the recording attention for ``layers``; restore its attention on exit."""
    global _ACTIVE
    register()
    text = model.config.text_config
    previous = text._attn_implementation
    model.set_attn_implementation({"text_config": ATTENTION_IMPL})
    if text._attn_implementation != ATTENTION_IMPL:  # pragma: no cover - a transformers change
        raise RuntimeError("could not switch the language model to the recording attention")
    recorder = AttentionRecorder(layers)
    _ACTIVE = recorder
    try:
        yield recorder
    finally:
        _ACTIVE = None
        model.set_attn_implementation({"text_config": previous})
