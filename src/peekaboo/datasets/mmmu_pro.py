"""MMMU-Pro read from its published parquet formats.

Configs (option ``config``; ``auto`` tells them apart by their columns):

- ``standard`` (``standard (10 options)`` or ``standard (4 options)`` on the
  hub): ``id, question, options, explanation, image_1 .. image_7, img_type,
  answer, topic_difficulty, subject``. ``question`` refers to its images with
  ``<image i>`` tokens (options may too); ``options`` is a Python-literal list
  in a string (``ast.literal_eval``), 1 to 12 of them (never assumed 10).
- ``vision``: ``id, image, options, answer, subject``; the question and its
  options are part of the screenshot in ``image``.

Image columns are ``{bytes, path}`` structs. Option ``path`` is a parquet file
or a folder of shards (``standard (10 options)/test-0000x-of-0000y.parquet``).

Prompt (the official chain-of-thought prompts of ``mmmu-pro/prompts.yaml``,
option ``prompt``: ``cot`` (default) or ``direct``): standard ->
``{question}\\n{A. option ...}\\n{instruction}``; vision -> the instruction
alone. Images: exactly those the question and options name, in the order of
their ``<image i>`` tokens (first occurrence), as the official
``infer_*.py`` scripts pass them; each token is rewritten ``[image k]`` with k
the image's position in that list (the images precede the text in the chat).
A question without any token gets all its non-empty image columns in order.
A token naming an empty image column rejects the record.

Scoring: ``peekaboo.scoring.mmmu_pro`` (the official ``parse_multi_choice_response``, without its
random fallback).

Malformed records are rejected with the reason: ``options`` that is not a list
(a string that is no list literal, a dict), an option that is not text, an
answer that is not one of the option letters.

Task type: visual_reference by default (the study treats MMMU-Pro so). No
evidence boxes are shipped; supply them with the dataset's ``boxes`` file.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Iterator

from ..cells import is_blank
from ._common import image_source, iter_parquet, letters, parquet_columns, parquet_count, text_list
from .base import Adapter, AdapterError, RawItem, Reject

PROMPTS = {
    "cot": {
        "vision": (
            "Write out the multiple-choice question in the image and then solve it. The last line of your "
            "response should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is "
            "one of options. Think step by step before answering."
        ),
        "standard": (
            "Answer the preceding multiple choice question. The last line of your response should be of the "
            "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of options. Think step "
            "by step before answering."
        ),
    },
    "direct": {
        "vision": (
            "Answer with the option letter from the given choices directly. The last line of your response "
            "should be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of "
            "options."
        ),
        "standard": "Answer with the option letter from the given choices directly.",
    },
}
MAX_OPTIONS = 12
_IMAGE_TOKEN_RE = re.compile(r"<image\s+(\d+)>")


def parse_options(value: Any) -> list[str]:
    """The options list from its Python-literal string (or a list already); ValueError when it is not a list."""
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ValueError(f"options {value[:60]!r} is not a Python list literal") from None
    else:
        parsed = value
    options = text_list(parsed, "options")
    if options is None:
        raise ValueError("options is empty")
    return options


def image_order(text: str) -> list[int]:
    """Image numbers in the order their ``<image i>`` tokens first appear."""
    seen: list[int] = []
    for m in _IMAGE_TOKEN_RE.finditer(text):
        k = int(m.group(1))
        if k not in seen:
            seen.append(k)
    return seen


class MMMUProAdapter(Adapter):
    name = "mmmu_pro"
    default_task_type = "visual_reference"

    def check(self) -> list[str]:
        problems = self.check_paths(images=False)
        config = str(self.options.get("config", "auto"))
        if not (config == "auto" or config.startswith("standard") or config == "vision"):
            problems.append(f"datasets.{self.dataset}.options.config: '{config}' is not auto, standard or vision")
        if self.options.get("prompt", "cot") not in PROMPTS:
            problems.append(f"datasets.{self.dataset}.options.prompt: must be one of {', '.join(PROMPTS)}")
        return problems

    def count(self) -> int:
        return parquet_count(self.path())

    def config_name(self) -> str:
        """``standard`` or ``vision``: from the option, else from the parquet's columns."""
        config = str(self.options.get("config", "auto"))
        if config.startswith("standard"):
            return "standard"
        if config == "vision":
            return "vision"
        columns = set(parquet_columns(self.path()))
        if "image_1" in columns or "question" in columns:
            return "standard"
        if "image" in columns:
            return "vision"
        raise AdapterError(
            f"datasets.{self.dataset}.options.path: columns {sorted(columns)} are neither MMMU-Pro standard nor vision"
        )

    def records(self) -> Iterator[RawItem | Reject]:
        config = self.config_name()
        prompts = PROMPTS[self.options.get("prompt", "cot")]
        p = self.path()
        dirs = [self.path("images")] if self.options.get("images") else []
        dirs.append(p if p.is_dir() else p.parent)
        for line, row in iter_parquet(p):
            item_id = None if is_blank(row.get("id")) else str(row["id"])
            try:
                yield self._item(row, item_id, line, config, prompts[config], dirs)
            except (ValueError, SyntaxError, TypeError) as exc:
                yield Reject(reason=f"mmmu_pro record: {exc}", item_id=item_id, source_line=line)

    def _item(self, row, item_id, line, config, instruction, dirs) -> RawItem | Reject:
        if item_id is None:
            return Reject(reason="no id", source_line=line)
        for key in ("options", "answer"):
            if is_blank(row.get(key)):
                return Reject(reason=f"missing '{key}'", item_id=item_id, source_line=line)
        options = parse_options(row["options"])
        if not 1 <= len(options) <= MAX_OPTIONS:
            return Reject(reason=f"{len(options)} options (expected 1 to {MAX_OPTIONS})", item_id=item_id,
                          source_line=line)
        answer = str(row["answer"]).strip()
        if answer not in letters(len(options)):
            return Reject(reason=f"answer {answer!r} is not a letter of the {len(options)} options", item_id=item_id,
                          source_line=line)
        meta: dict[str, Any] = {"config": config, "subject": _text(row.get("subject"))}
        if config == "vision":
            image = image_source(row.get("image"), dirs)
            if image is None:
                return Reject(reason="no image", item_id=item_id, source_line=line)
            question, images = instruction, [image]
        else:
            if is_blank(row.get("question")):
                return Reject(reason="missing 'question'", item_id=item_id, source_line=line)
            body = f"{row['question']}\n" + "\n".join(f"{l}. {o}" for l, o in zip(letters(len(options)), options))
            order = image_order(body)
            if not order:
                order = [k for k in range(1, 8) if not is_blank(row.get(f"image_{k}"))]
            images = []
            for k in order:
                image = image_source(row.get(f"image_{k}"), dirs)
                if image is None:
                    return Reject(reason=f"<image {k}> names image_{k}, which is empty", item_id=item_id,
                                  source_line=line)
                images.append(image)
            position = {k: i + 1 for i, k in enumerate(order)}
            body = _IMAGE_TOKEN_RE.sub(lambda m: f"[image {position[int(m.group(1))]}]", body)
            question = f"{body}\n{instruction}"
            meta.update(
                image_columns=[f"image_{k}" for k in order],
                img_type=_literal_or_text(row.get("img_type")),
                topic_difficulty=_text(row.get("topic_difficulty")),
                explanation=_text(row.get("explanation")),
            )
        return RawItem(
            item_id=item_id,
            question=question,
            answer=answer,
            answer_type="multi_choice",
            images=images,
            choices=options,
            meta=meta,
            source_line=line,
        )

def _text(value: Any) -> str | None:
    return None if is_blank(value) else str(value)


def _literal_or_text(value: Any) -> Any:
    if is_blank(value):
        return None
    try:
        return ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        return str(value)


__all__ = ["MAX_OPTIONS", "MMMUProAdapter", "PROMPTS", "image_order", "parse_options"]
