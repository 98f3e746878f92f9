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
the reference ("1" correct, "0" incorrect, "2" unclear). Here: yes/no read by
rule from the final answer (``peekaboo.answers.extract_yes_no``) and compared
with ``gt_answer`` ("1" yes, "0" no); no yes/no, or an abstention, is
"unclear". Then the official ``assign_correctness``: correct when "1", and
also when "2" on a VS question without its figure (``figure_id == "0"``),
where not knowing is the right answer.

``summary_metrics`` gives the official leaderboard numbers from the per-item
correctness: question accuracy (aAcc, all questions), figure accuracy (fAcc:
share of figures, keyed by (category, subcategory, set_id, figure_id) and
leaving out VS questions without a figure, whose questions are all correct),
question-pair accuracy (qAcc: share of (category, subcategory, set_id,
question_id) groups whose questions are all correct), and the easy
(``figure_id == "0"``) and hard (edited figures) pair accuracies.

Task type: items without an image are symbolic, the others visual_reference
(a ``task_type`` in the config overrides both). No evidence boxes are shipped;
supply them with the dataset's ``boxes`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

from ..answers import extract_yes_no, is_abstention
from ._common import final_answer, image_source, is_missing, item_meta, iter_parquet, parquet_count, read_json
from .base import Adapter, AdapterError, RawItem, Reject, Score

DEFAULT_INSTRUCTION = (
    "Answer the question with yes or no. The last line of your response should be of the following "
    "format: 'Answer: yes' or 'Answer: no'."
)
_KEYS = ("category", "subcategory", "set_id", "figure_id", "question_id")


def item_key(record: Mapping[str, Any]) -> str:
    """The official per-question key, used as the item id."""
    return "_".join(str(record[k]) for k in _KEYS)


def correctness_code(parsed: str | None, gold: str, abstained: bool) -> str:
    """The official correctness code: "1" correct, "0" incorrect, "2" unclear."""
    if parsed is None or abstained:
        return "2"
    return "1" if parsed == gold else "0"


def counts_correct(code: str, category: str, figure_id: Any) -> bool:
    """The official ``assign_correctness``: "unclear" is right on a VS question asked without its figure."""
    if str(category) == "VS" and str(figure_id) == "0":
        return code in ("1", "2")
    return code == "1"


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
            missing = [k for k in (*_KEYS, "visual_input", "question", "gt_answer") if is_missing(rec.get(k))]
            if missing:
                item_id = None if any(k in missing for k in _KEYS) else item_key(rec)
                yield Reject(reason=f"missing {', '.join(missing)}", item_id=item_id, source_line=line)
                continue
            item_id = item_key(rec)
            gold = str(rec["gt_answer"]).strip()
            if gold not in ("0", "1"):
                yield Reject(reason=f"gt_answer {gold!r} is neither '1' (yes) nor '0' (no)", item_id=item_id,
                             source_line=line)
                continue
            visual = str(rec["visual_input"]).strip()
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
                sample_note=None if is_missing(rec.get("sample_note")) else str(rec["sample_note"]),
                gt_answer_details=None if is_missing(rec.get("gt_answer_details")) else str(rec["gt_answer_details"]),
                filename=None if is_missing(rec.get("filename")) else str(rec["filename"]),
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
        if not is_missing(filename):
            found = image_source(filename, dirs)
            if isinstance(found, Path) and found.is_file():
                return found
        # the official get_image_file_location layout: {root}/{category}/{subcategory}/{set}_{figure}.png
        rel = Path(str(rec["category"]), str(rec["subcategory"]), f"{rec['set_id']}_{rec['figure_id']}.png")
        for d in dirs:
            for root in (d, d / "hallusion_bench"):
                if (root / rel).is_file():
                    return root / rel
        if not is_missing(filename):
            return image_source(filename, dirs)  # missing: the items stage rejects it by name
        return None

    def score(self, item: Mapping[str, Any], response: str) -> Score:
        meta = item_meta(item)
        final, _ = final_answer(response)
        abstained = is_abstention(final)
        parsed = extract_yes_no(final) if final else None
        gold = str(item["answer"])
        code = correctness_code(parsed, gold, abstained)
        return Score(
            answer_text=parsed,
            correct=counts_correct(code, meta.get("category", ""), meta.get("figure_id", "")),
            abstained=abstained,
        )

    def summary_metrics(self, items, traces) -> dict[str, float]:
        return official_metrics(items, traces)


def official_metrics(items, traces) -> dict[str, float]:
    """The official accuracies (per question, figure, question pair; easy and hard pairs).

    ``items``: the items table (``item_id``, ``meta`` with the five keys).
    ``traces``: one row per item with ``item_id`` and ``correct`` (a trace
    table filtered to the unmasked ``base`` variant when it has a ``variant``
    column); a missing or null ``correct`` (a failed trace) counts as wrong.
    Accuracies are fractions in [0, 1]; NaN when a group is empty.
    """
    import pandas as pd

    t = pd.DataFrame(traces)
    if "variant" in t.columns:
        t = t[t["variant"] == "base"]
    if t["item_id"].duplicated().any():
        dup = t.loc[t["item_id"].duplicated(), "item_id"].iloc[0]
        raise ValueError(f"more than one base trace for item {dup!r}: pass one model's traces at a time")
    correct = {
        row.item_id: False if pd.isna(row.correct) else bool(row.correct)
        for row in t[["item_id", "correct"]].itertuples(index=False)
    }

    rows = []
    for row in pd.DataFrame(items)[["item_id", "meta"]].itertuples(index=False):
        if row.item_id not in correct:
            continue
        meta = item_meta({"meta": row.meta})
        rows.append({**{k: str(meta[k]) for k in _KEYS}, "correct": int(correct[row.item_id])})
    df = pd.DataFrame(rows, columns=[*_KEYS, "correct"])

    def share(groups) -> float:
        if len(groups) == 0:
            return float("nan")
        return float((groups["correct"] == groups["total"]).mean())

    def grouped(frame, keys):
        g = frame.groupby(keys, sort=True)["correct"].agg(correct="sum", total="count").reset_index()
        return g

    no_figure = (df["category"] == "VS") & (df["figure_id"] == "0")
    figures = grouped(df[~no_figure], ["category", "subcategory", "set_id", "figure_id"])
    pair_keys = ["category", "subcategory", "set_id", "question_id"]
    easy = df["figure_id"] == "0"
    return {
        "question_accuracy": float(df["correct"].mean()) if len(df) else float("nan"),
        "figure_accuracy": share(figures),
        "pair_accuracy": share(grouped(df, pair_keys)),
        "easy_pair_accuracy": share(grouped(df[easy], pair_keys)),
        "hard_pair_accuracy": share(grouped(df[~easy], pair_keys)),
        "n_questions": float(len(df)),
        "n_figures": float(len(figures)),
        "n_pairs": float(len(grouped(df, pair_keys))),
    }
