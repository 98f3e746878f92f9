"""HallusionBench in its published formats, with the official evaluator's accuracies.

Formats (option ``path``):

- the GitHub ``HallusionBench.json`` list (``category, subcategory,
  visual_input, set_id, figure_id, sample_note, question_id, question,
  gt_answer_details, gt_answer, filename``) plus the unzipped image folder
  (``hallusion_bench/``); ``filename`` is ``./hallusion_bench/VD/illusion/0_0.png``.
  Records with ``visual_input == "0"`` have no ``filename`` and no image.
- the parquet (Hugging Face copies; one file or a folder of shards) with the
  same columns and an ``image`` column of ``{bytes, path}`` structs (null for
  questions without an image).

Options: ``path`` (required), ``images`` (folder the ``filename`` paths are
relative to: the one holding ``hallusion_bench/``; default the JSON's folder;
``{category}/{subcategory}/{set_id}_{figure_id}.png`` under it is tried too,
as the official ``get_image_file_location`` builds it), ``instruction`` (text
appended to each question; default asks for a final ``Answer: yes/no`` line so
that the answer can be read by rule; set it to ``""`` for the bare question).

Item ids: ``{category}_{subcategory}_{set_id}_{figure_id}_{question_id}``, the
key the official ``get_eval_all`` asserts unique.

Scoring: the official evaluator asks GPT-4 whether the response agrees with
the reference ("1" correct, "0" incorrect, "2" unclear). Here, on what the
model finally says (``peekaboo.answers.split_thinking``: a chain that ended
inside its thinking is unparsed, wrong and ``truncated``), the yes/no is read
by rule (``peekaboo.answers.read_yes_no``: the first word of the final answer,
else an abstention, else the only one of "yes" and "no" named, as VLMEvalKit's
``YOrN_Extraction`` reads it) and compared with ``gt_answer`` ("1" yes, "0"
no). An abstention, or no yes/no, is unparsed and wrong: ``correct`` never
counts an abstention.

``summary_metrics`` gives the official leaderboard numbers from the base
traces, computed by the ported official functions (``official.py``): each
trace gets the official correctness code ("1" correct; "2" unclear: an
abstention or no yes/no; "0" wrong, cut off or failed), then the official
``assign_correctness`` (unclear counts right on a VS question asked without
its figure), question accuracy (aAcc), figure accuracy (fAcc: figures keyed by
(category, subcategory, set_id, figure_id), VS questions without a figure left
out, a figure counts when all its questions are right), question-pair
accuracy (qAcc: (category, subcategory, set_id, question_id) groups all
right), and the easy and hard pair accuracies, which split the questions by
``visual_input`` as ``get_eval_pair_easy`` / ``_hard`` do: easy = no figure
or the original figure ("0", "1"), hard = an edited figure ("2").

Malformed records are rejected with the reason: ``set_id``, ``figure_id`` or
``question_id`` that is not an integer, a ``visual_input`` other than 0, 1 or
2, a ``category`` other than VD or VS, a ``gt_answer`` other than "0" or "1".

Task type: items without an image are symbolic, the others visual_reference
(a ``task_type`` in the config overrides both). No evidence boxes are shipped;
supply them with the dataset's ``boxes`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from ..answers import read_yes_no, split_thinking
from ..cells import is_blank, parse_meta
from ._common import image_source, integer, iter_parquet, parquet_count, read_json
from .base import Adapter, AdapterError, RawItem, Reject, Score
from .official import (
    hallusionbench_assign_correctness,
    hallusionbench_get_eval_all,
    hallusionbench_get_eval_fig,
    hallusionbench_get_eval_pair_all,
    hallusionbench_get_eval_pair_easy,
    hallusionbench_get_eval_pair_hard,
)

DEFAULT_INSTRUCTION = (
    "Answer the question with yes or no. The last line of your response should be of the following "
    "format: 'Answer: yes' or 'Answer: no'."
)
_KEYS = ("category", "subcategory", "set_id", "figure_id", "question_id")
_INTEGER_KEYS = ("set_id", "figure_id", "question_id", "visual_input")


def item_key(record: Mapping[str, Any]) -> str:
    """The official per-question key, used as the item id."""
    return "_".join(str(record[k]) for k in _KEYS)


def correctness_code(trace: Mapping[str, Any]) -> str:
    """The official correctness code of a scored trace: "1" correct, "2" unclear, "0" incorrect.

    Unclear: an abstention, or an answer without yes or no (where the judge
    says "unclear"). A chain cut off in its thinking, or a failed trace
    (``correct`` null), is "0": it never counts right.
    """
    correct = trace.get("correct")
    if is_blank(correct) or _flag(trace.get("truncated")):
        return "0"
    if bool(correct):
        return "1"
    if _flag(trace.get("abstained")) or ("answer_text" in trace and is_blank(trace.get("answer_text"))):
        return "2"
    return "0"


def _flag(value: Any) -> bool:
    return not is_blank(value) and bool(value)


def _official_id(value: Any, field: str) -> str:
    """An integer field as the official code keys records (``str(value)``): digits as written, a number as its
    integer (a parquet copy may store 0 as 0.0); ValueError naming the field for anything else."""
    if isinstance(value, str) and value.strip().isdigit():
        return value.strip()
    return str(integer(value, field))


class HallusionBenchAdapter(Adapter):
    name = "hallusionbench"
    default_task_type = "visual_reference"

    def check(self) -> list[str]:
        return self.check_paths(images=True)

    def _is_json(self) -> bool:
        return self.path().suffix.lower() == ".json"

    def count(self) -> int:
        return len(read_json(self.path())) if self._is_json() else parquet_count(self.path())

    def _rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        if self._is_json():
            data = read_json(self.path())
            if not isinstance(data, list):
                raise AdapterError(f"datasets.{self.dataset}.options.path: {self.path()} is not a list of questions")
            for n, rec in enumerate(data, 1):
                yield n, rec if isinstance(rec, dict) else {"_bad": rec}
        else:
            yield from iter_parquet(self.path())

    def _image_dirs(self) -> list[Path]:
        p = self.path()
        base = p if p.is_dir() else p.parent
        return ([self.path("images")] if self.options.get("images") else []) + [base]

    def records(self) -> Iterator[RawItem | Reject]:
        dirs = self._image_dirs()
        instruction = self.options.get("instruction", DEFAULT_INSTRUCTION)
        for line, rec in self._rows():
            if "_bad" in rec:
                yield Reject(reason="record is not a JSON object", source_line=line)
                continue
            missing = [k for k in (*_KEYS, "visual_input", "question", "gt_answer") if is_blank(rec.get(k))]
            if missing:
                item_id = None if any(k in missing for k in _KEYS) else item_key(rec)
                yield Reject(reason=f"missing {', '.join(missing)}", item_id=item_id, source_line=line)
                continue
            try:
                rec = {**rec, **{k: _official_id(rec[k], k) for k in _INTEGER_KEYS}}
            except ValueError as exc:
                yield Reject(reason=str(exc), item_id=item_key(rec), source_line=line)
                continue
            item_id = item_key(rec)
            problem = _record_problem(rec)
            if problem:
                yield Reject(reason=problem, item_id=item_id, source_line=line)
                continue
            gold = str(rec["gt_answer"]).strip()
            visual = rec["visual_input"]
            images: list[Any] = []
            if visual != "0":
                image = image_source(rec.get("image"), dirs)
                if image is None:
                    image = self._image_file(rec, dirs)
                if image is None:
                    yield Reject(reason=f"visual_input {visual} but no image or filename", item_id=item_id,
                                 source_line=line)
                    continue
                images = [image]
            question = str(rec["question"]).strip()
            if instruction:
                question = f"{question}\n{instruction}"
            meta = {k: str(rec[k]) for k in _KEYS}
            meta.update(
                visual_input=visual,
                sample_note=None if is_blank(rec.get("sample_note")) else str(rec["sample_note"]),
                gt_answer_details=None if is_blank(rec.get("gt_answer_details")) else str(rec["gt_answer_details"]),
                filename=None if is_blank(rec.get("filename")) else str(rec["filename"]),
            )
            yield RawItem(
                item_id=item_id,
                question=question,
                answer="yes" if gold == "1" else "no",
                answer_type="yes_no",
                images=images,
                task_type="symbolic" if not images else None,
                meta=meta,
                source_line=line,
            )

    def _image_file(self, rec: Mapping[str, Any], dirs: list[Path]) -> Path | None:
        filename = rec.get("filename")
        if not is_blank(filename):
            found = image_source(filename, dirs)
            if isinstance(found, Path) and found.is_file():
                return found
        # the official get_image_file_location layout: {root}/{category}/{subcategory}/{set}_{figure}.png
        rel = Path(str(rec["category"]), str(rec["subcategory"]), f"{rec['set_id']}_{rec['figure_id']}.png")
        for d in dirs:
            for root in (d, d / "hallusion_bench"):
                if (root / rel).is_file():
                    return root / rel
        if not is_blank(filename):
            return image_source(filename, dirs)  # missing: the items stage rejects it by name
        return None

    def score(self, item: Mapping[str, Any], response: str, *, thinking_open: bool = False) -> Score:
        answer_part, truncated = split_thinking(response, thinking_open)
        if truncated:
            return Score(answer_text=None, correct=False, truncated=True)
        said, abstained = read_yes_no(answer_part)
        return Score(answer_text=said, correct=said is not None and said == str(item["answer"]), abstained=abstained)

    def summary_metrics(self, items, traces) -> dict[str, float]:
        return official_metrics(items, traces)


def _record_problem(rec: Mapping[str, Any]) -> str | None:
    """Why a record (integer fields already read) cannot be scored as the official code scores it; None if fine."""
    if str(rec["category"]) not in ("VD", "VS"):
        return f"category {rec['category']!r} is neither VD nor VS"
    if rec["visual_input"] not in ("0", "1", "2"):
        return f"visual_input {rec['visual_input']} is not 0 (no figure), 1 (original) or 2 (edited)"
    gold = str(rec["gt_answer"]).strip()
    if gold not in ("0", "1"):
        return f"gt_answer {gold!r} is neither '1' (yes) nor '0' (no)"
    return None


def official_metrics(items, traces) -> dict[str, float]:
    """The official leaderboard accuracies (per question, figure, question pair; easy and hard pairs).

    ``items``: the items table (``item_id``, ``meta`` with the five keys and
    ``visual_input``). ``traces``: one row per item with ``item_id`` and
    ``correct``, and where present ``abstained``, ``truncated`` and
    ``answer_text`` (a trace table is filtered to the unmasked ``base``
    variant when it has a ``variant`` column). Each trace gets its official
    correctness code (``correctness_code``); the official
    ``assign_correctness`` and counting functions (``official.py``) do the
    rest. Accuracies are fractions in [0, 1]; NaN when a group is empty.
    """
    import pandas as pd

    t = pd.DataFrame(traces)
    if "variant" in t.columns:
        t = t[t["variant"] == "base"]
    if t["item_id"].duplicated().any():
        dup = t.loc[t["item_id"].duplicated(), "item_id"].iloc[0]
        raise ValueError(f"more than one base trace for item {dup!r}: pass one model's traces at a time")
    codes = {row["item_id"]: correctness_code(row) for row in t.to_dict("records")}

    data = []
    for row in pd.DataFrame(items)[["item_id", "meta"]].itertuples(index=False):
        if row.item_id not in codes:
            continue
        meta = parse_meta(row.meta)
        data.append({**{k: str(meta[k]) for k in (*_KEYS, "visual_input")}, "code": codes[row.item_id]})
    data = hallusionbench_assign_correctness(data, "code")

    def share(stat) -> float:
        return stat["correct"] / stat["total"] if stat["total"] else float("nan")

    has_figures = any(not (r["category"] == "VS" and r["figure_id"] == "0") for r in data)
    figures = hallusionbench_get_eval_fig(data) if has_figures else {"correct": 0, "total": 0}
    pairs = hallusionbench_get_eval_pair_all(data)
    return {
        "question_accuracy": share(hallusionbench_get_eval_all(data)),
        "figure_accuracy": share(figures),
        "pair_accuracy": share(pairs),
        "easy_pair_accuracy": share(hallusionbench_get_eval_pair_easy(data)),
        "hard_pair_accuracy": share(hallusionbench_get_eval_pair_hard(data)),
        "n_questions": float(len(data)),
        "n_figures": float(figures["total"]),
        "n_pairs": float(pairs["total"]),
    }
