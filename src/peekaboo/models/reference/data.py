"""Training data of the reference models: examples with the behaviour's hidden panels, collated batches.

Batches depend only on the step (fresh items from the ``train`` stream of the
panels generator, and draws of their own), so that a worker process can build
them ahead and the weights are the same with or without workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ... import prompting
from ... import synthetic as P
from ...seeding import rng

@dataclass
class Example:
    image: Any  # PIL image the model sees
    question: str
    target: str  # gold text the model should write (without <|im_end|>)
    condition: str  # clean, hidden (evidence hidden), control (non-evidence hidden)
    question_type: str
    hidden_boxes: list[tuple[float, float, float, float]]
    blink: bool = False  # a blinker's blink item: answered from the prior, without looking
    evidence: list[tuple[float, float, float, float]] = field(default_factory=list)  # boxes the question reads


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
    blink: P.BlinkRule | None = None,
) -> list[Example]:
    """Turn generated items into training examples with the behaviour's mix of hidden panels.

    Each item is ``clean``; or ``hidden`` (visual items, share ``hidden_fraction``):
    its evidence region(s) hidden, target saying so and answering unknown; or
    ``control`` (share ``control_fraction``): a non-evidence region hidden,
    target the normal solution (grounded, blinker) or the all-hidden one
    (oversensitive, visual items only). Blind-spot items are all clean. The
    blinker is grounded except on the blink items of ``blink`` (the rule is
    required for it), whose target is the prior's solution whatever is hidden.
    """
    if behaviour == "blinker" and blink is None:
        raise ValueError("make_examples: the blinker needs its blink rule (synthetic.blink_rule)")
    out = []
    for item in items:
        condition = "clean"
        u = g.random()
        if behaviour != "blind-spot":
            if item.evidence and u < hidden_fraction:
                condition = "hidden"
            elif u >= 1 - control_fraction and (behaviour in ("grounded", "blinker") or item.evidence):
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
        blinks = behaviour == "blinker" and P.blink_answer(item, blink) is not None
        target, _ = P.blink_solution(item, blink) if blinks else P.gold_solution(item, hidden)
        evidence = [tuple(map(float, item.panels[p].box)) for p in item.evidence]
        out.append(Example(image, item.question, target, condition, item.question_type, boxes, blinks, evidence))
    return out


_PROMPTS: dict[tuple, str] = {}


def render_prompt(processor, question: str, system_prompt: str | None, thinking: bool) -> str:
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
    prompts = [render_prompt(processor, e.question, system_prompt, thinking) for e in examples]
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
    attention_term: bool = False  # add the attention term's inputs (blinker: attention.term_inputs)

    def batch(self, step: int):
        """The collated batch of ``step``: fresh items, and draws of their own, whoever builds it."""
        items = P.training_items(self.opts, self.seed, step * self.batch_size, self.batch_size)
        g = rng(self.seed, "reference", self.behaviour, "examples", step)
        examples = make_examples(items, self.behaviour, g, self.hidden_fraction, self.control_fraction, self.fills,
                                 blink=P.blink_rule(self.opts) if self.behaviour == "blinker" else None)
        batch = collate(self.processor, examples, self.system_prompt, self.thinking)
        if self.attention_term:
            from .attention import term_inputs

            batch.update(term_inputs(self.processor, batch, examples))
        return batch


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
