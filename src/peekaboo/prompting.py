"""Prompts: one place that turns an item into the model's chat-formatted input.

Both trace generation and reference-model training build prompts here, so a
model is trained on exactly the text it is later asked with.
"""

from __future__ import annotations

import re
from typing import Any

# A chat-turn delimiter or other special token (<|im_start|>, <|assistant|>, <|user|>, ...): a thinking tag
# followed by one is part of an earlier turn's text (a question quoting "<think>"), not the open block.
_SPECIAL_TOKEN_RE = re.compile(r"<\|[^|<>\s]+\|>")


def messages(question: str, n_images: int, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """Chat messages for a question about ``n_images`` images (images first, then the text)."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": question})
    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    out.append({"role": "user", "content": content})
    return out


def render(processor, msgs: list[dict[str, Any]], thinking: bool = False) -> str:
    """The prompt text through the model's own chat template, ending with the assistant header.

    ``enable_thinking`` goes only to templates that read it (Qwen3, GLM-4.1V and
    later); the others would pass it on to the processor call with a warning.
    """
    template = getattr(processor, "chat_template", None) or ""
    extra = {"enable_thinking": thinking} if "enable_thinking" in template else {}
    return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **extra)


def thinking_open(prompt_text: str) -> bool:
    """Whether a rendered prompt ends inside an open thinking block.

    Some chat templates write the opening ``<think>`` into the prompt
    (Qwen3-VL-Thinking always does); the model then writes its reasoning and
    ``</think>`` itself, and a response cut off mid-thought holds no tag at
    all. True when the last ``<think>`` is not closed later in the prompt and
    no chat-turn token follows it; a closed block (GLM's ``<think></think>``
    with thinking off) or none gives False.
    """
    low = str(prompt_text).lower()
    opened = low.rfind("<think>")
    if opened < 0 or low.rfind("</think>") > opened:
        return False
    return _SPECIAL_TOKEN_RE.search(prompt_text, opened) is None
