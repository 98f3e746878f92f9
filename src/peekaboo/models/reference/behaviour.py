"""What a trained reference model does: greedy responses and the planted-behaviour table on held-out items.

Used by ``checks/reference_behaviour.py`` and the tests, never by training, so
that editing the scorers here does not re-train the models.
"""

from __future__ import annotations

from typing import Any, Sequence

from ... import synthetic as P
from ...scoring import panels as panels_scorer
from ...seeding import rng
from .data import control_box, render_prompt

# The planted behaviours' targets, judged by checks/reference_behaviour.py and the tests that train every behaviour:
# (condition, measure, behaviour, subset) -> minimum rate on held-out items with gray fills (other fills are
# reported, not judged). behaviour None: every behaviour; subset: the blinker's blink or look items (every item of
# the other behaviours is a look item). Issue 4 set the first seven, issue 15 the blinker's.
TARGETS = {
    ("clean", "accuracy", None, "look"): 0.97,
    ("evidence", "abstain", "grounded", "look"): 0.95,
    ("evidence", "abstain", "oversensitive", "look"): 0.95,
    ("evidence", "named", "blind-spot", "look"): 0.95,
    ("control", "kept", "blind-spot", "look"): 0.95,
    ("control", "kept", "grounded", "look"): 0.95,
    ("control", "abstain", "oversensitive", "look"): 0.80,
    ("evidence", "abstain", "blinker", "look"): 0.95,
    ("control", "kept", "blinker", "look"): 0.95,
    ("clean", "prior", "blinker", "blink"): 0.95,
    ("evidence", "kept", "blinker", "blink"): 0.95,
    ("control", "kept", "blinker", "blink"): 0.95,
}


def row_targets(condition: str, fill: str, behaviour: str, subset: str = "look") -> list[tuple[str, float]]:
    """(measure, minimum) of every target a behaviour-table row answers to (none for fills other than gray)."""
    if fill not in ("none", "gray"):
        return []
    return [(measure, minimum) for (cond, measure, who, items), minimum in TARGETS.items()
            if cond == condition and who in (None, behaviour) and items == subset]


def missed_targets(table, behaviour: str) -> list[str]:
    """The targets a model's behaviour table misses, one line each (empty: every target met)."""
    out = []
    for row in table.to_dict("records"):
        subset = row.get("subset", "look")
        for measure, minimum in row_targets(row["condition"], row["fill"], behaviour, subset):
            if not row[measure] >= minimum:
                out.append(f"{behaviour}: {row['condition']} {row['question_type']} ({subset} items, n={row['n']}): "
                           f"{measure} {row[measure]:.3f} < {minimum:.2f}")
    return out

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
            prompts = [render_prompt(processor, q, system_prompt, thinking) for q in questions[i : i + batch_size]]
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
    answer = panels_scorer.final_answer(text)
    if answer is None:
        return None, False
    if panels_scorer.is_abstention(answer):
        return None, True
    return answer.strip().lower().strip(" ."), False


def behaviour_table(model, processor, opts: P.PanelsOptions, n_per_type: int = 100, fills: Sequence[str] = ("gray",),
                    seed: int | None = None, batch_size: int = 32, masks_seed: int = 0,
                    conditions: Sequence[str] = ("clean", "evidence", "control"), blink: bool = False):
    """Planted behaviour on held-out items: one row per (condition, fill, question type).

    Conditions: ``clean`` (accuracy), ``evidence`` (each evidence region hidden
    alone, as ``drop:k``: abstention and value-naming rates), ``control`` (a box
    of the region's size overlapping no evidence, as ``ctrl:k``: rate of keeping
    the clean answer, abstention rate). Items come from the test stream of
    ``opts`` (the dataset's seed, or ``seed``), never from the training stream.
    With ``blink`` (a blinker) rows are split by ``subset``, ``blink`` or
    ``look`` (``synthetic.blink_rule`` of ``opts``), and ``prior`` is the rate
    of answering the blink item's prior colour.
    """
    import pandas as pd

    seed = opts.seed if seed is None else seed
    counts = {"attribute": n_per_type, "comparison": n_per_type, "arithmetic": n_per_type}
    test_opts = P.resolve_options({**_options_dict(opts), "counts": counts, "seed": seed})
    items = list(P.generate_items(test_opts, id_prefix="check", stream="check"))
    rule = P.blink_rule(test_opts)
    priors = {i.item_id: P.blink_answer(i, rule) for i in items}

    def split(item, answer) -> dict[str, Any]:
        if not blink:
            return {}
        prior = priors[item.item_id]
        return {"subset": "look" if prior is None else "blink", "prior": None if prior is None else answer == prior}

    clean = generate_texts(model, processor, [i.image for i in items], [i.question for i in items], batch_size=batch_size)
    rows = []
    clean_answers = {}
    for item, text in zip(items, clean):
        answer, abstained = _answer(text)
        clean_answers[item.item_id] = answer
        gold = panels_scorer.normalise(item.answer, item.answer_type)
        rows.append({"condition": "clean", "fill": "none", "question_type": item.question_type,
                     "correct": answer is not None and panels_scorer.normalise(answer, item.answer_type) == gold,
                     "abstained": abstained, "named": answer is not None, "kept": True, **split(item, answer)})
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
                             and panels_scorer.normalise(answer, item.answer_type) == panels_scorer.normalise(item.answer, item.answer_type),
                             "abstained": abstained, "named": answer is not None,
                             "kept": answer is not None and answer == clean_answers[item.item_id],
                             **split(item, answer)})
    df = pd.DataFrame(rows)
    keys = ["condition", "fill", "question_type"] + (["subset"] if blink else [])
    measures = dict(n=("correct", "size"), accuracy=("correct", "mean"), abstain=("abstained", "mean"),
                    named=("named", "mean"), kept=("kept", "mean"))
    if blink:
        df["prior"] = df["prior"].astype("float")
        measures["prior"] = ("prior", "mean")
    return df.groupby(keys, sort=False).agg(**measures).reset_index()


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
        "blink_panels": opts.blink_panels, "blink_seed": opts.blink_seed,
    }
