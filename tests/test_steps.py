"""Step segmentation on real-looking outputs, token spans from per-token offsets, the steps stage."""


import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures.crm import sidecar, sidecar_row, tokenize
from peekaboo.segmentation import SegmentationError, resolve_segmenter, segment, token_spans
from peekaboo.stage import StageCall
from peekaboo.steps import STEPS_COLUMNS, run_stage, segment_traces
from peekaboo.tables import read_provenance, read_table, write_table

PANELS_OUTPUT = "Step 1: The top-left shape is red.\nStep 2: The bottom-right shape is blue.\nStep 3: They differ.\nAnswer: no"

QWEN_THINKING = (
    "Okay, the question asks for the colour of the top-left shape.\n\n"
    "Looking at the image, the top-left panel holds a circle. It looks red, about 3.5 cm wide.\n\n"
    "So the answer is red.\n</think>\n\nThe top-left shape is **red**."
)

GLM_NUMBERED = (
    "**Step 1:** Read the bar for 2019: it reaches 40.\n"
    "**Step 2:** Read the bar for 2020: it reaches 55.\n"
    "**Step 3:** 55 - 40 = 15.\n\n"
    "**Final Answer:** 15"
)

PLAIN = "The chart shows three bars. The tallest is blue!\n1. Blue is 12.\n2. Red is 7\nAnswer: B"


def spans_text(text, steps):
    return [text[s.char_start:s.char_end] for s in steps]


def test_markers_on_panels_output():
    steps = segment(PANELS_OUTPUT, "markers")
    assert [s.kind for s in steps] == ["think", "think", "think", "answer"]
    assert [s.text for s in steps] == [
        "The top-left shape is red.",
        "The bottom-right shape is blue.",
        "They differ.",
        "no",
    ]
    # spans cover the marker too, never the newline between steps
    assert spans_text(PANELS_OUTPUT, steps) == PANELS_OUTPUT.split("\n")


def test_markers_bold_and_final_answer():
    steps = segment(GLM_NUMBERED, "auto")
    assert [s.kind for s in steps] == ["think"] * 3 + ["answer"]
    assert steps[0].text == "Read the bar for 2019: it reaches 40."
    assert steps[2].text == "55 - 40 = 15."
    assert steps[3].text == "15"
    assert spans_text(GLM_NUMBERED, steps)[3] == "**Final Answer:** 15"


def test_markers_preamble_is_its_own_step_and_unmarked_text_falls_back():
    text = "Let me look at the panels. Step 1: The top-left shape is red. Answer: red"
    steps = segment(text, "markers")
    assert [s.text for s in steps] == ["Let me look at the panels.", "The top-left shape is red.", "red"]
    # no marker at all: sentences, with the answer still found
    assert [s.text for s in segment("It is red. Surely.\nAnswer: red", "markers")] == ["It is red.", "Surely.", "red"]


def test_think_block_sentences_then_answer():
    steps = segment(QWEN_THINKING, "think", think_split="sentences")
    assert [s.kind for s in steps] == ["think"] * 4 + ["answer"]
    assert steps[0].text == "Okay, the question asks for the colour of the top-left shape."
    assert steps[2].text == "It looks red, about 3.5 cm wide."  # a decimal point is no sentence end
    assert steps[-1].text == "The top-left shape is **red**."
    assert spans_text(QWEN_THINKING, steps) == [s.text for s in steps]


def test_think_block_paragraphs_and_opening_tag():
    text = "<think>First paragraph. Still first.\n\nSecond paragraph.</think>Answer: B"
    steps = segment(text, "auto", think_split="paragraphs")
    assert [s.text for s in steps] == ["First paragraph. Still first.", "Second paragraph.", "Answer: B"]
    assert [s.kind for s in steps] == ["think", "think", "answer"]
    assert steps[0].char_start == len("<think>")


def test_sentences_lines_and_enumerators():
    steps = segment(PLAIN, "sentences")
    assert [s.text for s in steps] == [
        "The chart shows three bars.",
        "The tallest is blue!",
        "1. Blue is 12.",
        "2. Red is 7",
        "B",
    ]
    assert steps[-1].kind == "answer"


def test_empty_output_has_no_steps():
    assert segment("", "auto") == []
    assert segment(None, "markers") == []
    assert segment("   \n ", "think") == []


def test_truncated_traces_have_no_answer_step():
    cut_think = "<think>The top-left panel is red. Now the bottom-right one is"
    steps = segment(cut_think, "auto")
    assert [s.kind for s in steps] == ["think", "think"]
    assert steps[-1].text == "Now the bottom-right one is"
    cut_steps = "Step 1: The top-left shape is red.\nStep 2: The bottom-"
    steps = segment(cut_steps, "auto")
    assert [s.kind for s in steps] == ["think", "think"]
    assert steps[-1].text == "The bottom-"
    # cut right after the marker: an answer with no content is no answer
    assert [s.kind for s in segment("Step 1: red.\nAnswer:", "markers")] == ["think"]


def test_min_chars_drops_tiny_reasoning_steps_but_never_the_answer():
    steps = segment("Ok. Hm. The shape is red.\nAnswer: A", "sentences", min_chars=4)
    assert [s.text for s in steps] == ["The shape is red.", "A"]


def test_auto_decides_by_content():
    assert resolve_segmenter(QWEN_THINKING, "auto") == "think"
    assert resolve_segmenter(PANELS_OUTPUT, "auto") == "markers"
    assert resolve_segmenter(PLAIN, "auto") == "sentences"
    assert resolve_segmenter(PLAIN, "markers") == "markers"
    with pytest.raises(SegmentationError, match="segmenter 'lines'"):
        resolve_segmenter(PLAIN, "lines")


def test_token_spans_from_offsets_by_hand():
    text = "Step 1: red.\nAnswer: red"
    starts, ends = tokenize(text)
    tokens = [text[a:b] for a, b in zip(starts, ends)]
    assert tokens == ["Step", " 1", ":", " red", ".", "\n", "Answer", ":", " red", ""]
    steps = segment(text, "markers")
    # the newline token lies between the steps, the end-of-sequence token after the text: in no step
    assert token_spans(steps, text, starts, ends) == [(0, 5), (6, 9)]


def test_token_spans_follow_first_non_space_character():
    # a token " Step" that starts with the space ending step 1 belongs to step 2
    text = "Step 1: a b. Step 2: c d."
    starts, ends = tokenize(text)
    steps = segment(text, "markers")
    (a0, a1), (b0, b1) = token_spans(steps, text, starts, ends)
    assert "".join(text[starts[t]:ends[t]] for t in range(a0, a1)) == "Step 1: a b."
    assert "".join(text[starts[t]:ends[t]] for t in range(b0, b1)) == " Step 2: c d."
    assert a1 == b0  # contiguous: nothing between the steps


def test_token_spans_reject_unordered_offsets():
    with pytest.raises(ValueError, match="increasing order"):
        token_spans(segment("Step 1: a. Step 2: b.", "markers"), "Step 1: a. Step 2: b.", [10, 0], [12, 2])


def _sidecar():
    rows = [
        sidecar_row("m", "panels", "i1", "base", PANELS_OUTPUT, answer_text="no"),
        sidecar_row("m", "panels", "i1", "drop:0", "", answer_text=None),  # empty output
        sidecar_row("m", "panels", "i1", "drop:1", None, status="failed"),
        sidecar_row("m", "panels", "i2", "base", "Step 1: 3 + 4 = 7.\nStep 2: 7 + 1 =", truncated=True),
    ]
    return sidecar(rows)


def test_segment_traces_columns_failed_and_empty(peekaboo_log):
    df = _sidecar()
    steps = segment_traces(df, "auto", {"think_split": "sentences", "min_chars": 2})
    assert list(steps.columns) == STEPS_COLUMNS
    assert steps["trace_id"].unique().tolist() == ["m|i1|base|none", "m|i2|base|none"]
    base = steps[steps["trace_id"] == "m|i1|base|none"]
    assert base["step"].tolist() == [0, 1, 2, 3]
    assert base["kind"].tolist() == ["think", "think", "think", "answer"]
    assert base["segmenter"].unique().tolist() == ["markers"]
    # token spans: contiguous over the text, the answer's last token before end-of-sequence
    n_tokens = int(df.loc[0, "n_tokens"])
    assert base["token_start"].iloc[0] == 0
    assert base["token_end"].iloc[-1] == n_tokens - 1
    truncated = steps[steps["trace_id"] == "m|i2|base|none"]
    assert truncated["kind"].tolist() == ["think", "think"]
    assert "1 failed (left out)" in peekaboo_log.text
    assert "1 without any step" in peekaboo_log.text
    assert "m|i1|drop:1|gray: status failed" in peekaboo_log.text


def test_segment_traces_bad_offsets_leave_token_spans_null(peekaboo_log):
    row = sidecar_row("m", "panels", "i1", "base", PANELS_OUTPUT)
    row["token_char_start"] = None
    steps = segment_traces(sidecar([row]), "markers", {})
    assert len(steps) == 4
    assert steps["token_start"].isna().all() and steps["char_start"].notna().all()
    assert "no per-token character offsets" in peekaboo_log.text


def test_segment_traces_needs_text_column():
    with pytest.raises(ValueError, match="lacks column"):
        segment_traces(pd.DataFrame({"trace_id": ["a"]}), "auto", {})


def test_run_stage_writes_table_with_provenance(tmp_path):
    df = _sidecar()
    paths = []
    for i, part in enumerate((df.iloc[:2], df.iloc[2:])):
        paths.append(tmp_path / f"shard-{i}.parquet")
        write_table(part, paths[-1])
    out = tmp_path / "steps" / "m" / "panels.parquet"
    steps_cfg = {"think_split": "sentences", "min_chars": 2}
    run_stage(StageCall(inputs={"sidecars": [str(p) for p in paths]}, outputs={"steps": str(out)},
                        config={"steps": steps_cfg, "segmenter": "auto"}, results_dir=tmp_path))
    steps = segment_traces(df, "auto", steps_cfg)
    back = read_table(out)
    assert len(back) == len(steps) == 6
    assert back["text"].tolist() == steps["text"].tolist()
    assert pq.read_schema(out).field("token_end").type == pa.int32()
    assert "config_hash" in read_provenance(out)
    # only a failed trace: no steps, but the typed columns are there for the next stage
    only_failed = tmp_path / "failed.parquet"
    write_table(df.iloc[2:3], only_failed)
    none = tmp_path / "none.parquet"
    run_stage(StageCall(inputs={"sidecars": [str(only_failed)]}, outputs={"steps": str(none)},
                        config={"steps": steps_cfg, "segmenter": "auto"}, results_dir=tmp_path))
    assert len(read_table(none)) == 0
    assert pq.read_schema(none).names == STEPS_COLUMNS
    assert pq.read_schema(none).field("step").type == pa.int32()


def test_a_chain_cut_off_inside_a_block_the_prompt_opened_has_no_answer_step():
    cut = "The left panel is red. Answer: maybe B, but the right panel is"
    # without the prompt's state, the mid-thought "Answer:" reads as an answer step
    assert [s.kind for s in segment(cut, "auto")] == ["think", "answer"]
    steps = segment(cut, "auto", thinking_open=True)
    assert [s.kind for s in steps] == ["think", "think"] and steps[-1].text.startswith("Answer: maybe B")
    assert [s.kind for s in segment(cut, "markers", thinking_open=True)] == ["think", "think"]
    # a closed block is read as before: the answer after </think>
    closed = "The left panel is red.</think>Answer: B"
    assert [s.kind for s in segment(closed, "auto", thinking_open=True)] == ["think", "answer"]


def test_segment_traces_learn_the_prompt_opened_thinking_from_the_traces(peekaboo_log):
    cut = "The left panel is red. Answer: maybe B, but the right panel is"
    rows = [sidecar_row("m", "d", "i1", "base", "The panel is red.</think>Answer: B", answer_text="B"),
            sidecar_row("m", "d", "i2", "base", cut, truncated=True)]
    steps = segment_traces(sidecar(rows), "auto", {"think_split": "sentences", "min_chars": 2})
    assert steps[steps["item_id"] == "i2"]["kind"].tolist() == ["think", "think"]
    assert "the prompt opens a thinking block (1 traces close a thinking block they never opened)" in peekaboo_log.text
    # alone (no trace shows the template's opening tag) the same chain keeps its answer step ...
    alone = segment_traces(sidecar(rows[1:]), "auto", {"think_split": "sentences", "min_chars": 2})
    assert alone["kind"].tolist() == ["think", "answer"]
    # ... unless the sidecar says what the prompt was
    told = sidecar(rows[1:]).assign(thinking_open=True)
    assert segment_traces(told, "auto", {"think_split": "sentences", "min_chars": 2})["kind"].tolist() == ["think", "think"]
