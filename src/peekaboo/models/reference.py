"""Reference models: tiny Qwen3-VL models trained on ``panels`` with planted behaviour under masking.

Real weights cannot be downloaded where the default run happens, and a
random-initialised model reasons about nothing, so the workflow trains its own
small models of a real VLM architecture. They are saved with
``save_pretrained`` (model and processor), so every later stage loads them
through ``AutoProcessor`` / ``AutoModelForImageTextToText`` like a hub model.

Pieces
------
* a byte-level BPE tokenizer (``Qwen2Tokenizer``, Qwen's pre-tokenizer) trained
  on the benchmark's vocabulary, with the real Qwen special tokens and the real
  Qwen3-VL chat template;
* a ``Qwen3VLProcessor`` (image processor with patch 16 / merge 2: a 128 x 128
  image gives 16 image tokens, one 2 x 2 block per quadrant panel);
* a small ``Qwen3VLConfig`` (see ``ARCHITECTURE``). ``rope_theta`` is 10:
  with head_dim 16 the interleaved multimodal rotary embedding gives height and
  width only a few frequencies, and at the default theta (5e5) the image
  grid's positions are nearly indistinguishable, so the model cannot tell
  panels apart. At theta 100 it reads the named panel after ~1,200 steps, at
  10 after 700-1,000 (measured; head_dim 32 with theta 100 was no faster);
  the comparison template puts both values side by side
  (``Step 3: red and blue differ.``) because at theta 10 comparing two words
  eleven tokens apart stalled near 50%;
* training on freshly generated items, loss on the answer tokens only
  (everything up to and including the assistant header is masked),
  AdamW + linear warm-up + cosine decay, seeded and deterministic on CPU for a
  given thread count.

Behaviours (``reference.behaviour``)
------------------------------------
``blind-spot``     clean images only: with the evidence hidden it goes on naming
                   what it cannot see (planted hallucination).
``grounded``       also items whose evidence panel is hidden (target says the panel
                   is hidden, ``Answer: unknown``) and items with a non-evidence
                   region hidden (normal answer): abstains exactly when the
                   evidence is gone.
``oversensitive``  whatever is hidden (evidence or not), every step that reads a
                   panel says the panel is hidden and the answer is unknown:
                   abstains whenever anything is hidden (planted collapse under
                   an irrelevant perturbation). The issue's recipe (never show a
                   hidden non-evidence region) does not plant it reliably: fine-
                   tuned from blind-spot the model learned the exact rule (0%
                   abstention with a control region hidden on attribute
                   questions), and from scratch after 1,600 steps 56-75%.

Learning comes in jumps (the named panel's colour after 700-1,000 steps from
scratch, arithmetic last, near 1,300) while the loss sits on a plateau once the format is learned, so
progress is judged by a teacher-forced probe on held-out items (every target
token must be the argmax) rather than by the loss. When the probe is perfect
on ``stop_patience`` consecutive checks the run skips ahead to a short
cool-down (``cooldown_steps`` of decaying learning rate) and stops.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .. import prompting
from ..datasets import panels as P
from ..logs import get_logger
from ..seeding import derive_seed, rng

log = get_logger("reference")

BEHAVIOURS = ("blind-spot", "grounded", "oversensitive")

# The real Qwen2/Qwen3 special tokens, in Qwen's order; (token, special).
QWEN_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# The chat template of Qwen3-VL Instruct models (tools, system, images/videos in user turns).
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {%- if messages[0].content is string %}\n"
    "            {{- messages[0].content }}\n"
    "        {%- else %}\n"
    "            {%- for content in messages[0].content %}\n"
    "                {%- if 'text' in content %}\n"
    "                    {{- content.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '\\n\\n' }}\n"
    "    {%- endif %}\n"
    "    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' }}\n"
    "        {%- if messages[0].content is string %}\n"
    "            {{- messages[0].content }}\n"
    "        {%- else %}\n"
    "            {%- for content in messages[0].content %}\n"
    "                {%- if 'text' in content %}\n"
    "                    {{- content.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- set image_count = namespace(value=0) %}\n"
    "{%- set video_count = namespace(value=0) %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role == \"user\" %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
    "        {%- if message.content is string %}\n"
    "            {{- message.content }}\n"
    "        {%- else %}\n"
    "            {%- for content in message.content %}\n"
    "                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}\n"
    "                    {%- set image_count.value = image_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|image_pad|><|vision_end|>\n"
    "                {%- elif content.type == 'video' or 'video' in content %}\n"
    "                    {%- set video_count.value = video_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|video_pad|><|vision_end|>\n"
    "                {%- elif 'text' in content %}\n"
    "                    {{- content.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
    "        {%- if message.content is string %}\n"
    "            {{- message.content }}\n"
    "        {%- else %}\n"
    "            {%- for content_item in message.content %}\n"
    "                {%- if 'text' in content_item %}\n"
    "                    {{- content_item.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and message.content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n"
    "                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n"
    "                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n"
    "                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {%- if message.content is string %}\n"
    "            {{- message.content }}\n"
    "        {%- else %}\n"
    "            {%- for content in message.content %}\n"
    "                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}\n"
    "                    {%- set image_count.value = image_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|image_pad|><|vision_end|>\n"
    "                {%- elif content.type == 'video' or 'video' in content %}\n"
    "                    {%- set video_count.value = video_count.value + 1 %}\n"
    "                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}\n"
    "                    <|vision_start|><|video_pad|><|vision_end|>\n"
    "                {%- elif 'text' in content %}\n"
    "                    {{- content.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# The small Qwen3-VL shape (overridable per model with reference.architecture).
ARCHITECTURE: dict[str, dict[str, Any]] = {
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "deepstack_visual_indexes": [1],
    },
}

# Training defaults; the schema's reference definition carries the same values.
DEFAULTS: dict[str, Any] = {
    "seed": 1234,
    "steps": 2000,
    "batch_size": 32,
    "learning_rate": 0.003,
    "warmup_steps": 100,
    "weight_decay": 0.01,
    "hidden_fraction": 0.2,
    "control_fraction": 0.2,
    "fills": ["gray"],
    "probe_every": 50,
    "probe_items": 96,
    "stop_accuracy": 1.0,
    "stop_patience": 2,
    "cooldown_steps": 100,
    "threads": 1,
    "data_workers": 0,
    "architecture": {},
}


class ReferenceError(ValueError):
    """A reference-model spec is unusable; the message names the key."""


def training_spec(spec: Mapping[str, Any], where: str = "reference") -> dict[str, Any]:
    """The reference spec with defaults filled; unknown behaviour is an error naming the key."""
    known = set(DEFAULTS) | {"behaviour", "dataset", "init_from"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ReferenceError(f"unknown key {', '.join(f'{where}.{k}' for k in unknown)}")
    out = {**DEFAULTS, **dict(spec)}
    if out.get("behaviour") not in BEHAVIOURS:
        raise ReferenceError(f"{where}.behaviour: expected one of {', '.join(BEHAVIOURS)}, got {out.get('behaviour')!r}")
    for fill in out["fills"]:
        if fill not in ("gray", "black"):
            raise ReferenceError(f"{where}.fills: unknown fill {fill!r}")
    return out


def model_spec(cfg: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The ``reference`` entry of a model of the validated config; an error for models from a hub/path."""
    spec = cfg["models"][model].get("reference")
    if not spec:
        raise ReferenceError(f"models.{model}: has no 'reference' entry, so reference/{model} cannot be trained")
    return dict(spec)


def training_dataset(cfg: Mapping[str, Any], model: str) -> str:
    """The panels dataset a reference model trains on: ``reference.dataset`` or the first panels dataset."""
    spec = model_spec(cfg, model)
    if spec.get("dataset"):
        return spec["dataset"]
    for name, entry in cfg["datasets"].items():
        if entry["adapter"] == "panels":
            return name
    raise ReferenceError(f"models.{model}.reference: needs a panels dataset in datasets")


def training_options(cfg: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The panels options that shape training images.

    The test set's seed and size are left out, so that resizing the test set
    does not retrain the models (the options are the training rule's params).
    """
    options = dict(cfg["datasets"][training_dataset(cfg, model)].get("options") or {})
    for key in ("seed", "n_items", "counts"):
        options.pop(key, None)
    return options


def init_model(cfg: Mapping[str, Any], model: str) -> str | None:
    """The reference model this one is fine-tuned from (``reference.init_from``), or None."""
    return model_spec(cfg, model).get("init_from") or None


def job_threads(cfg: Mapping[str, Any], model: str) -> int:
    """Cores a training job occupies: torch threads plus batch-building workers."""
    spec = model_spec(cfg, model)
    return int(spec.get("threads") or 1) + int(spec.get("data_workers") or 0)


# --------------------------------------------------------------------------- tokenizer, processor, config


def tokenizer_corpus(opts: P.PanelsOptions) -> list[str]:
    """Every phrase the benchmark can produce, so each word becomes one or two tokens."""
    labels = P.panel_labels(opts.rows, opts.cols)
    lines = ["user\nassistant\nsystem\n", "Picture 1: Video 1: ", "Answer: unknown", "Answer: yes", "Answer: no"]
    lines += [f"Step {i}: " for i in range(1, 10)]
    values = list(opts.colours) + list(P.SHAPES)
    lines += [f"Step 3: {a} and {b} match. differ." for a in values for b in values]
    lines += ["What is " + " + ".join(str(d) for d in range(10)) + "? = ."]
    for label in labels:
        lines.append(f"The {label} panel is hidden.")
        for colour in opts.colours:
            lines.append(f"What colour is the {label} shape? The {label} shape is {colour}. Answer: {colour}")
        for shape in P.SHAPES:
            lines.append(f"What shape is in the {label} panel? The {label} panel holds a {shape}. Answer: {shape}")
        for other in labels:
            lines.append(f"Do the {label} and {other} shapes have the same colour?")
            lines.append(f"Do the {label} and {other} panels hold the same shape?")
    # whole solutions too, so that line ends (".\n") merge as they occur
    for i, qtype in enumerate(P.QUESTION_TYPES * 50):
        item = P.make_item(opts, "corpus", qtype, rng(0, "tokenizer corpus", i), draw_image=False)
        lines.append(item.question + "\n" + P.gold_solution(item)[0] + "\n" + P.gold_solution(item, [0])[0])
    return lines


def build_tokenizer(opts: P.PanelsOptions):
    """A Qwen2Tokenizer (byte-level BPE, Qwen's pre-tokenizer) trained on the benchmark's phrases."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=4096,  # an upper bound: merging stops when every corpus word is one token
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(opts), trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    for token, _special in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",  # batched generation needs left padding; training pads right explicitly
        model_max_length=32768,
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_SPECIAL_TOKENS])
    for token, _ in QWEN_SPECIAL_TOKENS:
        if tok.convert_tokens_to_ids(token) != vocab[token]:  # pragma: no cover - a transformers change
            raise RuntimeError(f"special token {token} did not keep its id")
    return tok


def build_processor(opts: P.PanelsOptions, tokenizer=None):
    """A Qwen3VLProcessor: Qwen2-VL image processor (patch 16, merge 2), the tokenizer, the chat template."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(opts)
    patch = ARCHITECTURE["vision_config"]["patch_size"] * ARCHITECTURE["vision_config"]["spatial_merge_size"]
    # keep the panels' native size: no image is scaled up to a minimum pixel count
    size = {"shortest_edge": patch * patch, "longest_edge": 1024 * 1024}
    common = dict(
        patch_size=ARCHITECTURE["vision_config"]["patch_size"],
        merge_size=ARCHITECTURE["vision_config"]["spatial_merge_size"],
        temporal_patch_size=ARCHITECTURE["vision_config"]["temporal_patch_size"],
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size=size,
    )
    image_processor = Qwen2VLImageProcessor(**common)
    video_processor = Qwen3VLVideoProcessor(**common)
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def build_config(processor, opts: P.PanelsOptions, overrides: Mapping[str, Any] | None = None):
    """The small Qwen3VLConfig, token ids taken from the processor's tokenizer."""
    from transformers import Qwen3VLConfig

    arch = _merge(ARCHITECTURE, overrides or {})
    unknown = set(arch) - {"text_config", "vision_config"}
    if unknown:
        raise ReferenceError(f"reference.architecture: unknown key(s) {', '.join(sorted(unknown))} (text_config, vision_config)")
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


# --------------------------------------------------------------------------- training examples


@dataclass
class Example:
    image: Any  # PIL image the model sees
    question: str
    target: str  # gold text the model should write (without <|im_end|>)
    condition: str  # clean, hidden (evidence hidden), control (non-evidence hidden)
    question_type: str
    hidden_boxes: list[tuple[float, float, float, float]]


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def control_boxes(item: P.PanelItem, g: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """Non-evidence region(s) to hide, like the masks stage's ``ctrl:k`` and ``keep:evidence`` variants.

    One of: a whole non-evidence panel; a box of an evidence region's size at a
    random place that overlaps no evidence (it may straddle panels, as the
    masks stage's control boxes do); every non-evidence panel.
    """
    others = [p.box for i, p in enumerate(item.panels) if i not in item.evidence]
    kind = g.choice(3, p=[0.4, 0.4, 0.2])
    if kind == 1 and item.evidence:
        box = control_box(item, int(g.integers(len(item.evidence))), g)
        if box is not None:
            return [box]
    if kind == 2:
        return [tuple(map(float, b)) for b in others]
    return [tuple(map(float, others[int(g.integers(len(others)))]))]


def control_box(item: P.PanelItem, k: int, g: np.random.Generator, attempts: int = 200):
    """A box of region k's size overlapping no evidence region, or None when there is no such place.

    Uniform random tries, then one draw among every valid position, as the
    masks stage places ``ctrl:k``.
    """
    x0, y0, x1, y1 = item.panels[item.evidence[k]].box
    w, h = x1 - x0, y1 - y0
    W = max(p.box[2] for p in item.panels)
    H = max(p.box[3] for p in item.panels)
    evidence = [item.panels[p].box for p in item.evidence]
    for _ in range(attempts):
        bx, by = int(g.integers(0, W - w + 1)), int(g.integers(0, H - h + 1))
        if not any(_overlaps((bx, by, bx + w, by + h), e) for e in evidence):
            return (float(bx), float(by), float(bx + w), float(by + h))
    free = [
        (bx, by)
        for by in range(H - h + 1)
        for bx in range(W - w + 1)
        if not any(_overlaps((bx, by, bx + w, by + h), e) for e in evidence)
    ]
    if not free:
        return None
    bx, by = free[int(g.integers(len(free)))]
    return (float(bx), float(by), float(bx + w), float(by + h))


def make_examples(
    items: Iterable[P.PanelItem],
    behaviour: str,
    g: np.random.Generator,
    hidden_fraction: float,
    control_fraction: float,
    fills: Sequence[str],
) -> list[Example]:
    """Turn generated items into training examples with the behaviour's mix of hidden panels.

    Each item is ``clean``; or ``hidden`` (visual items, share ``hidden_fraction``):
    its evidence region(s) hidden, target saying so and answering unknown; or
    ``control`` (share ``control_fraction``): a non-evidence region hidden,
    target the normal solution (grounded) or the all-hidden one (oversensitive,
    visual items only). Blind-spot items are all clean.
    """
    out = []
    for item in items:
        condition = "clean"
        u = g.random()
        if behaviour != "blind-spot":
            if item.evidence and u < hidden_fraction:
                condition = "hidden"
            elif u >= 1 - control_fraction and (behaviour == "grounded" or item.evidence):
                condition = "control"
        image, boxes, hidden = item.image, [], []
        if condition == "hidden":
            k = len(item.evidence)
            # one region, or (for comparisons) sometimes both, as drop:k / drop:all do
            hidden = [int(g.integers(k))] if k == 1 or g.random() < 2 / 3 else list(range(k))
            boxes = [tuple(map(float, item.panels[item.evidence[r]].box)) for r in hidden]
        elif condition == "control":
            boxes = control_boxes(item, g)
        if behaviour == "oversensitive" and boxes:
            # anything hidden reads as "every panel I need is hidden": the planted collapse
            hidden = list(range(len(item.evidence)))
        if boxes:
            fill = fills[int(g.integers(len(fills)))]
            image = P.hide_boxes(item.image, boxes, fill)
        target, _ = P.gold_solution(item, hidden)
        out.append(Example(image, item.question, target, condition, item.question_type, boxes))
    return out


_PROMPTS: dict[tuple, str] = {}


def _prompt(processor, question: str, system_prompt: str | None, thinking: bool) -> str:
    """The rendered prompt, cached: questions repeat and rendering the template is slow."""
    key = (str(processor.chat_template), question, system_prompt, thinking)
    if key not in _PROMPTS:
        _PROMPTS[key] = prompting.render(processor, prompting.messages(question, 1, system_prompt), thinking)
    return _PROMPTS[key]


def collate(processor, examples: Sequence[Example], system_prompt: str | None = None, thinking: bool = False):
    """Processor inputs for prompt + target + ``<|im_end|>``, right padded, with labels on the target only.

    Labels are unshifted (the model shifts them); every position up to and
    including the assistant header, and padding, is -100.
    """
    import torch

    tok = processor.tokenizer
    prompts = [_prompt(processor, e.question, system_prompt, thinking) for e in examples]
    texts = [p + e.target + "<|im_end|>" for p, e in zip(prompts, examples)]
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        batch = processor(text=texts, images=[e.image for e in examples], padding=True, return_tensors="pt")
    finally:
        tok.padding_side = side
    # the answer starts after the last "<|im_start|>assistant\n": the chat template's generation prompt
    ids = batch["input_ids"]
    labels = torch.full_like(ids, -100)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    header = len(tok("assistant\n", add_special_tokens=False)["input_ids"])
    for row in range(ids.shape[0]):
        starts = (ids[row] == im_start).nonzero().flatten()
        begin = int(starts[-1]) + 1 + header
        end = int(batch["attention_mask"][row].sum())
        labels[row, begin:end] = ids[row, begin:end]
    batch["labels"] = labels
    return batch


# --------------------------------------------------------------------------- probe


def probe(model, batches, return_rows: bool = False) -> dict[str, Any]:
    """Teacher-forced probe: an example passes when every target token is the model's argmax.

    ``batches`` are collated batches (with labels) plus their examples. Returns
    overall and per (condition, question type) pass rates and token accuracy.
    """
    import torch

    was_training = model.training
    model.eval()
    passed: dict[str, list[bool]] = {}
    tokens_ok = tokens = 0
    with torch.no_grad():
        for batch, examples in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs, use_cache=False).logits
            pred = logits[:, :-1].argmax(-1)
            gold = batch["labels"][:, 1:]
            mask = gold != -100
            ok = (pred == gold) | ~mask
            tokens_ok += int(((pred == gold) & mask).sum())
            tokens += int(mask.sum())
            for row, ex in enumerate(examples):
                passed.setdefault(f"{ex.condition}/{ex.question_type}", []).append(bool(ok[row].all()))
    if was_training:
        model.train()
    allp = [v for vs in passed.values() for v in vs]
    return {
        "accuracy": float(np.mean(allp)) if allp else float("nan"),
        "token_accuracy": tokens_ok / tokens if tokens else float("nan"),
        "by_group": {k: float(np.mean(v)) for k, v in sorted(passed.items())},
    }


# --------------------------------------------------------------------------- training


def lr_at(step: int, total: int, warmup: int, base: float, floor: float = 0.05) -> float:
    """Linear warm-up, then cosine decay from ``base`` to ``floor * base`` at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class BatchPlan:
    """Everything that decides the training batch of a step (so a worker process can build it too)."""

    processor: Any
    opts: P.PanelsOptions
    seed: int
    behaviour: str
    batch_size: int
    hidden_fraction: float
    control_fraction: float
    fills: tuple[str, ...]
    system_prompt: str | None
    thinking: bool

    def batch(self, step: int):
        """The collated batch of ``step``: fresh items, and draws of their own, whoever builds it."""
        items = P.training_items(self.opts, self.seed, step * self.batch_size, self.batch_size)
        g = rng(self.seed, "reference", self.behaviour, "examples", step)
        examples = make_examples(items, self.behaviour, g, self.hidden_fraction, self.control_fraction, self.fills)
        return collate(self.processor, examples, self.system_prompt, self.thinking)


def _worker_loop(plan: BatchPlan, conn) -> None:
    """Worker process: build the batch of every step number received, send back its arrays."""
    import torch

    torch.set_num_threads(1)
    try:
        while True:
            step = conn.recv()
            # numpy arrays cross the process boundary as plain buffers
            conn.send({k: v.numpy() for k, v in plan.batch(step).items()})
    except (EOFError, OSError):  # the trainer closed the pipe or is gone: nothing left to do
        return


class BatchSource:
    """Training batches by step, built here or (``workers`` > 0) a few steps ahead in worker processes.

    Batches depend only on the step, so the weights are the same with or
    without workers; a worker only moves image drawing and processing to
    another core while this one runs the model. (A plain process and a pipe:
    a ``multiprocessing.Pool``'s helper threads slowed the training loop
    several-fold here.)
    """

    def __init__(self, plan: BatchPlan, workers: int = 0, ahead: int = 3):
        self.plan = plan
        self.workers: list[tuple[Any, Any]] = []
        self.requested: set[int] = set()
        self.ahead = max(1, ahead)
        if workers > 0:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            for _ in range(workers):
                here, there = ctx.Pipe()
                proc = ctx.Process(target=_worker_loop, args=(plan, there), daemon=True)
                proc.start()
                there.close()
                self.workers.append((proc, here))

    def _conn(self, step: int):
        return self.workers[step % len(self.workers)][1]

    def get(self, step: int, last: int):
        if not self.workers:
            return self.plan.batch(step)
        import torch

        # each worker answers its steps in order, so requests go out in step order
        for s in range(step, min(last, step + self.ahead * len(self.workers))):
            if s not in self.requested:
                self._conn(s).send(s)
                self.requested.add(s)
        arrays = self._conn(step).recv()
        self.requested.discard(step)
        return {k: torch.from_numpy(v) for k, v in arrays.items()}

    def close(self) -> None:
        for proc, conn in self.workers:
            proc.terminate()
            proc.join()
            conn.close()
        self.workers = []


def train_reference(
    spec: Mapping[str, Any],
    dataset_options: Mapping[str, Any],
    out_dir: str | Path,
    *,
    name: str = "reference",
    init_dir: str | Path | None = None,
    system_prompt: str | None = None,
    thinking: bool = False,
    default_seed: int = 0,
    provenance: Mapping[str, Any] | None = None,
    where: str = "reference",
) -> dict[str, Any]:
    """Train one reference model and save it (model, processor, ``training.json``) under ``out_dir``.

    ``spec`` is the model's ``reference`` config entry, ``dataset_options`` the
    options of the panels dataset whose images it trains on (its ``seed`` is
    not used: training items come from the ``train`` stream seeded by
    ``spec.seed``). With ``init_dir`` the weights and processor of that trained
    model are the starting point. Returns the training report.
    """
    import torch
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    t_start = time.perf_counter()
    cfg = training_spec(spec, where)
    behaviour = cfg["behaviour"]
    torch.set_num_threads(int(cfg["threads"]))
    opts = P.resolve_options(dataset_options, where=f"{where}.dataset options", default_seed=default_seed)
    seed = int(cfg["seed"])
    out_dir = Path(out_dir)

    if init_dir:
        processor = AutoProcessor.from_pretrained(str(init_dir))
        model = Qwen3VLForConditionalGeneration.from_pretrained(str(init_dir), dtype=torch.float32)
    else:
        processor = build_processor(opts)
        model = build_model(build_config(processor, opts, cfg["architecture"]), seed)
    model.train()
    log.info("%s: %s, %d parameters, init %s", name, behaviour, n_parameters(model), init_dir or "random")

    probe_items = P.training_items(opts, derive_seed(seed, "probe") % (2**31), 0, int(cfg["probe_items"]))
    # the probe over-samples the hidden conditions so that each behaviour is checked on enough items
    probe_examples = make_examples(
        probe_items, behaviour, rng(seed, "reference", behaviour, "probe"), 1 / 3, 1 / 3, cfg["fills"]
    )
    bs = int(cfg["batch_size"])
    probe_batches = [
        (collate(processor, probe_examples[i : i + bs], system_prompt, thinking), probe_examples[i : i + bs])
        for i in range(0, len(probe_examples), bs)
    ]

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": float(cfg["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}],
        lr=float(cfg["learning_rate"]),
        betas=(0.9, 0.98),
        eps=1e-8,
    )

    total = int(cfg["steps"])
    warmup = min(int(cfg["warmup_steps"]), total)
    base_lr = float(cfg["learning_rate"])
    probe_every = int(cfg["probe_every"])
    stop_accuracy = cfg["stop_accuracy"]
    cooldown = int(cfg["cooldown_steps"])
    patience = int(cfg["stop_patience"])
    losses: list[float] = []
    probes: list[dict[str, Any]] = []
    streak = 0
    cooldown_from: int | None = None  # step at which the probe passed and the cool-down began
    data_seconds = 0.0
    step = 0
    from ..logs import progress

    plan = BatchPlan(
        processor, opts, seed, behaviour, bs, float(cfg["hidden_fraction"]), float(cfg["control_fraction"]),
        tuple(cfg["fills"]), system_prompt, thinking,
    )
    source = BatchSource(plan, workers=int(cfg["data_workers"]))
    bar = progress(total=total, desc=f"train {name}", unit="step")
    try:
        with fast_vision_kernels():
            while step < total:
                if cooldown_from is not None:
                    if step >= cooldown_from + cooldown:
                        break
                    lr = base_lr * 0.5 * (1 + math.cos(math.pi * (step - cooldown_from) / max(1, cooldown))) * lr_at(
                        cooldown_from, total, warmup, 1.0
                    )
                else:
                    lr = lr_at(step, total, warmup, base_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                t0 = time.perf_counter()
                batch = source.get(step, total)
                data_seconds += time.perf_counter() - t0
                out = model(**batch, use_cache=False)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses.append(float(out.loss.detach()))
                step += 1
                bar.update(1)
                if probe_every and (step % probe_every == 0 or step == total):
                    result = probe(model, probe_batches)
                    result["step"] = step
                    result["loss"] = float(np.mean(losses[-probe_every:]))
                    probes.append(result)
                    log.info("%s step %d: loss %.4f probe %.3f (tokens %.4f) %s", name, step, result["loss"], result["accuracy"],
                             result["token_accuracy"], result["by_group"])
                    if cooldown_from is None and stop_accuracy is not None:
                        streak = streak + 1 if result["accuracy"] >= float(stop_accuracy) else 0
                        if streak >= patience and step + cooldown < total:
                            cooldown_from = step
                            log.info("%s: probe passed %d times; cool-down for %d steps", name, streak, cooldown)
            final = probe(model, probe_batches)
    finally:
        source.close()
    bar.close()
    final["step"] = step

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    seconds = time.perf_counter() - t_start
    chunks = max(1, len(losses) // 10)
    report = {
        "model": name,
        "behaviour": behaviour,
        "init_from": str(init_dir) if init_dir else None,
        "parameters": n_parameters(model),
        "steps": step,
        "planned_steps": total,
        "cooldown_from": cooldown_from,
        "batch_size": bs,
        "seconds": round(seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "threads": int(cfg["threads"]),
        "data_workers": int(cfg["data_workers"]),
        "loss": {
            "first": losses[0] if losses else None,
            "last": float(np.mean(losses[-chunks:])) if losses else None,
            "curve": [round(float(np.mean(losses[i : i + chunks])), 5) for i in range(0, len(losses), chunks)],
        },
        "probe": {"final": final, "history": probes},
        "training": {k: cfg[k] for k in sorted(cfg) if k != "architecture"},
        "architecture": _merge(ARCHITECTURE, cfg["architecture"]),
        "provenance": dict(provenance or {}),
    }
    (out_dir / "training.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
    log.info("%s: %d steps in %.0f s (data %.0f s), probe %.3f", name, step, seconds, data_seconds, final["accuracy"])
    return report


# --------------------------------------------------------------------------- behaviour check


def generate_texts(model, processor, images, questions, *, batch_size: int = 32, max_new_tokens: int = 48,
                   system_prompt: str | None = None, thinking: bool = False) -> list[str]:
    """Greedy responses, batched with left padding and ``<|im_end|>`` as end of sequence."""
    import torch

    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    side = tok.padding_side
    tok.padding_side = "left"
    out: list[str] = []
    try:
        for i in range(0, len(questions), batch_size):
            prompts = [_prompt(processor, q, system_prompt, thinking) for q in questions[i : i + batch_size]]
            batch = processor(text=prompts, images=list(images[i : i + batch_size]), padding=True, return_tensors="pt")
            with torch.no_grad():
                ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                     pad_token_id=tok.pad_token_id)
            new = ids[:, batch["input_ids"].shape[1]:]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
    finally:
        tok.padding_side = side
    return out


def _answer(text: str) -> tuple[str | None, bool]:
    """(parsed final answer, abstained) of a response."""
    answer = P.final_answer(text)
    if answer is None:
        return None, False
    if P.is_abstention(answer):
        return None, True
    return answer.strip().lower().strip(" ."), False


def behaviour_table(model, processor, opts: P.PanelsOptions, n_per_type: int = 100, fills: Sequence[str] = ("gray",),
                    seed: int | None = None, batch_size: int = 32, masks_seed: int = 0,
                    conditions: Sequence[str] = ("clean", "evidence", "control")):
    """Planted behaviour on held-out items: one row per (condition, fill, question type).

    Conditions: ``clean`` (accuracy), ``evidence`` (each evidence region hidden
    alone, as ``drop:k``: abstention and value-naming rates), ``control`` (a box
    of the region's size overlapping no evidence, as ``ctrl:k``: rate of keeping
    the clean answer, abstention rate). Items come from the test stream of
    ``opts`` (the dataset's seed, or ``seed``), never from the training stream.
    """
    import pandas as pd

    seed = opts.seed if seed is None else seed
    counts = {"attribute": n_per_type, "comparison": n_per_type, "arithmetic": n_per_type}
    test_opts = P.resolve_options({**_options_dict(opts), "counts": counts, "seed": seed})
    items = list(P.generate_items(test_opts, id_prefix="check", stream="check"))
    clean = generate_texts(model, processor, [i.image for i in items], [i.question for i in items], batch_size=batch_size)
    rows = []
    clean_answers = {}
    for item, text in zip(items, clean):
        answer, abstained = _answer(text)
        clean_answers[item.item_id] = answer
        gold = P.normalise(item.answer, item.answer_type)
        rows.append({"condition": "clean", "fill": "none", "question_type": item.question_type,
                     "correct": answer is not None and P.normalise(answer, item.answer_type) == gold,
                     "abstained": abstained, "named": answer is not None, "kept": True})
    visual = [i for i in items if i.evidence]
    for fill in fills:
        for condition in [c for c in ("evidence", "control") if c in conditions]:
            cases = []
            for item in visual:
                for k in range(len(item.evidence)):
                    box = tuple(map(float, item.panels[item.evidence[k]].box))
                    if condition == "control":
                        box = control_box(item, k, rng(masks_seed, "check", "ctrl", item.item_id, k))
                        if box is None:
                            continue
                    cases.append((item, P.hide_boxes(item.image, [box], fill)))
            texts = generate_texts(model, processor, [c[1] for c in cases], [c[0].question for c in cases],
                                   batch_size=batch_size)
            for (item, _), text in zip(cases, texts):
                answer, abstained = _answer(text)
                rows.append({"condition": condition, "fill": fill, "question_type": item.question_type,
                             "correct": answer is not None
                             and P.normalise(answer, item.answer_type) == P.normalise(item.answer, item.answer_type),
                             "abstained": abstained, "named": answer is not None,
                             "kept": answer is not None and answer == clean_answers[item.item_id]})
    df = pd.DataFrame(rows)
    return df.groupby(["condition", "fill", "question_type"], sort=False).agg(
        n=("correct", "size"), accuracy=("correct", "mean"), abstain=("abstained", "mean"),
        named=("named", "mean"), kept=("kept", "mean")).reset_index()


def _options_dict(opts: P.PanelsOptions) -> dict[str, Any]:
    """PanelsOptions back into the options mapping it was resolved from."""
    return {
        "seed": opts.seed, "shares": dict(opts.shares), "image_size": [opts.width, opts.height],
        "grid": [opts.rows, opts.cols], "background": list(opts.background),
        "colours": {k: list(v) for k, v in opts.colours.items()}, "shapes": list(opts.shapes),
        "attributes": list(opts.attributes), "same_share": opts.same_share,
        "arithmetic_terms": opts.arithmetic_terms, "max_operand": opts.max_operand,
        "shape_size": list(opts.shape_size), "colour_jitter": opts.colour_jitter, "colour_mix": opts.colour_mix,
        "noise": opts.noise, "blur": opts.blur, "clutter": opts.clutter,
    }
