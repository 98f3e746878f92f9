"""The reference models' architecture: a small Qwen3-VL configuration, its initialisation and fast CPU kernels."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Mapping

from ... import synthetic as P
from ...seeding import derive_seed
from .spec import ARCHITECTURE, ReferenceSpecError
from .tokenizer import QWEN_SPECIAL_TOKENS

def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def resolved_architecture(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``ARCHITECTURE`` with a model's ``reference.architecture`` overrides merged in, key by key."""
    return _merge(ARCHITECTURE, overrides or {})


def build_config(processor, opts: P.PanelsOptions, overrides: Mapping[str, Any] | None = None):
    """The small Qwen3VLConfig, token ids taken from the processor's tokenizer."""
    from transformers import Qwen3VLConfig

    arch = resolved_architecture(overrides)
    unknown = set(arch) - {"text_config", "vision_config"}
    if unknown:
        raise ReferenceSpecError(f"reference.architecture: unknown key(s) {', '.join(sorted(unknown))} (text_config, vision_config)")
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t, _ in QWEN_SPECIAL_TOKENS}
    text = dict(arch["text_config"])
    text.update(vocab_size=len(tok), pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    vision = dict(arch["vision_config"])
    vision["out_hidden_size"] = text["hidden_size"]
    # a learned position grid exactly as large as the benchmark's patch grid
    side = max(opts.width, opts.height) // vision["patch_size"]
    vision.setdefault("num_position_embeddings", side * side)
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    return config


def build_model(config, seed: int):
    """A freshly initialised Qwen3VLForConditionalGeneration; initialisation seeded from ``seed``."""
    import torch
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(derive_seed(seed, "reference", "init") % (2**63 - 1))
    model = Qwen3VLForConditionalGeneration(config)
    tc = config.text_config
    model.generation_config = GenerationConfig(
        eos_token_id=tc.eos_token_id, pad_token_id=tc.pad_token_id, do_sample=False, max_new_tokens=64
    )
    return model


def n_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@contextmanager
def fast_vision_kernels():
    """Cheaper but identical computations in the Qwen3-VL vision tower, for training on CPU.

    * The patch embedding is a Conv3d whose stride equals its kernel over
      pre-cut patches: exactly a linear map of each flattened patch, and
      ``F.linear`` avoids the slow CPU convolution backward.
    * Vision attention runs per image; when all images have the same number of
      patches (always, for panels) one batched SDPA call replaces the loop.

    Same parameters, same function (up to float rounding); the saved model is
    an ordinary Qwen3-VL checkpoint. The originals are restored on exit.
    """
    import torch.nn.functional as F
    from transformers.models.qwen3_vl import modeling_qwen3_vl as M

    patch_forward = M.Qwen3VLVisionPatchEmbed.forward
    attention_forward = M.Qwen3VLVisionAttention.forward

    def linear_patch_embed(self, hidden_states):
        weight = self.proj.weight
        flat = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
        return F.linear(flat, weight.reshape(weight.shape[0], -1), self.proj.bias)

    def batched_attention(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if self.config._attn_implementation != "sdpa" or bool((lengths != lengths[0]).any()):
            return attention_forward(self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
        seq = hidden_states.shape[0]
        n, length = int(lengths.numel()), int(lengths[0])
        q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = M.apply_rotary_pos_emb_vision(q, k, cos, sin)
        q, k, v = (t.reshape(n, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)
        return self.proj(out.transpose(1, 2).reshape(seq, -1))

    M.Qwen3VLVisionPatchEmbed.forward = linear_patch_embed
    M.Qwen3VLVisionAttention.forward = batched_attention
    try:
        yield
    finally:
        M.Qwen3VLVisionPatchEmbed.forward = patch_forward
        M.Qwen3VLVisionAttention.forward = attention_forward
