"""Evidence boxes from a grounding VLM: ask per item image, parse the answer in the family's format, map to pixels.

The model is loaded as a traced model is (:func:`peekaboo.models.loading.load_model`:
hub id from the local cache or a local path, ``trust_remote_code`` off unless
set), prompted through its own chat template (:mod:`peekaboo.prompting`) and
run by the traces stage's generator without attention capture
(:class:`peekaboo.generate.TraceGenerator`: batches with left padding, greedy
unless ``generation.do_sample``, a request whose image or prompt fails is a
failed outcome with the reason, a batch that runs out of memory is split).

The answer is decoded with its special tokens (Qwen2-VL's and GLM's box
tokens are special tokens) and parsed by :mod:`peekaboo.grounding.formats`;
every box goes through :func:`peekaboo.grounding.coords.to_pixels` with the
image's original size and the size the processor resized it to. An item with
several images is asked once per image, shown that image alone, with
``image_prompt`` before the prompt saying which of the question's images it is.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .. import prompting
from ..logs import get_logger
from . import coords, formats
from .coords import BoxReject
from .requests import Outcome, Request, keep_first

log = get_logger("grounding.vlm")


def grounding_prompt(entry: Mapping[str, Any], request: Request) -> str:
    """The text asked for one request: ``prompt`` with the question, after ``image_prompt`` for multi-image items.

    Placeholders are replaced literally (the prompt holds JSON braces, so no str.format).
    """
    text = str(entry["prompt"]).replace("{question}", request.question)
    if request.n_images > 1:
        note = str(entry["image_prompt"]).replace("{number}", str(request.image_index + 1))
        text = note.replace("{count}", str(request.n_images)) + "\n" + text
    return text


class VlmSource:
    """A loaded grounding VLM (``entry``: the dataset's validated ``boxes`` entry, kind vlm)."""

    kind = "vlm"

    def __init__(self, entry: Mapping[str, Any], where: str, device: str | None = None):
        from ..generate import GenerationSettings, TraceGenerator
        from ..models.loading import ModelLoadError, load_model

        spec = entry["model"]
        try:
            model, processor, family, info = load_model(spec, device=device, name=where)
        except ModelLoadError as exc:  # its messages say models.<name>; this model is configured elsewhere
            raise ModelLoadError(str(exc).replace(f"models.{where}", f"{where}.model", 1)) from exc
        self.entry = entry
        self.processor = processor
        self.family = family
        self.format = formats.format_for(family) if entry["format"] == "auto" else entry["format"]
        self.model_id = info.model_id
        self.batch_size = int(spec["batch_size"])
        self.generator = TraceGenerator(
            model, processor, family, GenerationSettings.from_config(spec["generation"]),
            thinking=bool(spec["thinking"]), system_prompt=spec["system_prompt"],
        )
        log.info("grounding VLM %s (family %s): answers read as %s, %s coordinates", self.model_id, family,
                 self.format, formats.SPACES[self.format])

    def decode(self, token_ids: Sequence[int]) -> str:
        """The generated text with its special tokens (box tokens are special), without the closing EOS."""
        ids = [int(t) for t in token_ids]
        if ids and ids[-1] in self.generator.eos_ids:
            ids = ids[:-1]
        return self.generator.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        """One outcome per request, in order (a batch of at most ``model.batch_size``)."""
        from ..generate import TraceRequest

        asked = [grounding_prompt(self.entry, r) for r in requests]
        traces = [TraceRequest(trace_id=f"{r.item_id}|{r.image_index}", question=q, images=[r.image])
                  for r, q in zip(requests, asked)]
        # token ids only: the answer's boxes are read from the text, nothing of the attention is needed
        generations = self.generator.generate_ids(traces)
        return [self._outcome(r, q, g, prompting.thinking_open(self.generator.prompt_text(t)))
                for r, q, g, t in zip(requests, asked, generations, traces)]

    def _outcome(self, request: Request, asked: str, generation, thinking_open: bool = False) -> Outcome:
        outcome = Outcome.of(request, asked=asked, coordinates=formats.SPACES[self.format])
        if not generation.ok:
            return outcome.fail("failed", generation.error or "generation failed")
        try:
            outcome.resized = coords.processed_size(self.processor, request.image, self.family)
        except Exception as exc:  # the processor took the image for generation, so this is not expected
            return outcome.fail("failed", f"the processor's resized size is unknown: {exc}")
        outcome.answer = self.decode(generation.token_ids)
        if generation.finish_reason == "length":
            outcome.rejects.append(BoxReject("cut off", f"the answer reached max_new_tokens "
                                             f"({self.generator.settings.max_new_tokens}) before it ended"))
        frame = coords.ImageFrame(outcome.width, outcome.height, *outcome.resized)
        return read_answer(outcome, self.format, frame, int(self.entry["max_boxes"]), thinking_open)


def read_answer(outcome: Outcome, fmt: str, frame: coords.ImageFrame, max_boxes: int,
                thinking_open: bool = False) -> Outcome:
    """Fill ``outcome`` from its ``answer`` (format ``fmt``) on an image seen as ``frame``: boxes and rejects.

    The boxes are in original pixels, the first ``max_boxes`` accepted; a
    recorded answer replayed through this gives what the stage gave
    (``thinking_open``: the prompt opened a thinking block, see formats.parse_answer).
    """
    parsed = formats.parse_answer(outcome.answer, fmt, thinking_open)
    outcome.coordinates = parsed.space
    outcome.rejects.extend(parsed.rejects)
    candidates = []
    for box in parsed.boxes:
        pixels = coords.to_pixels(box.coords, parsed.space, frame, box.fragment, box.index)
        if isinstance(pixels, BoxReject):
            outcome.rejects.append(pixels)
            continue
        entry: dict[str, Any] = {"box": list(pixels), "image": outcome.image_index}
        if box.label:
            entry["label"] = box.label
        candidates.append((entry, box.fragment, box.index))
    keep_first(outcome, candidates, max_boxes)
    outcome.rejects.sort(key=lambda r: -1 if r.box is None else r.box)
    return outcome
