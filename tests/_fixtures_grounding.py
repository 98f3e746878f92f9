"""Tiny models for the boxes stage's tests: detectors built like hub checkpoints, and VLMs taught one answer.

Nothing is downloaded. The detectors are random-initialised from tiny configs
of the real architectures with their real processor classes (a tokenizer made
in code) and saved with ``save_pretrained``, so they load through
``AutoModelForZeroShotObjectDetection`` / ``AutoProcessor`` like a hub model.
Their outputs are noise, but of the real shape and geometry.

A random VLM answers noise, which tests the rejects but never a parseable
box. :func:`teach_answer` fine-tunes a tiny random VLM (``build_tiny``) for a
few hundred steps to answer one fixed text to the prompts it will get, so the
stage's real generation path (chat template, processor, generate, decoding
with special tokens) produces a known answer whose boxes can be followed to
the pixels; it is still the real model, only trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image


def build_tiny_owlv2(path: Path, seed: int = 0, image_size: int = 64) -> Path:
    """A tiny random OWLv2 (ViT patch 16 on ``image_size`` pixels: a 4 x 4 grid of box queries)."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    # OWLv2 masks a query whose first token id is 0 as padding: id 0 must not be the start token
    vocab = {"<pad0>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        for ch in alphabet:
            vocab[ch + suffix] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    config = Owlv2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=16),
        projection_dim=32,
        # small initial weights keep the box head near its per-patch prior instead of saturating at 0 or 1
        initializer_factor=0.05,
    )
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": image_size, "width": image_size}),
                               tokenizer=tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_grounding_dino(path: Path, seed: int = 0) -> Path:
    """A tiny random Grounding DINO (Swin backbone, BERT text encoder, 12 queries)."""
    import torch
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "'", "-"] + list(letters)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words + ["##" + c for c in letters])})
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                   image_size=64, out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=128),
        d_model=32, num_queries=12, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2, decoder_n_points=2,
        max_text_len=128, use_timm_backbone=False,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def teach_answer(path: Path, answer: str, prompts: Iterable[tuple[str, Image.Image]], steps: int = 300,
                 seed: int = 0) -> Path:
    """Fine-tune the saved tiny VLM at ``path`` (in place) to answer ``answer`` to each (prompt text, image).

    Teacher-forced on the answer tokens and the end-of-turn token with Adam;
    300 steps take a few seconds on one CPU thread and leave the answer's
    tokens the greedy choice by a wide margin.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: on a shared 2-core machine a second one mostly waits
    try:
        return _teach(path, answer, prompts, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _teach(path: Path, answer: str, prompts, steps: int, seed: int) -> Path:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from peekaboo import prompting

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    target = processor.tokenizer(answer, add_special_tokens=False)["input_ids"] + [int(eos)]
    batches = []
    for text, image in prompts:
        rendered = prompting.render(processor, prompting.messages(text, 1))
        enc = dict(processor(text=[rendered], images=[image], return_tensors="pt"))
        n = enc["input_ids"].shape[1]
        enc["input_ids"] = torch.cat([enc["input_ids"], torch.tensor([target])], 1)
        enc["attention_mask"] = torch.ones_like(enc["input_ids"])
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in enc:
                enc[key] = torch.cat([enc[key], torch.zeros(1, len(target), dtype=enc[key].dtype)], 1)
        labels = torch.full_like(enc["input_ids"], -100)
        labels[0, n:] = torch.tensor(target)
        enc["labels"] = labels
        batches.append(enc)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    model.save_pretrained(path)
    return path


def stage_prompts(entry: dict, items: Sequence, loader) -> list[tuple[str, Image.Image]]:
    """(prompt, image) of every request the boxes stage will make for ``items`` (RawItems) with ``entry``."""
    from peekaboo.grounding.requests import Request
    from peekaboo.grounding.vlm import grounding_prompt

    out = []
    for item in items:
        for k, source in enumerate(item.images):
            request = Request(item.item_id, k, len(item.images), item.question, loader(source))
            out.append((grounding_prompt(entry, request), request.image))
    return out


def official_resize(family: str, processor, width: int, height: int) -> tuple[int, int]:
    """(width, height) by transformers' own smart_resize of the family, with the processor's settings."""
    ip = processor.image_processor
    factor = ip.patch_size * ip.merge_size
    if family.startswith("glm"):
        from transformers.models.glm46v.image_processing_glm46v import smart_resize

        h, w = smart_resize(num_frames=ip.temporal_patch_size, height=height, width=width,
                            temporal_factor=ip.temporal_patch_size, factor=factor,
                            min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])
    else:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        h, w = smart_resize(height, width, factor=factor, min_pixels=ip.size["shortest_edge"],
                            max_pixels=ip.size["longest_edge"])
    return w, h


OUTPUTS = {"boxes": "jsonl", "answers": "answers.parquet", "rejects": "rejects.parquet",
           "agreement": "agreement.parquet", "summary": "summary.csv"}


def run_boxes_stage(root: Path, dataset: str, options: dict, boxes: dict, **entry) -> tuple[dict[str, Path], dict]:
    """Run the boxes stage in this process as its rule would; returns (output paths, the validated dataset entry).

    (Whether the stage runs only the code its rule declares is checked where
    the stage runs in a process of its own: the workflow tests.)
    """
    import peekaboo.config as pcfg
    from peekaboo import stage as contract
    from peekaboo import stages
    from peekaboo.grounding.stage import run_stage

    raw = {"datasets": {dataset: {"adapter": dataset, "options": options, "boxes": boxes, **entry}},
           "models": {"unused": {"source": "unused"}}}
    spec = pcfg.validate(raw, check_paths=False)["datasets"][dataset]
    results = Path(root) / "results"
    outputs = {name: results / "boxes" / f"{dataset}.{suffix}" for name, suffix in OUTPUTS.items()}
    call = contract.StageCall(
        inputs={}, outputs={k: str(v) for k, v in outputs.items()}, config={"dataset": spec, "seed": 0},
        results_dir=results, code=stages.code_files("boxes", f"peekaboo.datasets.{dataset}"),
        wildcards={"d": dataset}, threads=1, resources={"gpu": 0}, log=results / "logs" / "boxes" / f"{dataset}.log")
    contract.run(run_stage, call)
    return outputs, spec
