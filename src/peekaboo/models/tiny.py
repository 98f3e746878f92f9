"""Tiny random-initialised VLMs of the supported families, built in code.

Tests and benchmarks need real architectures (the same attention modules,
rotary embeddings, image processors and chat templates as the hub models) but
nothing can be downloaded. ``build_tiny(family, path)`` builds one from the
family's transformers config classes with small sizes, a byte-level tokenizer
made in code that carries the family's real special tokens, the family's chat
template and its real image processor, and saves everything with
``save_pretrained`` so it loads through ``AutoProcessor`` /
``AutoModelForImageTextToText`` exactly like a hub checkpoint.

The chat templates are transcriptions of the published ones without their
tool-calling branches (tools are never used here); the thinking switch follows
the family: Qwen3-VL opens ``<think>`` when asked (as the Thinking checkpoints
do), GLM-4.6V appends ``/nothink`` and an empty think block when thinking is off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl", "glm4v", "glm46v")

_QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Qwen3 adds these as ordinary (non-special) added tokens: they survive skip_special_tokens
_QWEN3_ADDED = ["<tool_call>", "</tool_call>", "<think>", "</think>"]

_GLM_SPECIALS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
    "<|end_of_video|>", "<|image|>", "<|video|>",
]
_GLM_ADDED = ["<think>", "</think>", "<|begin_of_box|>", "<|end_of_box|>"]

QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN3_VL_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].content is string %}
        {{- messages[0].content }}
    {%- else %}
        {%- for content in messages[0].content %}
            {%- if 'text' in content %}
                {{- content.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- '<|im_end|>\\n' }}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking %}
        {{- '<think>\\n' }}
    {%- endif %}
{%- endif %}
"""

GLM4V_TEMPLATE = """\
[gMASK]<sop>
{%- for msg in messages %}
    {%- if msg.role == 'system' %}
<|system|>
{{ msg.content }}
    {%- elif msg.role == 'user' %}
<|user|>{{ '\\n' }}
        {%- if msg.content is string %}
{{ msg.content }}
        {%- else %}
            {%- for item in msg.content %}
                {%- if item.type == 'video' or 'video' in item %}
<|begin_of_video|><|video|><|end_of_video|>
                {%- elif item.type == 'image' or 'image' in item %}
<|begin_of_image|><|image|><|end_of_image|>
                {%- elif item.type == 'text' %}
{{ item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
    {%- elif msg.role == 'assistant' %}
<|assistant|>
{{ msg.content }}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""

GLM46V_TEMPLATE = """\
[gMASK]<sop>
{%- for m in messages %}
    {%- if m.role == 'system' %}
        {{- '<|system|>\\n' }}
        {%- if m.content is string %}{{- m.content }}{%- else %}
            {%- for item in m.content %}{%- if item.type == 'text' %}{{- item.text }}{%- endif %}{%- endfor %}
        {%- endif %}
    {%- elif m.role == 'user' %}
        {{- '<|user|>\\n' }}
        {%- if m.content is string %}
            {{- m.content }}
        {%- else %}
            {%- for item in m.content %}
                {%- if item.type == 'video' or 'video' in item %}
                    {{- '<|begin_of_video|><|video|><|end_of_video|>' }}
                {%- elif item.type == 'image' or 'image' in item %}
                    {{- '<|begin_of_image|><|image|><|end_of_image|>' }}
                {%- elif item.type == 'text' %}
                    {{- item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if enable_thinking is defined and not enable_thinking %}{{- '/nothink' }}{%- endif %}
    {%- elif m.role == 'assistant' %}
        {{- '<|assistant|>\\n' }}
        {%- if m.content is string %}{{- m.content }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>' }}
    {%- if enable_thinking is defined and not enable_thinking %}{{- '\\n<think></think>' }}{%- endif %}
{%- endif %}"""

# (specials, added non-special tokens, eos, extra generation stop tokens, pad, template)
_TOKENS = {
    "qwen": (_QWEN_SPECIALS, _QWEN3_ADDED, "<|im_end|>", ["<|endoftext|>"], "<|endoftext|>"),
    "glm": (_GLM_SPECIALS, _GLM_ADDED, "<|endoftext|>", ["<|user|>", "<|observation|>"], "<|endoftext|>"),
}
_TEMPLATES = {
    "qwen3_vl": QWEN3_VL_TEMPLATE,
    "qwen2_5_vl": QWEN2_VL_TEMPLATE,
    "qwen2_vl": QWEN2_VL_TEMPLATE,
    "glm4v": GLM4V_TEMPLATE,
    "glm46v": GLM46V_TEMPLATE,
}


def _token_style(family: str) -> str:
    return "glm" if family.startswith("glm") else "qwen"


def build_tokenizer(family: str):
    """A byte-level tokenizer (256 byte tokens, no merges) with the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials, added, eos, _, pad = _TOKENS[_token_style(family)]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos,
        pad_token=pad,
        additional_special_tokens=specials,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        padding_side="left",
    )
    tok.add_tokens(added, special_tokens=False)
    tok.padding_side = "left"
    tok.chat_template = _TEMPLATES[family]
    return tok


# Small sizes that still exercise the real code paths: GQA (2 kv heads for 4
# query heads), several layers, multi-section rotary embeddings.
_TEXT_DEFAULTS = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=4096,
)


def _configs(family: str, tok, text: Mapping[str, Any], vision: Mapping[str, Any]):
    """The family's model config (text + vision) sized by ``text``/``vision`` overrides."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in tok.get_vocab()}
    vocab_size = len(tok)
    t = dict(_TEXT_DEFAULTS, vocab_size=vocab_size, **text)
    head_dim = t.get("head_dim", t["hidden_size"] // t["num_attention_heads"])
    t.setdefault("head_dim", head_dim)
    # mrope sections over (temporal, height, width) sum to half the rotary dims
    # (GLM rotates only half of each head: partial_rotary_factor 0.5)
    rotary = head_dim // 2 if family.startswith("glm") else head_dim
    half = rotary // 2
    sections = [half - 2 * (half // 4), half // 4, half // 4]
    eos_ids = [ids[_TOKENS[_token_style(family)][2]]] + [ids[s] for s in _TOKENS[_token_style(family)][3]]
    pad_id = ids[_TOKENS[_token_style(family)][4]]
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig

        t.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 5_000_000.0,
                                         "mrope_section": sections, "mrope_interleaved": True})
        v = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                 temporal_patch_size=2, out_hidden_size=t["hidden_size"], num_position_embeddings=64,
                 deepstack_visual_indexes=[0])
        v.update(vision)
        return Qwen3VLConfig(text_config=t, vision_config=v, image_token_id=ids["<|image_pad|>"],
                             video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                             vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False), eos_ids, pad_id
    if family in ("qwen2_5_vl", "qwen2_vl"):
        t.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": sections})
        t.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=eos_ids[0])
        if family == "qwen2_5_vl":
            from transformers import Qwen2_5_VLConfig as Cfg

            v = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                     temporal_patch_size=2, out_hidden_size=t["hidden_size"], window_size=56,
                     fullatt_block_indexes=[1])
        else:
            from transformers import Qwen2VLConfig as Cfg

            v = dict(depth=2, embed_dim=32, hidden_size=t["hidden_size"], mlp_ratio=2, num_heads=2, patch_size=14,
                     spatial_merge_size=2, temporal_patch_size=2)
        v.update(vision)
        return Cfg(text_config=t, vision_config=v, image_token_id=ids["<|image_pad|>"],
                   video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                   vision_end_token_id=ids["<|vision_end|>"]), eos_ids, pad_id
    if family in ("glm4v", "glm46v"):
        t.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10_000.0, "mrope_section": sections,
                                         "partial_rotary_factor": 0.5})
        t.setdefault("pad_token_id", pad_id)
        t.setdefault("eos_token_id", eos_ids)
        v = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                 temporal_patch_size=2, out_hidden_size=t["hidden_size"], image_size=56)
        v.update(vision)
        if family == "glm4v":
            from transformers import Glm4vConfig as Cfg
        else:
            from transformers import Glm46VConfig as Cfg
        return Cfg(text_config=t, vision_config=v, image_token_id=ids["<|image|>"], video_token_id=ids["<|video|>"],
                   image_start_token_id=ids["<|begin_of_image|>"], image_end_token_id=ids["<|end_of_image|>"],
                   video_start_token_id=ids["<|begin_of_video|>"], video_end_token_id=ids["<|end_of_video|>"]), \
            eos_ids, pad_id
    raise ValueError(f"unknown family '{family}' (known: {', '.join(FAMILIES)})")


def build_processor(family: str, tok=None, max_image_tokens: int = 64, min_image_tokens: int = 4):
    """The family's real processor class around the tiny tokenizer; images kept small for speed."""
    import transformers as tf

    tok = tok or build_tokenizer(family)
    patch = 16 if family == "qwen3_vl" else 14
    factor = patch * 2
    size = {"shortest_edge": factor * factor * min_image_tokens, "longest_edge": factor * factor * max_image_tokens}
    common = dict(size=size, patch_size=patch, merge_size=2, temporal_patch_size=2)
    if family == "qwen3_vl":
        image_proc = tf.Qwen2VLImageProcessor(**common)
        video_proc = tf.Qwen3VLVideoProcessor(**common)
        proc_cls = tf.Qwen3VLProcessor
    elif family in ("qwen2_5_vl", "qwen2_vl"):
        image_proc = tf.Qwen2VLImageProcessor(**common)
        video_proc = tf.Qwen2VLVideoProcessor(**common)
        proc_cls = tf.Qwen2_5_VLProcessor if family == "qwen2_5_vl" else tf.Qwen2VLProcessor
    elif family == "glm4v":
        image_proc = tf.Glm4vImageProcessor(**common)
        video_proc = tf.Glm4vVideoProcessor(**common)
        proc_cls = tf.Glm4vProcessor
    elif family == "glm46v":
        image_proc = tf.Glm46VImageProcessor(**common)
        video_proc = tf.Glm46VVideoProcessor(**common)
        proc_cls = tf.Glm46VProcessor
    else:
        raise ValueError(f"unknown family '{family}' (known: {', '.join(FAMILIES)})")
    return proc_cls(image_processor=image_proc, tokenizer=tok, video_processor=video_proc,
                    chat_template=_TEMPLATES[family])


def build_tiny(
    family: str,
    path: str | Path,
    seed: int = 0,
    text: Mapping[str, Any] | None = None,
    vision: Mapping[str, Any] | None = None,
    max_image_tokens: int = 64,
) -> Path:
    """Build a random-initialised ``family`` model and save model + processor into ``path``.

    ``text`` / ``vision`` override the config sizes (the benchmark uses them
    for a ~100M-parameter model). The same (family, seed, sizes) gives the
    same weights.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    if family not in FAMILIES:
        raise ValueError(f"unknown family '{family}' (known: {', '.join(FAMILIES)})")
    path = Path(path)
    tok = build_tokenizer(family)
    config, eos_ids, pad_id = _configs(family, tok, dict(text or {}), dict(vision or {}))
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.eval()
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id, do_sample=False)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    build_processor(family, tok, max_image_tokens=max_image_tokens).save_pretrained(path)
    (path / "peekaboo_tiny.json").write_text(json.dumps({"family": family, "seed": seed}, sort_keys=True))
    return path


def n_parameters(path: str | Path) -> int:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path)
    return sum(p.numel() for p in model.parameters())
