"""Thinking blocks: whether a rendered prompt opened one, and chains cut off inside it, on every family's template."""

import json

import pytest

from fixtures import benchmarks as fx
from peekaboo import prompting
from peekaboo.datasets import RawItem, get_adapter
from peekaboo.scoring import get_scorer
from peekaboo.models.tiny import FAMILIES, build_processor

# what each tiny family's real chat template does with thinking on (peekaboo.models.tiny's module doc)
OPENS_THINKING = {"qwen3_vl": True, "qwen2_5_vl": False, "qwen2_vl": False, "glm4v": False, "glm46v": False}


@pytest.fixture(scope="module")
def prompts():
    """family -> {thinking: rendered prompt} for one image and a question that quotes a <think> tag."""
    out = {}
    for family in FAMILIES:
        processor = build_processor(family)
        msgs = prompting.messages("Is the tag <think> part of this question?", 1)
        out[family] = {t: prompting.render(processor, msgs, thinking=t) for t in (True, False)}
    return out


def test_every_family_is_covered():
    assert set(OPENS_THINKING) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_thinking_open_on_each_familys_template(prompts, family):
    assert prompting.thinking_open(prompts[family][True]) is OPENS_THINKING[family]
    assert prompting.thinking_open(prompts[family][False]) is False  # GLM-4.6V closes an empty block


def test_thinking_open_reads_the_end_of_the_prompt():
    assert prompting.thinking_open("<|im_start|>assistant\n<think>\n")
    assert prompting.thinking_open("<|assistant|>\n<think>Let me see")  # a prefilled, still open block
    assert not prompting.thinking_open("<|assistant|>\n<think></think>")
    assert not prompting.thinking_open("<|user|>What does <think> mean?<|assistant|>")  # quoted in a turn
    assert not prompting.thinking_open("")


def _real_items(tmp_path):
    """One (scorer, item row) per real benchmark, the row read from the fixture copies (what ``score`` receives)."""
    options = fx.write_all(tmp_path)
    rows = {}
    for name in ("mathvista", "hallusionbench", "mmmu_pro", "visargs"):
        adapter = get_adapter(name, {"adapter": name, "options": options[name]})
        item = next(r for r in adapter.records() if isinstance(r, RawItem))
        rows[name] = (get_scorer(name), {"item_id": item.item_id, "answer": item.answer, "answer_type": item.answer_type,
                                "choices": item.choices, "meta": json.dumps(item.meta)})
    return rows


def _answers(row) -> str:
    """The gold answer as a model would state it (so a chain that reached it would score correct)."""
    return {"multi_choice": f"({row['answer']})"}.get(row["answer_type"], row["answer"])


@pytest.mark.parametrize("family", FAMILIES)
def test_cut_off_chains_stay_unparsed_on_every_familys_template(prompts, tmp_path, family):
    prompt = prompts[family][True]
    thinking_open = prompting.thinking_open(prompt)
    for name, (scorer, row) in _real_items(tmp_path).items():
        gold = _answers(row)
        thoughts = [
            "Let me look at the figure carefully. The left part shows",  # mid-sentence, no answer yet
            f"The figure shows it clearly, so the answer is {gold}. Answer: {gold}. But wait, let me",
            f"Hmm. \\boxed{{{gold}}}? I should double-check the",
        ]
        for thought in thoughts:
            # the model writes <think> itself unless the template already did
            response = thought if thinking_open else f"<think>{thought}"
            s = scorer.score(row, response, thinking_open=thinking_open)
            assert s.answer_text is None and s.truncated is True and s.correct in (False, None), (name, response)
            assert s.correct is not True
        # the same chain, closed and answered, is read (the cut-off case is not unreadable for another reason)
        closed = f"{thoughts[1]}</think>\n\nAnswer: {gold}" if thinking_open else \
            f"<think>{thoughts[1]}</think>\n\nAnswer: {gold}"
        s = scorer.score(row, closed, thinking_open=thinking_open)
        assert s.truncated is False and s.correct is True, (name, closed, s)
