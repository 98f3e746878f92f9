"""Build the response corpus that holds the project's scorers against the ported official rules.

    python tests/data/scorer_corpus/build_corpus.py            # write {mathvista,mmmu_pro,hallusionbench}.jsonl
    python tests/data/scorer_corpus/build_corpus.py import \\
        --testmini testmini.json --mathvista-results DIR --mmmu-outputs COT.jsonl DIRECT.jsonl VISION_COT.jsonl \\
        --hallusionbench HallusionBench.json --hallusionbench-sample HallusionBench_result_sample.json

Each corpus line is one response with the item it answers, in the item's
published format (MathVista ``testmini.json``, MMMU-Pro's parquet columns,
``HallusionBench.json``):

    {"id": "mathvista-g0001", "benchmark": "mathvista", "source": "generated", "kind": "qwen3/boxed",
     "thinking_open": true, "item": {...}, "response": "..."}

Three sources, all deterministic:

- ``real``: responses the official repositories publish with their own
  scoring (``official_samples.jsonl``, written once by the ``import``
  command from the files named in README.md): MathVista's ``results/``
  (GPT-4, LLaVA, Bard, Claude; with the recorded GPT extraction,
  prediction and verdict), MMMU-Pro's ``mmmu-pro/output`` (GPT-4o,
  standard 10 options; with the recorded parse), HallusionBench's
  ``HallusionBench_result_sample.json`` (GPT-4V).
- ``generated``: built here from those items with a fixed seed, in the
  styles the study's models answer in: Qwen3-VL-Thinking (the template opens
  ``<think>``; the response holds ``reasoning</think>answer``), GLM-4.6V
  (``<think>...</think><answer>...<|begin_of_box|>X<|end_of_box|>...</answer>``)
  and a model that does not think; finals as letters, option text, numbers
  with units and precision, LaTeX, lists, yes/no phrasings, several stated
  answers, abstentions, empty and garbage; and chains cut off mid-thought.
- ``families``: 120 responses per template family (``FAMILY_NAMES``), each
  built to run one branch of an official parser or one form thinking models
  write (quoted answers, letters in quotes or bold, an answer followed by its
  working, number words, long LaTeX, ``\\boxed{}`` in the thinking, several
  candidates, units, other languages, ...), with the answer it states
  (``intended``).
- ``hand``: ``hand_cases.jsonl``, written by hand (hard cases).

The command is deterministic: running it again rewrites the same files
(``tests/test_scorer_agreement.py`` checks that the committed ones match).
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
SAMPLES = HERE / "official_samples.jsonl"
HAND = HERE / "hand_cases.jsonl"
BENCHMARKS = ("mathvista", "mmmu_pro", "hallusionbench")
SEED = 20260417
N_GENERATED = 400  # per benchmark
# MathVista's official rules decide only on bare answers (a choice's text, a number Python reads whole,
# 'The answer is "X".'); GPT extracts everything else. These many more bare answers exercise them.
N_BARE_MATHVISTA = 100

# ============================================================================
# import: a fixed selection from the official repositories' published files

# MathVista's results/ files used for real responses (each holds all 1,000 testmini problems)
MV_RUNS = ("gpt4/output_gpt4_2shot_solution.json", "llava/output_llava_llama_2_13b.json", "bard/output_bard.json",
           "claude/output_claude.json")
MV_ITEM_KEYS = ("pid", "question", "choices", "unit", "precision", "answer", "question_type", "answer_type")
MMMU_ITEM_KEYS = ("id", "question", "options", "answer", "subject")
HB_ITEM_KEYS = ("category", "subcategory", "visual_input", "set_id", "figure_id", "sample_note", "question_id",
                "question", "gt_answer_details", "gt_answer", "filename")


def _choice_kind(choices: list[str]) -> str:
    if all(re.fullmatch(r"[A-E]", c) for c in choices):
        return "letters"
    if sorted(c.lower() for c in choices) == ["no", "yes"]:
        return "yesno"
    if any("\\" in c or "√" in c for c in choices):
        return "latex"
    if all(re.fullmatch(r"-?[0-9.]+", c) for c in choices):
        return "numbers"
    if any(re.search(r"[0-9]", c) for c in choices):
        return "numbers_with_units"
    return "text"


def import_mathvista(testmini: Path, results: Path) -> list[dict[str, Any]]:
    problems = json.loads(testmini.read_text(encoding="utf-8"))
    by_pid = sorted(problems.values(), key=lambda p: int(p["pid"]))
    picked: list[dict] = []
    quota = {"float": 40, "list": 2, "integer": 40, "letters": 6, "yesno": 10, "text": 12, "numbers": 10,
             "numbers_with_units": 10, "latex": 8}
    for p in by_pid:
        kind = _choice_kind(p["choices"]) if p["question_type"] == "multi_choice" else p["answer_type"]
        if quota.get(kind, 0) > 0 and len(p["question"]) < 300:
            quota[kind] -= 1
            picked.append(p)
    outputs = {run: json.loads((results / run).read_text(encoding="utf-8")) for run in MV_RUNS}
    lines = []
    for i, p in enumerate(picked):
        line = {"benchmark": "mathvista", "item": {k: p[k] for k in MV_ITEM_KEYS}}
        if i % 4 != 3:  # three items in four carry a real response, from the runs in turn
            run = MV_RUNS[i % len(MV_RUNS)]
            rec = outputs[run][p["pid"]]
            line["real"] = {"file": f"results/{run}", "response": rec["response"],
                            "recorded": {k: rec.get(k) for k in ("extraction", "prediction", "true_false")}}
        lines.append(line)
    return lines


def import_mmmu(cot: Path, direct: Path, vision_cot: Path) -> list[dict[str, Any]]:
    lines = []
    for path, offset, step in ((cot, 0, 20), (direct, 5, 10), (vision_cot, 7, 40)):
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        for row in rows[offset::step]:
            lines.append({"benchmark": "mmmu_pro", "item": {k: row[k] for k in MMMU_ITEM_KEYS},
                          "real": {"file": f"mmmu-pro/output/{path.name}", "response": row["response"],
                                   "recorded": {"pred_indexs": row["pred_indexs"], "if_right": row["if_right"]}}})
    return lines


def _hb_key(r: dict) -> str:
    return "_".join(str(r[k]) for k in ("category", "subcategory", "set_id", "figure_id", "question_id"))


def import_hallusionbench(full: Path, sample: Path) -> list[dict[str, Any]]:
    records = json.loads(full.read_text(encoding="utf-8"))
    by_key = {_hb_key(r): r for r in records}
    lines, seen = [], set()
    answered = [r for r in json.loads(sample.read_text(encoding="utf-8"))
                if _hb_key(r) in by_key and by_key[_hb_key(r)]["question"] == r["question"]]
    for r in answered:
        rec = by_key[_hb_key(r)]
        seen.add(_hb_key(r))
        lines.append({"benchmark": "hallusionbench", "item": {k: rec.get(k) for k in HB_ITEM_KEYS},
                      "real": {"file": "HallusionBench_result_sample.json", "response": r["model_prediction"]}})
    hard = [r for r in records if r["visual_input"] == "2" and _hb_key(r) not in seen]
    for r in hard[::6]:
        lines.append({"benchmark": "hallusionbench", "item": {k: r.get(k) for k in HB_ITEM_KEYS}})
    return lines


def cmd_import(args: argparse.Namespace) -> None:
    lines = (import_mathvista(Path(args.testmini), Path(args.mathvista_results))
             + import_mmmu(*map(Path, args.mmmu_outputs))
             + import_hallusionbench(Path(args.hallusionbench), Path(args.hallusionbench_sample)))
    with open(SAMPLES, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"wrote {len(lines)} lines to {SAMPLES}")


# ============================================================================
# generate


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(x) for x in fh if x.strip()]


# --- how the study's models wrap what they finally say ------------------------------------------

THINK_SENTENCES = [
    "Let me look at the figure carefully.",
    "First I read the labels in the image.",
    "Hmm, wait, I should double-check that.",
    "The question asks for a single value.",
    "Let me reconsider the other possibility.",
    "Okay, so the key quantity is visible near the top.",
]


def _reasoning(rng: random.Random, hints: list[str]) -> str:
    """A few sentences of thinking, with hints (other candidates) mixed in as real chains have them."""
    parts = rng.sample(THINK_SENTENCES, k=3) + hints
    rng.shuffle(parts)
    return " ".join(parts)


def wrap(style: str, rng: random.Random, final: str, hints: list[str], glm_final: str | None = None):
    """(response, thinking_open, template) for a final answer in a model's style."""
    reasoning = _reasoning(rng, hints)
    if style == "plain":  # a model that does not think: the answer, maybe after neutral working
        return (final if rng.random() < 0.5 else f"{_reasoning(rng, [])}\n\n{final}"), False, None
    if style == "plain_mentions":  # ... whose working names other candidates before the final answer
        return f"{reasoning}\n\n{final}", False, None
    if style == "qwen3":  # Qwen3-VL-Thinking: the template wrote <think>, the model closes it
        return f"{reasoning}\n</think>\n\n{final}", True, "qwen3_vl"
    if style == "glm":  # GLM-4.6V: think block, then the answer with its box tokens, bare or in a sentence
        answer = glm_final or final
        if glm_final and rng.random() < 0.5:
            answer = f"Based on the figure, the answer is {glm_final}."
        return f"<think>{reasoning}</think><answer>{answer}</answer>", False, "glm46v"
    if style == "cut_qwen3":  # cut off mid-thought: no tag at all, maybe a tentative answer inside
        return (f"{reasoning} {final}" if rng.random() < 0.6 else reasoning), True, "qwen3_vl"
    if style == "cut_glm":
        return (f"<think>{reasoning} {final}" if rng.random() < 0.6 else f"<think>{reasoning}"), False, "glm46v"
    raise ValueError(style)


# The mix of a run of the study (thinking models only): complete thinking chains in the two families' styles,
# a few chains cut off at the token limit (one in 30); and, as the study's jsonl datasets may be answered by
# models that do not think, some plain answers (the real responses of the official repositories are plain too),
# one in 30 with working that names other candidates before the answer.
STYLES = ["plain"] * 4 + ["plain_mentions"] + ["qwen3"] * 14 + ["glm"] * 10 + ["cut"]
GARBAGE = ["", "   ", "asdf qwer zxcv", "???", "<|im_end|>", "\\boxed{}", "...", "1 2 3 4 5 6 7 8",
           "The image shows a chart.", "lorem ipsum dolor sit amet"]
ABSTAIN = ["I cannot determine the answer from the image.", "Answer: unknown",
           "The value cannot be determined from the figure.", "I don't know.",
           "There is not enough information to answer."]


def _pick(rng: random.Random, kinds: dict[str, str], asked: tuple[str, ...]) -> str:
    """A kind of final answer: the forms the benchmark's prompt asks for six times as often as each other form,
    abstentions and garbage half as often (instructed to answer, the study's models rarely decline)."""
    names = list(kinds)
    return rng.choices(names, weights=[6 if k in asked else 0.5 if k in ("abstain", "garbage") else 1
                                       for k in names])[0]


def _glm_box(x: str) -> str:
    return f"<|begin_of_box|>{x}<|end_of_box|>"


# --- MathVista ------------------------------------------------------------------------------------


def _mv_wrong_number(gold: str, rng: random.Random, decimals: int) -> str:
    value = float(gold) + rng.choice([-3, -1, 1, 2, 7]) * (10 ** -decimals if decimals else 1)
    return f"{value:.{decimals}f}"


def mathvista_final(item: dict, rng: random.Random) -> tuple[str, str, list[str], str | None]:
    """(kind, final answer text, hints for the thinking, GLM's final) for a MathVista item."""
    qt, at = item["question_type"], item["answer_type"]
    right = rng.random() < 0.65
    if qt == "multi_choice":
        choices = item["choices"]
        letters = [chr(65 + i) for i in range(len(choices))]
        gold_i = choices.index(item["answer"])
        i = gold_i if right else rng.choice([k for k in range(len(choices)) if k != gold_i] or [gold_i])
        other = letters[(i + 1) % len(choices)]
        text, letter = choices[i], letters[i]
        kinds = {
            "bare_text": text, "bare_letter": letter, "paren_letter": f"({letter})",
            "answer_letter": f"Answer: {letter}", "answer_paren_text": f"Answer: ({letter}) {text}",
            "correct_answer_is": f"The correct answer is ({letter}) {text}.",
            "quick_pattern": f'The answer is "{text}".', "boxed_letter": f"\\boxed{{{letter}}}",
            "boxed_text_letter": f"$\\boxed{{\\text{{{letter}}}}}$", "bold_answer": f"**Answer:** {letter}",
            "final_answer_text": f"Final answer: {text}",
            "two_answers": f"Answer: {other}\nWait, that is wrong; re-reading the figure.\nAnswer: {letter}",
            "option_sentence": f"So the right option is {letter}.",
            "abstain": rng.choice(ABSTAIN), "garbage": rng.choice(GARBAGE),
        }
        kind = _pick(rng, kinds, ("answer_letter", "bare_letter", "boxed_letter"))
        return kind, kinds[kind], [f"Maybe ({other})?", f"Option {other} does not fit."], _glm_box(letter)
    if at in ("integer", "float"):
        decimals = int(item["precision"] or 0) if at == "float" else 0
        gold = item["answer"]
        value = gold if right else _mv_wrong_number(gold, rng, decimals)
        unit = item.get("unit") or rng.choice(["cm", "degrees", "units", "kg"])
        extra = value + rng.choice(["1", "4", "9"]) if at == "float" else value  # more decimals than asked
        kinds = {
            "bare_number": value, "bare_more_decimals": extra, "answer_number": f"Answer: {value}",
            "number_with_unit": f"Answer: {value} {unit}", "boxed_number": f"\\boxed{{{value}}}",
            "boxed_with_text_unit": f"\\boxed{{{value}\\text{{ {unit}}}}}",
            "sentence_number": f"So the result is {value}.", "quick_pattern": f'The answer is "{value}".',
            "latex_inline": f"The final answer is ${value}$.", "two_answers": f"Answer: {value}1\nCorrection:\nAnswer: {value}",
            "thousands": f"Answer: {int(float(value)):,}" if abs(float(value)) >= 1000 else f"Answer: {value}",
            "degree_sign": f"{value}°", "abstain": rng.choice(ABSTAIN), "garbage": rng.choice(GARBAGE),
            "unicode_minus": f"Answer: −{value.lstrip('-')}" if value.startswith("-") else f"Answer: {value}",
        }
        kind = _pick(rng, kinds, ("answer_number", "bare_number", "boxed_number"))
        wrong = _mv_wrong_number(gold, rng, decimals)
        return kind, kinds[kind], [f"Perhaps it is {wrong}?", f"That gives {wrong} {unit}, no."], _glm_box(value)
    # list
    gold = ast.literal_eval(item["answer"])
    value = gold if right else [*gold[:-1], gold[-1] + 1]
    kinds = {
        "bare_list": str(value), "answer_list": f"Answer: {value}", "compact_list": "[" + ",".join(map(str, value)) + "]",
        "and_list": f"Answer: {' and '.join(map(str, value))}" if len(value) == 2 else f"Answer: {value}",
        "boxed_list": f"\\boxed{{{value}}}", "sentence_list": f"The years are {value[0]} and {value[-1]}.",
        "garbage": rng.choice(GARBAGE),
    }
    kind = _pick(rng, kinds, ("answer_list", "bare_list", "boxed_list"))
    return kind, kinds[kind], ["Maybe [1, 2]?", "Not [0]."], _glm_box(str(value))


# --- MMMU-Pro -------------------------------------------------------------------------------------


def mmmu_final(item: dict, rng: random.Random) -> tuple[str, str, list[str], str | None]:
    options = ast.literal_eval(item["options"])
    letters = [chr(65 + i) for i in range(len(options))]
    gold_i = letters.index(item["answer"])
    right = rng.random() < 0.6
    i = gold_i if right else rng.choice([k for k in range(len(options)) if k != gold_i] or [gold_i])
    letter, text = letters[i], options[i]
    other = letters[(i + 3) % len(options)]
    kinds = {
        "answer_letter": f"Answer: {letter}", "bare_letter": letter, "paren_letter": f"({letter})",
        "letter_dot_text": f"{letter}. {text}", "answer_is_paren": f"The answer is ({letter}).",
        "boxed_letter": f"\\boxed{{{letter}}}", "boxed_text_letter": f"\\boxed{{\\text{{{letter}}}}}",
        "bold_answer": f"**Answer: {letter}**", "answer_letter_because": f"Answer: {letter}. This follows from the table.",
        "option_text_sentence": f"After weighing everything, the best choice is clearly {text}.",
        "two_answers": f"Answer: {other}\nHmm, no. Re-checking the options.\nAnswer: {letter}",
        "lowercase_answer": f"answer: {letter.lower()}", "option_word": f"Option {letter}",
        "markdown_final": f"### Final Answer\n\n**{letter}**", "abstain": rng.choice(ABSTAIN),
        "garbage": rng.choice(GARBAGE),
    }
    kind = _pick(rng, kinds, ("answer_letter", "bold_answer", "answer_letter_because"))
    return kind, kinds[kind], [f"Option ({other}) is tempting.", f"{other}. {options[(i + 3) % len(options)]} is wrong."], \
        f"Answer: {_glm_box(letter)}"


# --- HallusionBench -------------------------------------------------------------------------------


def hallusionbench_final(item: dict, rng: random.Random) -> tuple[str, str, list[str], str | None]:
    gold = "yes" if item["gt_answer"] == "1" else "no"
    said = gold if rng.random() < 0.6 else ("no" if gold == "yes" else "yes")
    other = "no" if said == "yes" else "yes"
    cap = said.capitalize()
    kinds = {
        "bare": cap, "bare_period": f"{cap}.", "lower": said, "upper": said.upper(),
        "sentence": f"{cap}, {item['gt_answer_details'] or 'that is what the figure shows'}",
        "answer_colon": f"Answer: {said}", "answer_is": f"The answer is {said}.",
        "boxed": f"\\boxed{{{cap}}}", "boxed_text": f"$\\boxed{{\\text{{{cap}}}}}$", "bold": f"**{cap}**",
        "true_false": "True" if said == "yes" else "False",
        "two_answers": f"Answer: {other}\nOn second thought, looking again.\nAnswer: {said}",
        "explained_then_line": f"{cap}, the figure shows it.\nThe labels confirm this reading.",
        "hedge": f"{cap} and {other}, it depends on the reading.", "abstain": rng.choice(
            ["I cannot tell from the image.", "There is no way to tell.", "It is impossible to determine.",
             "Not enough information is given.", "Answer: unknown"]),
        "garbage": rng.choice(GARBAGE),
    }
    kind = _pick(rng, kinds, ("answer_colon", "bare", "sentence"))
    return kind, kinds[kind], [f"Could the answer be {other}?", "I need to compare both parts."], _glm_box(cap)


FINALS: dict[str, Callable] = {"mathvista": mathvista_final, "mmmu_pro": mmmu_final, "hallusionbench": hallusionbench_final}


def generate(benchmark: str, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rng = random.Random(f"{SEED}-{benchmark}")
    items = [s["item"] for s in samples if s["benchmark"] == benchmark]
    out = []
    for n in range(N_GENERATED):
        item = items[n % len(items)]
        style = STYLES[n % len(STYLES)]
        if style == "cut":
            style = "cut_qwen3" if (n // len(STYLES)) % 2 == 0 else "cut_glm"
        kind, final, hints, glm_final = FINALS[benchmark](item, rng)
        boxed = style == "glm" and kind not in ("abstain", "garbage")  # GLM boxes its answer
        response, thinking_open, template = wrap(style, rng, final, hints, glm_final=glm_final if boxed else None)
        out.append({"id": f"{benchmark}-g{n + 1:04d}", "benchmark": benchmark, "source": "generated",
                    "kind": f"{style}/{'box' if boxed else kind}", "template": template, "thinking_open": thinking_open,
                    "item": item, "response": response})
    if benchmark == "mathvista":
        for n in range(N_BARE_MATHVISTA):
            item = items[(7 * n) % len(items)]
            style = ("plain", "qwen3", "glm")[n % 3]
            kind, final = mathvista_bare(item, rng)
            response, thinking_open, template = wrap(style, rng, final, [], glm_final=final)
            out.append({"id": f"{benchmark}-b{n + 1:04d}", "benchmark": benchmark, "source": "generated",
                        "kind": f"{style}/{kind}", "template": template, "thinking_open": thinking_open,
                        "item": item, "response": response})
    return out


def mathvista_bare(item: dict, rng: random.Random) -> tuple[str, str]:
    """A bare final answer, right or wrong, in the forms the official quick paths read."""
    if item["question_type"] == "multi_choice":
        return "bare_choice", rng.choice(item["choices"])
    if item["answer_type"] == "list":
        return "bare_list", item["answer"]
    gold = float(item["answer"])
    decimals = int(item["precision"] or 0) if item["answer_type"] == "float" else 0
    value = gold + rng.choice([0, 0, 0, 1, -1]) * 10 ** -decimals
    forms = [f"{value:.{decimals}f}", f"{value:.{decimals + 2}f}", f" {value:.{decimals}f}\n"]
    if item["answer_type"] == "integer":
        forms += [f"{value:.1f}", f"{value + 0.6:.1f}"]  # read as a float, truncated by int(float(x))
    return "bare_number", rng.choice(forms)


# ============================================================================
# families: responses built from templates over the items, by what the official parsers branch on and what
# thinking models write; each case carries what the response states (``intended``: the extraction a reader,
# GPT's extraction included, takes from it), and the check labels it with the ported official rule


N_FAMILY = 120  # cases per family
FAMILY_STYLES = ("plain", "qwen3", "glm")

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD = ("zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
        "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth").split()


def _words(n: int, rng: random.Random) -> str:
    """0..999 in words, in the forms people write ("twenty-one", "a hundred and five", "two hundred")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (("-" if rng.random() < 0.7 else " ") + _ONES[n % 10] if n % 10 else "")
    head = rng.choice(["a hundred", "one hundred"]) if n // 100 == 1 else f"{_ONES[n // 100]} hundred"
    return head + (f" and {_words(n % 100, rng)}" if n % 100 else "")


def _family_wrap(n: int, rng: random.Random, final: str, hints: list[str], styles=FAMILY_STYLES):
    return wrap(styles[n % len(styles)], rng, final, hints)


FAMILY_NAMES = {"mathvista": ("quoted", "letters", "working", "number_words", "latex", "boxed_in_thinking", "candidates",
                               "units", "language", "bare_branches"),
                "mmmu_pro": ("answer_line", "brackets", "plain_letters", "content", "no_candidate", "answer_departures"),
                "hallusionbench": ("yes_no_words", "punctuation")}


def _line(benchmark: str, family: str, n: int, kind: str, style_out, item: dict, intended) -> dict[str, Any]:
    """A family's corpus line; its id is f<family number><case number> (mathvista-f2017: family 2, case 17)."""
    response, thinking_open, template = style_out
    style = "plain" if template is None else ("qwen3" if template == "qwen3_vl" else "glm")
    return {"id": f"{benchmark}-f{FAMILY_NAMES[benchmark].index(family)}{n + 1:03d}", "benchmark": benchmark, "source": "generated",
            "family": family, "kind": f"{style}/{kind}", "template": template, "thinking_open": thinking_open,
            "item": item, "response": response, "intended": intended}


def _mv_number(item: dict, rng: random.Random, right: bool | None = None) -> str:
    decimals = int(item["precision"] or 0) if item["answer_type"] == "float" else 0
    if right is None:
        right = rng.random() < 0.6
    value = float(item["answer"]) + (0 if right else rng.choice([-2, -1, 1, 3]) * 10 ** -decimals)
    return f"{value:.{decimals}f}"


def _mv_choice(item: dict, rng: random.Random) -> tuple[str, str, str, str]:
    """(letter, text, another letter, its text) for a multiple-choice item, right six times in ten."""
    choices = item["choices"]
    gold = choices.index(item["answer"])
    i = gold if rng.random() < 0.6 else rng.choice([k for k in range(len(choices)) if k != gold] or [gold])
    o = (i + 1) % len(choices)
    return chr(65 + i), choices[i], chr(65 + o), choices[o]


def mathvista_families(items: list[dict]) -> list[dict[str, Any]]:
    mc = [i for i in items if i["question_type"] == "multi_choice"]
    num = [i for i in items if i["answer_type"] in ("integer", "float")]
    ints = [i for i in items if i["answer_type"] == "integer"]
    lists = [i for i in items if i["answer_type"] == "list"]
    floats = [i for i in items if i["answer_type"] == "float"]
    out: list[dict[str, Any]] = []

    def family(name: str, make: Callable[[int, random.Random], tuple[str, dict, str, Any, list[str]]], styles=FAMILY_STYLES):
        rng = random.Random(f"{SEED}-mathvista-{name}")
        for n in range(N_FAMILY):
            kind, item, final, intended, hints = make(n, rng)
            out.append(_line("mathvista", name, n, kind, _family_wrap(n, rng, final, hints, styles), item, intended))

    def quoted(n, rng):
        if n % 12 == 5:  # a list: only the quoted path decides one, and the normalisation's list branch reads it
            item = lists[n % len(lists)]
            value = ast.literal_eval(item["answer"]) if rng.random() < 0.6 else [1, 2]
            forms = {"list": (f'The answer is "{value}".', str(value)),
                     "list_compact": (f'The answer is "{",".join(map(str, value))}".', ",".join(map(str, value)))}
            kind = rng.choice(sorted(forms))
            final, intended = forms[kind]
            return kind, item, final, intended, []
        if n % 3 == 2:
            item = num[n % len(num)]
            v, w = _mv_number(item, rng), _mv_number(item, rng, right=False)
            forms = {"number": (f'The answer is "{v}".', v), "unit": (f'The answer is "{v} cm".', f"{v} cm"),
                     "words": ('The answer is "four".', "4"), "then_working": (f'The answer is "{v}". It is {w} plus a bit.', v),
                     "first_of_two": (f'The answer is "{w}".\nHmm, re-checking.\nThe answer is "{v}".', w),
                     "no_period": (f'The answer is "{v}"', v), "lowercase": (f'the answer is "{v}".', v)}
        else:
            item = mc[n % len(mc)]
            L, text, O, otext = _mv_choice(item, rng)
            forms = {"letter": (f'The answer is "{L}".', L), "text": (f'The answer is "{text}".', text),
                     "paren_letter_text": (f'The answer is "({L}) {text}".', L),
                     "bold_letter": (f'The answer is "**{L}**".', L), "lower_letter": (f'The answer is "{L.lower()}".', L),
                     "after_working": (f"Option {O} does not fit the figure.\nThe answer is \"{L}\".", L),
                     "first_of_two": (f'The answer is "{O}".\nWait, that is wrong.\nThe answer is "{L}".', O),
                     "two_on_a_line": (f'The answer is "{O}". No: The answer is "{L}".', L),
                     "curly": (f"The answer is \u201c{L}\u201d.", L), "no_period": (f'The answer is "{L}"', L)}
        kind = rng.choice(sorted(forms))
        final, intended = forms[kind]
        return kind, item, final, intended, ["Let me weigh the options."]

    def letters(n, rng):
        item = mc[n % len(mc)]
        L, text, O, otext = _mv_choice(item, rng)
        forms = {"answer_dquote": f'Answer: "{L}"', "answer_squote": f"Answer: '{L}'", "answer_curly": f"Answer: \u201c{L}\u201d",
                 "answer_bold": f"Answer: **{L}**", "bold_marker": f'**Answer:** "{L}"', "answer_paren": f"Answer: ({L})",
                 "answer_paren_lower": f"Answer: ({L.lower()})", "correct_option": f"The correct option is {L}.",
                 "option_quoted": f'I pick option "{L}".', "option_bold": f"So it is option **{L}**.",
                 "choose_option": f"I choose option {L}.", "boxed": f"\\boxed{{{L}}}", "letter_paren_text": f"Answer: {L}) {text}",
                 "answer_quoted_period": f'Answer: "{L}".', "bare_choice_text": text, "chinese": f"答案：{L}",
                 "quoted_after_working": f'Option {O} is too small.\nAnswer: "{L}"'}
        kind = rng.choice(sorted(forms))
        return kind, item, forms[kind], (text if kind == "bare_choice_text" else L), [f"Maybe ({O})?"]

    def working(n, rng):
        item = num[n % len(num)]
        v = _mv_number(item, rng)
        decimals = int(item["precision"] or 0) if item["answer_type"] == "float" else 0
        b = rng.choice([1, 2, 3, 5, 7, 12])
        a = f"{float(v) + b:.{decimals}f}"
        forms = {"because": f"Answer: {v}, because {a} - {b} = {v}", "subtract_to_get": f"Answer: from {a} subtract {b} to get {v}",
                 "expression": f"Answer: {a} - {b} = {v}", "paren_working": f"Answer: {v} ({a} minus {b})",
                 "add_to_get": f"Answer: add {b} to {v} and compare with {a}; the value is {v}" if False else f"Answer: adding {b} to {v} gives {a}, so the value is {v}",
                 "semicolon": f"Answer: {v}; the bar at {a} is a different year", "since": f"Final answer: {v} since {a} - {b} = {v}",
                 "sentence_after": f"Answer: {v}. The chart shows {a} and {b}.", "difference_is": f"Answer: the difference is {v}",
                 "dash": f"Answer: {v} \u2014 that is {a} less {b}", "times": f"Answer: {b} × 1 = {b}, so {a} - {b} = {v}"}
        kind = rng.choice(sorted(forms))
        return kind, item, forms[kind], v, [f"First guess {a}."]

    def words(n, rng):
        item = (ints + floats)[n % (len(ints) + len(floats))]
        if item["answer_type"] == "float":
            v = "0.5"
            forms = {"half": "Answer: half", "a_half": "Answer: one half", "half_sentence": "Answer: half of it, 0.5"}
            kind = rng.choice(sorted(forms))
            return kind, item, forms[kind], v, []
        gold = int(float(item["answer"]))
        n_val = gold if 0 <= gold <= 999 and rng.random() < 0.6 else rng.randrange(0, 120)
        w = _words(n_val, rng)
        forms = {"answer_word": f"Answer: {w}", "answer_cap": f"Answer: {w.capitalize()}.", "sentence": f"There are {w} of them.",
                 "boxed_text": f"\\boxed{{\\text{{{w}}}}}", "bold": f"**Answer: {w}**", "quoted": f'The answer is "{w}".',
                 "final_is": f"The final answer is {w}."}
        if re.search(r"\bhow many\b", item["question"], re.I) and n_val <= 20:
            forms["ordinal"] = f"Answer: the {_ORD[n_val]}" if n_val else f"Answer: {w}"
        kind = rng.choice(sorted(forms))
        return kind, item, forms[kind], (w if kind == "quoted" else str(n_val)), []

    def latex(n, rng):
        if n % 4 == 3:
            item = mc[n % len(mc)]
            L, text, O, otext = _mv_choice(item, rng)
            final = (f"We compare the options.\n\\[\n\\angle A = 180^\\circ - 2\\times 35^\\circ\n\\]\n"
                     f"Option {O} gives $\\frac{{1}}{{2}}$ of that, which is too small.\n\n**Final Answer**\n\\[\n\\boxed{{\\text{{{L}}}}}\n\\]")
            return "choice_boxed_text", item, final, L, []
        item = num[n % len(num)]
        v = _mv_number(item, rng)
        decimals = int(item["precision"] or 0) if item["answer_type"] == "float" else 0
        b = rng.choice([2, 4, 5])
        a = f"{float(v) * b:.{decimals + 1}f}"
        work = (f"Let $x$ be the unknown. From the figure,\n\\begin{{align*}}\n{b}x &= {a} \\\\\n"
                f"x &= \\frac{{{a}}}{{{b}}}\n\\end{{align*}}\n")
        forms = {"boxed": f"{work}Therefore $x = \\boxed{{{v}}}$.", "display_boxed": f"{work}**Final Answer**\n\\[\n\\boxed{{{v}}}\n\\]",
                 "dollar_answer": f"{work}Answer: ${v}$", "display_eq": f"{work}$$x = {v}$$",
                 "answer_is_math": f"{work}So the answer is $x = {v}$."}
        kind = rng.choice(sorted(forms))
        return kind, item, forms[kind], v, []

    def boxed_thinking(n, rng):
        item = num[n % len(num)]
        v, w = _mv_number(item, rng), _mv_number(item, rng, right=False)
        forms = {"bare": v, "answer": f"Answer: {v}", "boxed": f"\\boxed{{{v}}}", "sentence": f"So the value is {v}."}
        kind = rng.choice(sorted(forms))
        return kind, item, forms[kind], v, [f"A first pass gives \\boxed{{{w}}}.", f"Hmm, \\boxed{{{w}}} is off by one."]

    def candidates(n, rng):
        if n % 3 == 2:
            item = mc[n % len(mc)]
            L, text, O, otext = _mv_choice(item, rng)
            forms = {"two_answers": (f"Answer: {O}\nWait, re-reading the figure.\nAnswer: {L}", L),
                     "could_be": (f"It could be ({O}) or ({L}). The answer is ({L}).", L),
                     "boxed_twice": (f"\\boxed{{{O}}}\nNo, correcting that:\n\\boxed{{{L}}}", L)}
        else:
            item = num[n % len(num)]
            v, w = _mv_number(item, rng), _mv_number(item, rng, right=False)
            forms = {"two_answers": (f"Answer: {w}\nWait, I misread the axis.\nAnswer: {v}", v),
                     "could_be": (f"It could be {w} or {v}; the answer is {v}.", v),
                     "list_then_final": (f"Candidates: {w}, {v}.\nFinal answer: {v}", v),
                     "boxed_twice": (f"\\boxed{{{w}}}\nNo, correcting that:\n\\boxed{{{v}}}", v),
                     "quoted_twice": (f'The answer is "{w}".\nActually:\nThe answer is "{v}".', w),
                     "bare_lines": (f"{w}\n{v}", v)}
        kind = rng.choice(sorted(forms))
        final, intended = forms[kind]
        return kind, item, final, intended, []

    def units(n, rng):
        item = num[n % len(num)]
        v = _mv_number(item, rng)
        u = rng.choice(["cm", "m", "kg", "units", "m/s", "cm^2", "dollars"])
        forms = {"space": f"Answer: {v} {u}", "glued": f"Answer: {v}{u.split('/')[0].split('^')[0]}", "degree": f"Answer: {v}°",
                 "dollar": f"Answer: ${v}", "percent_word": f"Answer: {v} percent", "boxed_text_unit": f"\\boxed{{{v}\\text{{ {u}}}}}",
                 "squared": f"Answer: {v} cm²", "sentence": f"The length is {v} {u}.", "quoted": f'The answer is "{v} {u}".',
                 "bare_unit": f"{v} {u}"}
        kind = rng.choice(sorted(forms))
        return kind, item, forms[kind], (f"{v} {u}" if kind == "quoted" else v), []

    def language(n, rng):
        if n % 3 == 2:
            item = mc[n % len(mc)]
            L, text, O, otext = _mv_choice(item, rng)
            forms = {"zh": f"答案是 {L}", "zh_final": f"最终答案：{L}", "es": f"La respuesta es {L}.", "fr": f"Réponse : {L}",
                     "de": f"Die Antwort ist {L}.", "ru": f"Ответ: {L}", "zh_option": f"因此选 {L}。"}
            kind = rng.choice(sorted(forms))
            return kind, item, forms[kind], L, []
        item = num[n % len(num)]
        v = _mv_number(item, rng)
        arabic = v.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
        full = v.translate(str.maketrans("0123456789.-", "０１２３４５６７８９．－"))
        forms = {"zh": f"答案：{v}", "es": f"Respuesta: {v}", "ru": f"Ответ: {v}", "de": f"Die Antwort ist {v}.",
                 "pt": f"Resposta: {v}", "ja": f"答え：{v}", "arabic_digits": arabic, "fullwidth_digits": full}
        kind = rng.choice(sorted(forms))
        return kind, item, forms[kind], v, []

    def bare(n, rng):
        if n % 4 == 3:
            item = mc[n % len(mc)]
            L, text, O, otext = _mv_choice(item, rng)
            forms = {"choice_text": (text, text), "choice_text_lower": (text.lower() + " ", text), "empty": ("", None),
                     "choice_text_period": (text + ".", text)}
            kind = rng.choice(sorted(forms))
            final, intended = forms[kind]
            return kind, item, final, intended, []
        item = num[n % len(num)]
        v = _mv_number(item, rng)
        forms = {"padded": f"  {v}\n", "plus": f"+{v}", "more_decimals": f"{v}37", "trailing_zero": f"{v}.0" if "." not in v else f"{v}0",
                 "exponent": f"{v}e0", "inf": "inf", "nan": "nan", "underscore": v[:1] + "_" + v[1:] if len(v.split(".")[0].lstrip("-")) > 1 else v,
                 "negative_zero": "-0" if float(v) == 0 else v, "period": f"{v}."}
        kind = rng.choice(sorted(forms))
        # what the answer states; inf, nan and Python's digit underscores state none a reader takes as a number
        return kind, item, forms[kind], (None if kind in ("inf", "nan") or "_" in forms[kind] else forms[kind].strip().rstrip(".") or None), []

    family("quoted", quoted)
    family("letters", letters)
    family("working", working)
    family("number_words", words)
    family("latex", latex)
    family("boxed_in_thinking", boxed_thinking, styles=("qwen3", "glm", "qwen3"))
    family("candidates", candidates)
    family("units", units)
    family("language", language)
    family("bare_branches", bare, styles=("plain", "qwen3", "plain", "qwen3"))
    return out


def mmmu_families(items: list[dict]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def family(name, make, styles=FAMILY_STYLES, size=N_FAMILY):
        rng = random.Random(f"{SEED}-mmmu_pro-{name}")
        for n in range(size):
            item = items[(n * 7 + len(name)) % len(items)]
            options = ast.literal_eval(item["options"])
            gold = ord(item["answer"]) - 65
            i = gold if rng.random() < 0.6 else rng.choice([k for k in range(len(options)) if k != gold] or [gold])
            o = (i + 3) % len(options)
            kind, final, intended, hints = make(rng, chr(65 + i), options[i], chr(65 + o), options[o])
            out.append(_line("mmmu_pro", name, n, kind, _family_wrap(n, rng, final, hints, styles), item, intended))

    def answer_line(rng, L, text, O, otext):
        # the forms the "Answer:" branch reads (a unique letter after the last "Answer:") or passes on to the
        # later branches; those that make it read a letter the answer does not state are in answer_departures
        forms = {"unique": (f"Answer: {L}", L), "unique_paren": (f"Answer: ({L})", L), "quoted": (f'Answer: "{L}"', L),
                 "bold": (f"**Answer: {L}**", L), "letter_dot": (f"Answer: {L}.", L),
                 "lowercase_marker": (f"answer: {L}", L), "then_reason": (f"Answer: {L} because the figure shows it", L),
                 "after_mentions": (f"({O}) is tempting but wrong.\nAnswer: {L}", L),
                 "no_letter": ("Answer: see the working above", None), "earlier_answer": (f"Answer: {O}\nAnswer: {L}", L)}
        kind = rng.choice(sorted(forms))
        return kind, *forms[kind], []

    def departures(rng, L, text, O, otext):
        # stated answers the official parser reads otherwise (the letters after "Answer:" are not unique, or
        # lower case, so it takes a letter mentioned elsewhere): the departure "stated answer", listed in the docs
        forms = {"letter_dot_text": (f"Answer: {L}. {text}", L), "two_letters": (f"Answer: {L}, not {O}", L),
                 "lowercase_letter": (f"Answer: {L.lower()}", L)}
        kind = rng.choice(sorted(forms))
        return kind, *forms[kind], []

    def brackets(rng, L, text, O, otext):
        forms = {"single": (f"I would go with ({L}) here", L), "two": (f"({O}) looks close, but ({L}) fits the data", L),
                 "repeated": (f"({L}) is right; ({O}) is not; so ({L})", L), "in_sentence": (f"The figure points to ({L}) {text}", L)}
        kind = rng.choice(sorted(forms))
        return kind, *forms[kind], []

    def plain_letters(rng, L, text, O, otext):
        forms = {"space": (f"We go with {L} here", L), "two_spaces": (f"{O} looks wrong, {L} fits", L),
                 "dot_glued": (f"Clearly {L}.{text}", L), "end_period": (f"So it is {L}.", L), "letter_only": (L, L),
                 "letter_newline": (f"{L}\nThat is my pick", L)}
        kind = rng.choice(sorted(forms))
        return kind, *forms[kind], []

    def content(rng, L, text, O, otext):
        forms = {"long_single": (f"After weighing everything, the figure supports {text} over the rest", L),
                 "long_two": (f"Between {otext} and {text}, the figure clearly supports {text}", L),
                 "short": (f"{text}", L), "short_sentence": (f"It is {text}", L)}
        kind = rng.choice(sorted(forms))
        return kind, *forms[kind], []

    def nothing(rng, L, text, O, otext):
        forms = {"lowercase": (f"{L.lower()}", L), "garbage": ("zzz qqq", None), "digits": ("42", None),
                 "option_lower": (f"option {L.lower()}", L)}
        kind = rng.choice(sorted(forms))
        return kind, *forms[kind], []

    family("answer_line", answer_line)
    family("brackets", brackets)
    family("plain_letters", plain_letters, styles=("plain", "qwen3"))
    family("content", content, styles=("plain", "qwen3"))
    family("no_candidate", nothing, styles=("plain", "qwen3"))
    family("answer_departures", departures, styles=("plain", "qwen3"), size=12)
    return out


def hallusionbench_families(items: list[dict]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def family(name, make, styles=FAMILY_STYLES):
        rng = random.Random(f"{SEED}-hallusionbench-{name}")
        for n in range(N_FAMILY):
            item = items[(n * 5 + len(name)) % len(items)]
            said = ("yes" if item["gt_answer"] == "1" else "no") if rng.random() < 0.6 else \
                ("no" if item["gt_answer"] == "1" else "yes")
            other = "no" if said == "yes" else "yes"
            kind, final, intended = make(rng, said, other)
            out.append(_line("hallusionbench", name, n, kind, _family_wrap(n, rng, final, [], styles), item, intended))

    def words(rng, said, other):
        cap = said.capitalize()
        forms = {"bare": (cap, said), "sentence": (f"{cap}, the figure shows it.", said), "answer_is": (f"The answer is {said}.", said),
                 "both": (f"{cap} and {other}.", None), "neither": ("Not really.", None), "slang": ("Yep" if said == "yes" else "Nope", said),
                 "true_false": ("True" if said == "yes" else "False", said), "quoted": (f'"{cap}"', said),
                 "no_doubt": (f"{cap}, without a doubt.", said), "answer_colon": (f"Answer: {said}", said)}
        kind = rng.choice(sorted(forms))
        return kind, *forms[kind]

    def punctuation(rng, said, other):
        cap = said.capitalize()
        forms = {"comma_space": (f"{cap}, it is.", said), "parens": (f"({cap})", said), "slash": (f"{said}/{other}", None),
                 "exclaim": (f"{cap}!", said), "bold": (f"**{cap}**", said), "glued_comma": (f"{cap},clearly", said),
                 "thousands": (f"The total is 1,000, so {said}.", said), "hyphen_glued": (f"{cap}-definitely", said),
                 "semicolon": (f"{cap}; see the legend", said), "brackets": (f"[{cap}]", said),
                 "many_periods": ("." * 40 + f" {cap}.", said), "question": (f"{cap}?", said)}
        kind = rng.choice(sorted(forms))
        return kind, *forms[kind]

    family("yes_no_words", words)
    family("punctuation", punctuation)
    return out


FAMILIES: dict[str, Callable] = {"mathvista": mathvista_families, "mmmu_pro": mmmu_families,
                                 "hallusionbench": hallusionbench_families}


def real(benchmark: str, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in samples:
        if s["benchmark"] == benchmark and "real" in s:
            out.append({"id": f"{benchmark}-r{len(out) + 1:04d}", "benchmark": benchmark,
                        "source": f"real:{s['real']['file']}", "kind": "real", "template": None,
                        "thinking_open": False, "item": s["item"], "response": s["real"]["response"],
                        **({"recorded": s["real"]["recorded"]} if "recorded" in s["real"] else {})})
    return out


def hand(benchmark: str) -> list[dict[str, Any]]:
    return [{"source": "hand", "template": None, "thinking_open": False, **c}
            for c in _load_jsonl(HAND) if c["benchmark"] == benchmark]


def corpus(benchmark: str) -> list[dict[str, Any]]:
    samples = _load_jsonl(SAMPLES)
    items = [s["item"] for s in samples if s["benchmark"] == benchmark]
    return real(benchmark, samples) + generate(benchmark, samples) + FAMILIES[benchmark](items) + hand(benchmark)


def cmd_generate(args: argparse.Namespace) -> None:
    for benchmark in BENCHMARKS:
        lines = corpus(benchmark)
        path = Path(args.out) / f"{benchmark}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        print(f"{benchmark}: {len(lines)} responses -> {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    gen = sub.add_parser("generate", help="write the corpus (the default)")
    gen.add_argument("--out", default=str(HERE))
    imp = sub.add_parser("import", help="select items and real responses from the official repositories' files")
    imp.add_argument("--testmini", required=True)
    imp.add_argument("--mathvista-results", required=True, help="MathVista's results/ folder")
    imp.add_argument("--mmmu-outputs", nargs=3, required=True, metavar=("COT", "DIRECT", "VISION_COT"),
                     help="mmmu-pro/output/gpt-4o_standard(10 options)_cot.jsonl, ..._direct.jsonl, gpt-4o_vision_cot.jsonl")
    imp.add_argument("--hallusionbench", required=True)
    imp.add_argument("--hallusionbench-sample", required=True)
    args = parser.parse_args(argv)
    if args.command == "import":
        cmd_import(args)
    else:
        cmd_generate(argparse.Namespace(out=getattr(args, "out", str(HERE))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
