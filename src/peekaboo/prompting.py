"""Prompts: one place that turns an item into the model's chat-formatted input.

Both trace generation and reference-model training build prompts here, so a
model is trained on exactly the text it is later asked with.
"""

from __future__ import annotations

from typing import Any


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
