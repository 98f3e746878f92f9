"""Evidence boxes from an open-vocabulary detector, given phrases from the question.

The detector is loaded through transformers' ``AutoModelForZeroShotObjectDetection``
and ``AutoProcessor`` like a hub checkpoint (hub id from the local cache or a
local path, ``trust_remote_code`` off unless set, ``revision`` for hub ids).
Supported architectures and how their processors are read:

* OWLv2 and OWL-ViT: the phrases are the text queries of one image;
  ``post_process_grounded_object_detection(threshold, target_sizes, text_labels)``
  gives boxes in original pixels (OWLv2 pads the image to a square before
  resizing, and its post-processing scales by the longer side, so a box may
  reach into the padding below or right of the image);
* Grounding DINO and MM Grounding DINO: the processor joins the phrases into
  one ``"a. b."`` caption; ``post_process_grounded_object_detection(input_ids,
  threshold, text_threshold, target_sizes)`` labels each box with the caption
  tokens scoring above ``text_threshold``.

``target_sizes`` is the original image's (height, width), so the boxes are in
its pixels. Then, in order of score (highest first): a box is clipped to the
image (:func:`peekaboo.grounding.coords.clip_to_image`; nothing inside:
``box outside image``, no area: ``degenerate box``), a box overlapping a kept
one by more than ``nms_iou`` is ``suppressed``, and boxes beyond
``max_boxes`` are ``over the box limit``. One image per forward pass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..logs import get_logger
from . import coords
from .agreement import iou_matrix
from .coords import BoxReject
from .phrases import detector_phrases
from .requests import Outcome, Request, keep_first

log = get_logger("grounding.detector")

# config model_type -> how its processor is called
ARCHITECTURES = {"owlv2": "owl", "owlvit": "owl", "grounding-dino": "grounding_dino",
                 "mm-grounding-dino": "grounding_dino"}


class DetectorLoadError(RuntimeError):
    """The detector could not be loaded; the message names the config key."""


def _hub_kwargs(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The source to load and the keyword arguments for a hub id or a local folder (as the traces stage loads)."""
    source = str(spec["source"])
    common: dict[str, Any] = {"trust_remote_code": bool(spec["trust_remote_code"])}
    if Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser())
        common["local_files_only"] = True
    else:
        common["revision"] = spec["revision"]
        if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0", "false", "False"):
            common["local_files_only"] = True
    return source, common


class DetectorSource:
    """A loaded open-vocabulary detector (``entry``: the dataset's validated ``boxes`` entry, kind detector)."""

    kind = "detector"

    def __init__(self, entry: Mapping[str, Any], where: str, device: str | None = None):
        import torch
        from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

        from ..models.loading import resolve_device

        spec = entry["model"]
        source, common = _hub_kwargs(spec)
        try:
            config = AutoConfig.from_pretrained(source, **common)
        except Exception as exc:
            raise DetectorLoadError(f"{where}.model: cannot read the config of '{source}': {exc}") from exc
        self.architecture = ARCHITECTURES.get(config.model_type)
        if self.architecture is None:
            raise DetectorLoadError(f"{where}.model: model_type '{config.model_type}' is not a supported detector "
                                    f"(supported: {', '.join(ARCHITECTURES)})")
        dtype = spec["dtype"]
        try:
            model = AutoModelForZeroShotObjectDetection.from_pretrained(
                source, dtype=dtype if dtype == "auto" else getattr(torch, dtype), **common)
            self.processor = AutoProcessor.from_pretrained(source, **common)
        except Exception as exc:
            raise DetectorLoadError(f"{where}.model: cannot load '{source}': {exc}") from exc
        self.device = resolve_device(device or spec["device"])
        self.model = model.to(self.device).eval()
        self.dtype = self.model.dtype  # the pixels go in as the weights are (auto: the checkpoint's)
        self.entry = entry
        self.model_id = str(spec["source"])
        self.batch_size = 1
        log.info("detector %s (%s) on %s", self.model_id, config.model_type, self.device)

    def detect(self, image: Any, phrases: Sequence[str]) -> list[tuple[float, str, list[float]]]:
        """(score, label, XYXY original pixels) of every detection above ``score_threshold``, best first."""
        import torch

        inputs = self.processor(text=[list(phrases)], images=[image], return_tensors="pt", truncation=True)
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items()}
        with torch.inference_mode():
            outputs = self.model(**inputs)
        size = [(image.height, image.width)]
        threshold = float(self.entry["score_threshold"])
        if self.architecture == "owl":
            found = self.processor.post_process_grounded_object_detection(
                outputs, threshold=threshold, target_sizes=size, text_labels=[list(phrases)])[0]
        else:
            found = self.processor.post_process_grounded_object_detection(
                outputs, input_ids=inputs["input_ids"], threshold=threshold,
                text_threshold=float(self.entry["text_threshold"]), target_sizes=size)[0]
        scores = found["scores"].float().cpu().tolist()
        boxes = found["boxes"].float().cpu().tolist()
        labels = list(found["text_labels"] or [""] * len(scores))
        order = sorted(range(len(scores)), key=lambda k: -scores[k])  # stable: ties keep the model's order
        return [(scores[k], str(labels[k]).strip(), boxes[k]) for k in order]

    def run(self, requests: Sequence[Request]) -> list[Outcome]:
        return [self._outcome(r) for r in requests]

    def _outcome(self, request: Request) -> Outcome:
        phrases = detector_phrases(request.question, self.entry["phrases"], int(self.entry["max_phrases"]))
        outcome = Outcome.of(request, asked="; ".join(phrases), phrases=phrases, coordinates=coords.PIXELS)
        if not phrases:
            return outcome.skip("no phrases", f"the question gives no phrase to look for (phrases: "
                                f"{self.entry['phrases']})")
        try:
            found = self.detect(request.image, phrases)
        except Exception as exc:  # one image the processor or model cannot take fails that request only
            return outcome.fail("failed", f"{type(exc).__name__}: {exc}")
        outcome.answer = json.dumps([{"score": round(s, 4), "label": label, "box": [round(v, 2) for v in box]}
                                     for s, label, box in found])
        frame = coords.ImageFrame(outcome.width, outcome.height)
        nms = self.entry["nms_iou"]
        kept_boxes: list[list[float]] = []
        candidates = []
        for index, (score, label, box) in enumerate(found):
            fragment = json.dumps({"score": round(score, 4), "label": label, "box": [round(v, 2) for v in box]})
            pixels = coords.clip_to_image(box, frame, fragment, index)
            if isinstance(pixels, BoxReject):
                outcome.rejects.append(pixels)
                continue
            if nms is not None and kept_boxes and float(iou_matrix([pixels], kept_boxes).max()) > float(nms):
                outcome.rejects.append(BoxReject("suppressed", f"IoU above nms_iou {nms} with a higher-scoring box",
                                                 fragment, index))
                continue
            kept_boxes.append(list(pixels))
            entry: dict[str, Any] = {"box": list(pixels), "image": request.image_index, "score": round(score, 4)}
            if label:
                entry["label"] = label
            candidates.append((entry, fragment, index))
        keep_first(outcome, candidates, int(self.entry["max_boxes"]))
        outcome.rejects.sort(key=lambda r: -1 if r.box is None else r.box)
        return outcome
