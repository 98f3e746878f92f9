"""JSON read from users: an object repeating a key is refused with the key named (JSONL datasets, generations
files, box files, whole-file JSON datasets), and every reject reason reads cleanly."""

from __future__ import annotations

import ast
import inspect
import json
import json.decoder
import re
from pathlib import Path

import pytest

from peekaboo import jsonlines
from peekaboo.datasets import RawItem, Reject, get_adapter
from peekaboo.datasets.base import AdapterError
from peekaboo.datasets.boxes import read_boxes
from peekaboo.generations import read_generations

from fixtures import benchmarks as fx
from fixtures.items import good_record, jsonl_spec, write_jsonl

SRC = Path(__file__).resolve().parents[1] / "src" / "peekaboo"
TWICE = "the object holds it twice"


def test_loads_refuses_a_repeated_key_at_any_depth():
    assert jsonlines.loads('{"a": 1, "b": {"c": 2}}') == {"a": 1, "b": {"c": 2}}
    with pytest.raises(jsonlines.DuplicateKeyError, match=f"duplicate key 'a': {TWICE}"):
        jsonlines.loads('{"a": 1, "a": 2}')
    with pytest.raises(jsonlines.DuplicateKeyError) as err:
        jsonlines.loads('[{"x": {"box": [1], "box": [2]}}]')
    assert err.value.key == "box"


def test_a_jsonl_dataset_line_repeating_a_key_is_rejected_and_the_others_read(tmp_path):
    good = json.dumps(good_record("a"))
    twice = good.replace('"answer": "red"', '"answer": "red", "answer": "blue"')
    nested = json.dumps(good_record("c")).replace('"label": "square"', '"label": "square", "label": "circle"')
    assert twice.count('"answer"') == 2 and nested.count('"label"') == 3
    path = write_jsonl(tmp_path / "d.jsonl", [good, twice.replace('"id": "a"', '"id": "b"'), nested])
    out = list(get_adapter("d", jsonl_spec(path), base_dir=tmp_path).records())
    assert [type(r).__name__ for r in out] == ["RawItem", "Reject", "Reject"]
    assert (out[1].reason, out[1].source_line) == (f"duplicate key 'answer': {TWICE}", 2)
    assert (out[2].reason, out[2].source_line) == (f"duplicate key 'label': {TWICE}", 3)


def test_a_generations_line_repeating_a_key_fails_its_trace_only(tmp_path):
    path = tmp_path / "gen.jsonl"
    path.write_text('{"id": "q0|base|none", "text": "A", "text": "B"}\n{"id": "q1|base|none", "text": "fine"}\n')
    found = read_generations(path, ["q0|base|none", "q1|base|none"])
    assert found.get("q0|base|none").error == f"line 1: duplicate key 'text': {TWICE}"
    assert found.get("q1|base|none").text == "fine" and found.get("q1|base|none").error is None


def test_a_box_line_repeating_a_key_is_an_error_of_that_line(tmp_path):
    path = tmp_path / "boxes.jsonl"
    path.write_text('{"item_id": "5", "boxes": [], "boxes": [{"label": "a", "box": [0, 0, 2, 2]}]}\n'
                    '{"item_id": "6", "boxes": [{"label": "b", "box": [0, 0, 3, 3]}]}\n')
    boxes = read_boxes(path)
    assert [(e.line, e.reason) for e in boxes.errors] == [(1, f"duplicate key 'boxes': {TWICE}")]
    assert boxes.regions_for("5") is None and len(boxes.regions_for("6")) == 1


def reasons(records) -> list[tuple[type, str | None]]:
    return [(type(r), getattr(r, "reason", None)) for r in records]


def test_whole_file_json_datasets_reject_the_record_repeating_a_key(tmp_path):
    # VisArgs: a list of records
    records = [json.dumps(r) for r in fx.VISARGS_RECORDS[1:3]]
    records[0] = records[0].replace('"conclusion": ', '"conclusion": "first", "conclusion": ', 1)
    path = tmp_path / "annotation.json"
    path.write_text("[" + ", ".join(records) + "]")
    out = list(get_adapter("v", {"adapter": "visargs", "options": {"path": str(path), "images": str(tmp_path)}},
                           base_dir=tmp_path).records())
    assert reasons(out) == [(Reject, "duplicate key 'conclusion': the record holds it twice"), (RawItem, None)]
    assert out[0].item_id == "aabbcc0001" and out[0].source_line == 1
    # ... whose image map repeats a url: which file is meant cannot be told
    (tmp_path / "map.json").write_text('{"u": "a.png", "u": "b.png"}')
    with pytest.raises(AdapterError, match=r"options\.image_map: .*map\.json maps the url 'u' twice"):
        list(get_adapter("v", {"adapter": "visargs", "options": {"path": str(path), "images": str(tmp_path),
                                                                 "image_map": str(tmp_path / "map.json")}},
                         base_dir=tmp_path).records())

    # HallusionBench: a list of questions
    good = dict(fx.HALLUSIONBENCH_RECORDS[4])
    text = json.dumps([good, good]).replace('"question": ', '"question": "first?", "question": ', 1)
    bench = tmp_path / "HallusionBench.json"
    bench.write_text(text)
    out = list(get_adapter("h", {"adapter": "hallusionbench", "options": {"path": str(bench)}},
                           base_dir=tmp_path).records())
    assert out[0].reason == "duplicate key 'question': the record holds it twice" and out[0].source_line == 1
    assert isinstance(out[1], RawItem)

    # MathVista testmini.json: a map pid -> problem; a pid twice loses the record (json would keep the last)
    rows = {r["pid"]: {k: v for k, v in r.items() if k not in ("decoded_image", "query")}
            for r in fx._mathvista_rows(with_bytes=False)}
    five, two = json.dumps(rows["5"]), json.dumps(rows["2"])
    (tmp_path / "testmini.json").write_text(
        '{"5": ' + five.replace('"answer": ', '"answer": "0", "answer": ', 1) + ', "2": ' + two + ', "2": ' + two + "}")
    out = list(get_adapter("m", {"adapter": "mathvista", "options": {"path": str(tmp_path / "testmini.json")}},
                           base_dir=tmp_path).records())
    assert reasons(out) == [(Reject, "duplicate key 'answer': the record holds it twice"),
                            (Reject, "duplicate key '2': the file holds this pid twice")]
    assert [r.item_id for r in out] == ["5", "2"]


# --- every reject reason reads cleanly -------------------------------------------------------------

# one line per message of Python's JSON decoder (the C scanner words them as the Python one without the value)
NOT_JSON = {
    "Expecting value": '{"a": }',
    "Expecting property name enclosed in double quotes": "{a: 1}",
    "Expecting ':' delimiter": '{"a" 1}',
    "Expecting ',' delimiter": "[1 2]",
    "Extra data": "{} x",
    "Invalid control character at": '{"a": "b\tc"}',
    "Invalid \\escape": '{"a": "\\q"}',
    "Invalid \\uXXXX escape": '{"a": "\\u12"}',
    "Unterminated string starting at": '{"a": "b',
}


def decoder_messages() -> set[str]:
    """Every message json.decoder raises, read from its source (a new Python's new message shows up here)."""
    found = set()
    for node in ast.walk(ast.parse(inspect.getsource(json.decoder))):
        value = None
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "JSONDecodeError" and node.args:
            value = node.args[0]
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "msg" for t in node.targets):
            value = node.value
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "format":
                value = value.func.value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found.add(re.sub(r":? \{0!r\}", "", value.value))
    return found


def badly_read(text: str) -> list[str]:
    """Where a reason reads badly: a word twice in a row ("at at"), doubled or stray spaces."""
    problems = [f"{a!r} twice" for a in re.findall(r"\b([A-Za-z]+)\s+(?=\1\b)", text, flags=re.I)]
    # (a message of several lines may indent its lines)
    if re.search(r"\S {2,}", text) or text != text.strip() or any(ln != ln.rstrip() for ln in text.split("\n")):
        problems.append("stray spaces")
    if re.search(r" [,;:.)]", text):
        problems.append("a space before punctuation")
    return problems


def test_every_not_json_reason_reads_cleanly(tmp_path):
    assert decoder_messages() <= set(NOT_JSON), decoder_messages() - set(NOT_JSON)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(NOT_JSON.values()))  # no newline after the unterminated string: it would be in it
    lines = list(jsonlines.read_lines(path))
    assert len(lines) == len(NOT_JSON) and not any(line.ok for line in lines)
    for message, line in zip(NOT_JSON, lines):
        assert line.error.startswith(f"not JSON: {message}") and re.search(r" column \d+$", line.error), line.error
        assert badly_read(line.error) == [], line.error
    assert lines[5].error == "not JSON: Invalid control character at column 9"
    assert lines[0].error == "not JSON: Expecting value at column 7"


# the calls whose text becomes a reject reason or an error a user reads
REASON_CALLS = {"Reject", "_BadRecord", "Problem", "BoxLineError", "Line", "failed", "Generation", "ValueError",
                "TypeError", "KeyError", "AdapterError", "AnswerFormatError", "DuplicateKeyError", "ResultsLocked",
                "ModelSourceError", "ConfigError", "WorkflowError"}


def _text(node: ast.AST) -> str | None:
    """A string argument's words with each interpolated value as a break (NUL): only fixed text is judged."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "\0" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        if left is not None or right is not None:
            return (left if left is not None else "\0") + (right if right is not None else "\0")
    return None


def reason_strings() -> list[tuple[str, int, str]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in REASON_CALLS:
                continue
            for arg in [*node.args, *(k.value for k in node.keywords if k.arg in ("reason", "error"))]:
                text = _text(arg)
                if text is not None:
                    out.append((str(path.relative_to(SRC)), node.lineno, text))
    return out


def test_every_reason_string_in_the_package_reads_cleanly():
    found = reason_strings()
    assert len(found) > 100  # the collection found the package's reasons, not an empty list
    assert any(text == "missing item_id" for _, _, text in found)
    bad = []
    for where, line, text in found:
        parts = text.split("\0")  # each value its own token: "{a} {b}" is not a word twice
        rendered = parts[0] + "".join(f"V{k}{part}" for k, part in enumerate(parts[1:]))
        bad += [(where, line, text, problem) for problem in badly_read(rendered)]
    assert bad == []
    assert badly_read("not JSON: Invalid control character at at column 9") == ["'at' twice"]
