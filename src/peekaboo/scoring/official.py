"""The rule-based parts of the benchmarks' official scorers, ported line by line as reference implementations.

Each function names the file and function it ports; the ports follow the
code as read at the commits below (not the papers' prose), quirks included,
so that ``checks/scorer_agreement.py`` can hold the project's scorers
against them. Where the official code calls GPT (MathVista's answer
extraction, HallusionBench's judge) the port stops and says so: the
``*_decide`` functions return ``None`` for "the official pipeline would ask
GPT here" and a random draw is reported the same way, so that a comparison
only counts the cases the official rules decide deterministically.

Sources (GitHub, commit of the snapshot read):

- MathVista, ``lupantech/MathVista`` @ 53d525874bdde205128e6b160b7357a88277d479:
  ``evaluation/extract_answer.py`` (``extract_answer``: its rule-based quick
  paths) and ``evaluation/calculate_score.py`` (``get_most_similar``,
  ``normalize_extracted_answer``, ``safe_equal``).
- MMMU-Pro, ``MMMU-Benchmark/MMMU`` @ bb0b95a945998d91dfef37e969e07d49d1139438:
  ``mmmu-pro/evaluate.py`` (``parse_multi_choice_response``,
  ``get_multi_choice_info``, ``mmmu_process_results``: how the standard
  10-option responses are scored).
- HallusionBench, ``tianyi-lab/HallusionBench`` @ 744007c232c292942c7f80eb61edb2465482da31:
  ``utils.py`` (``evaluate_by_chatgpt``'s reading of the judge's verdict,
  ``assign_correctness``, ``get_eval_all``, ``get_eval_fig``,
  ``get_eval_pair_all``, ``get_eval_pair_easy``, ``get_eval_pair_hard``) and
  ``evaluation.py`` (the leaderboard numbers). The repository reads a
  response's yes/no only through GPT-4; the rule that reads it without a
  judge is VLMEvalKit's, the toolkit that reports HallusionBench for most
  VLMs (Qwen3-VL's and GLM-4.6V's reports included):
  ``open-compass/VLMEvalKit`` @ e8e78f05f3080fe28154f2130321f17951c3be94,
  ``vlmeval/dataset/utils/yorn.py`` (``YOrN_Extraction``) and
  ``vlmeval/smp/misc.py`` (``process_punctuation``).
- Thinking models: none of the three official scorers knows about thinking
  blocks. VLMEvalKit's ``SPLIT_THINK`` (``vlmeval/inference.py``,
  ``split_thinking``) is the published way of handing them only the answer:
  the text after the last ``</think>``, and the whole response when there is
  none.
"""

from __future__ import annotations

import ast
import random
import re
from typing import Any, Callable, Mapping, Sequence


# ============================================================================
# thinking (VLMEvalKit vlmeval/inference.py, split_thinking)


def vlmeval_split_thinking(s: str) -> str:
    """The prediction part of ``split_thinking``: after the last ``</think>``, stripped; else ``s`` unchanged."""
    if "</think>" in s:
        return s.split("</think>")[-1].strip()
    return s


# ============================================================================
# MathVista (lupantech/MathVista evaluation/extract_answer.py, evaluation/calculate_score.py)


def mathvista_quick_extract(response: str, problem: Mapping[str, Any], quick_extract: bool = True) -> str | None:
    """The rule-based paths of ``extract_answer``, in its order; None where it hands the response to GPT.

    ``problem`` holds ``question_type``, ``answer_type`` and ``choices``.
    ``quick_extract`` is the script's ``--quick_extract`` flag (off by
    default there): the ``The answer is "text".`` pattern.
    """
    question_type = problem["question_type"]
    answer_type = problem["answer_type"]
    choices = problem["choices"]

    if response == "":
        return ""

    if question_type == "multi_choice" and response in choices:
        return response

    if answer_type == "integer":
        try:
            extraction = int(response)
            return str(extraction)
        except Exception:
            pass

    if answer_type == "float":
        try:
            extraction = str(float(response))
            return extraction
        except Exception:
            pass

    # quick extraction
    if quick_extract:
        # The answer is "text". -> "text"
        try:
            result = re.search(r'The answer is "(.*)"\.', response)
            if result:
                extraction = result.group(1)
                return extraction
        except Exception:
            pass

    return None  # the official code asks GPT from here on


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each): ``Levenshtein.distance``."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def mathvista_get_most_similar(prediction: str, choices: Sequence[str]) -> str:
    """``get_most_similar``: the choice at the smallest edit distance, the first on ties."""
    distances = [levenshtein(prediction, choice) for choice in choices]
    ind = distances.index(min(distances))
    return choices[ind]


def mathvista_normalize_extracted_answer(
    extraction: Any, choices: Sequence[str] | None, question_type: str, answer_type: str, precision: Any,
    ignore_empty_extractions: bool = False,
) -> str | None:
    """``normalize_extracted_answer``, line by line."""
    if question_type == "multi_choice":
        # make sure the extraction is a string
        if isinstance(extraction, str):
            extraction = extraction.strip()
        else:
            try:
                extraction = str(extraction)
            except Exception:
                extraction = ""

        # if the extraction is empty, return None
        if ignore_empty_extractions and not extraction:
            return None

        # extract "A" from "(A) text"
        letter = re.findall(r"\(([a-zA-Z])\)", extraction)
        if len(letter) > 0:
            extraction = letter[0].upper()

        sequential_characters = [chr(ord("A") + i) for i in range(len(choices))]

        # if model output a character, use it as index of available choices
        if extraction in sequential_characters:
            option_index = sequential_characters.index(extraction)
            normalized_extraction = choices[option_index]
        else:
            # select the most similar option
            normalized_extraction = mathvista_get_most_similar(extraction, choices)
        assert normalized_extraction in choices

    elif answer_type == "integer":
        try:
            normalized_extraction = str(int(float(extraction)))
        except Exception:
            normalized_extraction = None

    elif answer_type == "float":
        try:
            normalized_extraction = str(round(float(extraction), int(precision)))
        except Exception:
            normalized_extraction = None

    elif answer_type == "list":
        try:
            normalized_extraction = str(extraction)
        except Exception:
            normalized_extraction = None

    else:  # the official function reaches its return with the name unbound (UnboundLocalError)
        raise ValueError(f"MathVista has no normalisation for free-form answer_type {answer_type!r}")

    return normalized_extraction


def mathvista_safe_equal(prediction: Any, answer: Any) -> bool:
    """``safe_equal``: plain equality, False when the comparison raises."""
    try:
        if prediction == answer:
            return True
        return False
    except Exception:
        return False


def mathvista_decide(response: str, problem: Mapping[str, Any], quick_extract: bool = True,
                     ignore_empty_extractions: bool = False):
    """(extraction, prediction, true_false) as the official scripts give them, or None where GPT would extract.

    ``problem``: ``question_type``, ``answer_type``, ``choices``,
    ``precision`` and ``answer`` as in ``testmini.json``. The flags are the
    scripts' ``--quick_extract`` (``extract_answer.py``) and
    ``--ignore_empty_extractions`` (``calculate_score.py``: an empty
    multiple-choice extraction stays None instead of becoming the nearest,
    that is the shortest, choice).
    """
    extraction = mathvista_quick_extract(response, problem, quick_extract=quick_extract)
    if extraction is None:
        return None
    prediction = mathvista_normalize_extracted_answer(
        extraction, problem["choices"], problem["question_type"], problem["answer_type"], problem["precision"],
        ignore_empty_extractions=ignore_empty_extractions,
    )
    return extraction, prediction, mathvista_safe_equal(prediction, problem["answer"])


# ============================================================================
# MMMU-Pro (MMMU-Benchmark/MMMU mmmu-pro/evaluate.py)


def mmmu_get_multi_choice_info(options: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``get_multi_choice_info``: (index2ans, all_choices) for options lettered from A."""
    start_chr = "A"
    all_choices = []
    index2ans = {}
    for i, option in enumerate(options):
        index2ans[chr(ord(start_chr) + i)] = option
        all_choices.append(chr(ord(start_chr) + i))
    return index2ans, all_choices


def mmmu_parse_multi_choice_response(
    response: Any, all_choices: Sequence[str], index2ans: Mapping[str, str],
    fallback: Callable[[Sequence[str]], str | None] = random.choice,
) -> str | None:
    """``parse_multi_choice_response``, line by line.

    ``fallback`` is what the official code does when nothing matches:
    ``random.choice(all_choices)``. The project passes one that returns None
    (unparsed); the agreement check passes one that marks the case undecided.
    """
    last_answer_pos = response.rfind("Answer:")
    if last_answer_pos != -1:
        # Extract the string after "Answer:"
        answer_str = response[last_answer_pos + len("Answer:"):].strip()

        # Find a unique match in the options
        matching_options = [option for option in all_choices if option in answer_str]

        # If a unique match is found, return that option
        if len(matching_options) == 1:
            return matching_options[0]

    if isinstance(response, str):
        for char in [",", ".", "!", "?", ";", ":", "'"]:
            response = response.strip(char)
        response = " " + response + " "  # add space to avoid partial match
    else:
        response = ""

    index_ans = True
    ans_with_brack = False
    candidates = []
    for choice in all_choices:  # e.g., (A) (B) (C) (D)
        if f"({choice})" in response:
            candidates.append(choice)
            ans_with_brack = True

    if len(candidates) == 0:
        for choice in all_choices:  # e.g., A B C D
            if f"{choice} " in response:
                candidates.append(choice)

    if len(candidates) == 0:
        for choice in all_choices:  # e.g., A. B. C. D.
            if f"{choice}." in response:
                candidates.append(choice)

    # if all above doesn't get candidates, check if the content is larger than 5 tokens and try to parse the example
    if len(candidates) == 0 and len(response.split()) > 5:
        for index, ans in index2ans.items():
            if ans.lower() in response.lower():
                candidates.append(index)
                index_ans = False  # it's content ans.

    if len(candidates) == 0:  # still not get answer, randomly choose one.
        pred_index = fallback(all_choices)
    elif len(candidates) > 1:
        start_indexes = []
        if index_ans:
            if ans_with_brack:
                for can in candidates:
                    index = response.rfind(f"({can})")
                    start_indexes.append(index)  # -1 will be ignored anyway
            else:
                for can in candidates:
                    index = response.rfind(f" {can} ")
                    start_indexes.append(index)
        else:
            for can in candidates:
                index = response.lower().rfind(index2ans[can].lower())
                start_indexes.append(index)
        # get the last one (np.argmax: the first of equal maxima)
        pred_index = candidates[start_indexes.index(max(start_indexes))]
    else:  # if only one candidate, use it.
        pred_index = candidates[0]

    return pred_index


class _RandomDraw(Exception):
    """The official parser would draw a random letter here."""


def _no_draw(all_choices: Sequence[str]) -> str:
    raise _RandomDraw


def mmmu_decide(response: Any, options: Any, answer: str):
    """(parsed letter, if_right) as ``mmmu_process_results`` gives them, or None where it would draw at random.

    ``options`` as the parquet holds it (a Python-literal list in a string, or a list).
    """
    pred = response
    if isinstance(pred, dict):
        pred = ""
    index2ans, all_choices = mmmu_get_multi_choice_info(ast.literal_eval(str(options)))
    try:
        parsed_pred = mmmu_parse_multi_choice_response(pred, all_choices, index2ans, fallback=_no_draw)
    except _RandomDraw:
        return None
    return parsed_pred, parsed_pred == answer


# ============================================================================
# HallusionBench: reading yes/no (VLMEvalKit) and the leaderboard arithmetic (tianyi-lab/HallusionBench utils.py)


def vlmeval_process_punctuation(inText: str) -> str:
    """VLMEvalKit's ``process_punctuation`` (from the VQA evaluation code), quirks included.

    ``periodStrip.sub('', outText, re.UNICODE)`` passes ``re.UNICODE`` (32)
    as the *count*: at most 32 periods are removed. Kept as is.
    """
    outText = inText
    punct = [
        ";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
        ",", "?", "!",
    ]
    commaStrip = re.compile(r"(\d)(,)(\d)")
    periodStrip = re.compile(r"(?<!\d)\.(?!\d)")
    for p in punct:
        if (p + " " in inText or " " + p in inText) or (re.search(commaStrip, inText) is not None):
            outText = outText.replace(p, "")
        else:
            outText = outText.replace(p, " ")
    outText = periodStrip.sub("", outText, re.UNICODE)
    return outText


def vlmeval_yorn_extraction(output: str) -> str:
    """``YOrN_Extraction``: 'Yes' or 'No' when exactly one of the two words occurs, else 'Unknown'."""
    s = output.lower()
    words = vlmeval_process_punctuation(s).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "yes" not in words and "no" in words:
        return "No"
    return "Unknown"


def hallusionbench_decide(response: str, gt_answer: str):
    """(yes/no read, correctness code "1"/"0") for a response, or None where a judge would decide ('Unknown').

    ``gt_answer``: "1" (yes) or "0" (no), as in ``HallusionBench.json``.
    """
    extracted = vlmeval_yorn_extraction(str(response))
    if extracted == "Unknown":
        return None
    said = extracted.lower()
    return said, "1" if said == ("yes" if str(gt_answer) == "1" else "no") else "0"


def hallusionbench_judge_code(output_text: str) -> str:
    """How ``evaluate_by_chatgpt`` reads the judge's verdict: "0" incorrect, "1" correct, "2" unclear."""
    if "incorrect" in output_text.lower():
        return "0"
    elif "correct" in output_text.lower():
        return "1"
    return "2"


def hallusionbench_assign_correctness(data_arr: list[dict], correctness_entry: str) -> list[dict]:
    """``assign_correctness``: "unclear" is right on a VS question without its figure."""
    for r in data_arr:
        assert int(r[correctness_entry]) == 0 or int(r[correctness_entry]) == 1 or int(r[correctness_entry]) == 2
        if r["category"] == "VS" and int(r["figure_id"]) == 0:
            r["correct"] = 1 if int(r[correctness_entry]) == 1 or int(r[correctness_entry]) == 2 else 0
        else:
            r["correct"] = 1 if int(r[correctness_entry]) == 1 else 0
    return data_arr


def hallusionbench_get_eval_all(data: list[dict]) -> dict[str, Any]:
    """``get_eval_all``: per question (the LH/VI/Mix tallies, which need no judge, are left out)."""
    eval_all_dict = dict()
    for r in data:
        name = "_".join([r["category"], r["subcategory"], str(r["set_id"]), str(r["figure_id"]), str(r["question_id"])])
        assert name not in eval_all_dict
        eval_all_dict[name] = r["correct"]
    total = len(eval_all_dict.keys())
    correct = sum(1 for v in eval_all_dict.values() if v != 0)  # np.count_nonzero
    return {"total": total, "correct": correct, "wrong": total - correct}


def hallusionbench_get_eval_fig(data: list[dict]) -> dict[str, Any]:
    """``get_eval_fig``: per figure, VS questions without a figure left out."""
    eval_fig_dict: dict[str, tuple[int, int]] = dict()
    for r in data:
        if r["category"] == "VS" and str(r["figure_id"]) == "0":  # no figure
            continue
        name = "_".join([r["category"], r["subcategory"], str(r["set_id"]), str(r["figure_id"])])
        if name in eval_fig_dict:
            c, t = eval_fig_dict[name]
            eval_fig_dict[name] = (c + r["correct"], t + 1)
        else:
            eval_fig_dict[name] = (r["correct"], 1)

    stat = {"total": len(eval_fig_dict.keys()), "correct": 0, "wrong": 0, "inconsistent": 0, "score": 0}
    for v in eval_fig_dict.values():
        if v[0] == v[1]:
            stat["correct"] += 1
        elif v[0] == 0:
            stat["wrong"] += 1
        else:
            stat["inconsistent"] += 1
        stat["score"] += v[0] / v[1]
    stat["score"] = stat["score"] / stat["total"]
    return stat


def _eval_pairs(data: list[dict], keep: Callable[[dict], bool]) -> dict[str, Any]:
    """The question-pair tally shared by ``get_eval_pair_all``, ``_easy`` and ``_hard``."""
    get_eval_pair_dict: dict[str, tuple[int, int]] = dict()
    counter = 0
    for r in data:
        if not keep(r):
            continue
        name = "_".join([r["category"], r["subcategory"], str(r["set_id"]), str(r["question_id"])])
        if name in get_eval_pair_dict:
            c, t = get_eval_pair_dict[name]
            get_eval_pair_dict[name] = (c + r["correct"], t + 1)
        else:
            get_eval_pair_dict[name] = (r["correct"], 1)
        counter += 1
    stat = {"total": len(get_eval_pair_dict.values()), "total_q": counter, "correct": 0, "wrong": 0}
    for v in get_eval_pair_dict.values():
        if v[0] == v[1]:
            stat["correct"] += 1
        else:
            stat["wrong"] += 1
    return stat


def hallusionbench_get_eval_pair_all(data: list[dict]) -> dict[str, Any]:
    """``get_eval_pair_all``'s correct/wrong (its LH/VI analysis needs the GPT "same" check and is left out)."""
    return _eval_pairs(data, lambda r: True)


def hallusionbench_get_eval_pair_easy(data: list[dict]) -> dict[str, Any]:
    """``get_eval_pair_easy``: questions whose ``visual_input`` is not "2" (no figure or the original one)."""
    return _eval_pairs(data, lambda r: str(r["visual_input"]) != "2")


def hallusionbench_get_eval_pair_hard(data: list[dict]) -> dict[str, Any]:
    """``get_eval_pair_hard``: questions whose ``visual_input`` is "2" (an edited figure)."""
    return _eval_pairs(data, lambda r: str(r["visual_input"]) == "2")


def hallusionbench_leaderboard(data: list[dict]) -> dict[str, float]:
    """``evaluation.py``'s leaderboard row (percent, rounded to 4 places) from records with ``correct`` set.

    qAcc: question pairs all right; fAcc: figures all right; easy / hard:
    the pair accuracy over the easy / hard questions; aAcc: questions right.
    """
    all_q = hallusionbench_get_eval_all(data)
    pairs = hallusionbench_get_eval_pair_all(data)
    easy = hallusionbench_get_eval_pair_easy(data)
    hard = hallusionbench_get_eval_pair_hard(data)
    fig = hallusionbench_get_eval_fig(data)
    return {
        "qAcc": round(100 * pairs["correct"] / pairs["total"], 4),
        "fAcc": round(100 * fig["correct"] / fig["total"], 4),
        "easy_aAcc": round(100 * easy["correct"] / easy["total"], 4),
        "hard_aAcc": round(100 * hard["correct"] / hard["total"], 4),
        "aAcc": round(100 * all_q["correct"] / all_q["total"], 4),
    }
