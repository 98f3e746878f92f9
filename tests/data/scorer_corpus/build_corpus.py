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
    return real(benchmark, samples) + generate(benchmark, samples) + hand(benchmark)


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
