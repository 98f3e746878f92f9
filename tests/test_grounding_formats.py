"""Grounding answers parsed in each family's published format, including malformed and cut-off ones.

The well-formed answers are written as the families' documentation shows them:
Qwen2.5-VL and Qwen3-VL cookbooks (a ```json fenced list of bbox_2d objects),
Qwen2-VL's object-reference and box tokens, GLM-V's README (box tokens with
varying bracket styles) and GLM's final-answer boxes.
"""

import pytest

from peekaboo.grounding.coords import NORM_1000, RESIZED_PIXELS
from peekaboo.grounding.formats import FORMATS, FormatError, format_for, parse_answer

QWEN_COOKBOOK = """```json
[
\t{"bbox_2d": [135, 114, 1016, 672], "label": "chart"},
\t{"bbox_2d": [10, 20, 30, 40], "label": "legend"}
]
```"""


def coords(parsed):
    return [b.coords for b in parsed.boxes]


def kinds(parsed):
    return [(r.kind, r.box) for r in parsed.rejects]


@pytest.mark.parametrize("fmt", ["qwen2_5_vl", "qwen3_vl", "glm"])
def test_cookbook_json_lists(fmt):
    parsed = parse_answer(QWEN_COOKBOOK, fmt)
    assert coords(parsed) == [(135.0, 114.0, 1016.0, 672.0), (10.0, 20.0, 30.0, 40.0)]
    assert [b.label for b in parsed.boxes] == ["chart", "legend"] and [b.index for b in parsed.boxes] == [0, 1]
    assert parsed.rejects == []
    assert parsed.boxes[0].fragment == '{"bbox_2d": [135, 114, 1016, 672], "label": "chart"}'


def test_coordinate_space_per_format():
    assert parse_answer("", "qwen2_5_vl").space == RESIZED_PIXELS
    assert {f: parse_answer("", f).space for f in ("qwen2_vl", "qwen3_vl", "glm")} == dict.fromkeys(
        ("qwen2_vl", "qwen3_vl", "glm"), NORM_1000)


def test_a_single_object_python_literals_and_floats():
    parsed = parse_answer('{"bbox_2d": [1.5, 2, 3e2, 4], "label": "x"}', "qwen3_vl")
    assert coords(parsed) == [(1.5, 2.0, 300.0, 4.0)]
    parsed = parse_answer("[{'bbox_2d': [1, 2, 3, 4], 'label': 'a b'}]", "qwen2_5_vl")  # the cookbook's literal_eval
    assert coords(parsed) == [(1.0, 2.0, 3.0, 4.0)] and parsed.boxes[0].label == "a b"


def test_malformed_json_objects_are_rejected_one_by_one():
    answer = ('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [1, 2, 3], "label": "three"}, '
              '{"bbox_2d": [1, "two", 3, 4]}, {"bbox_2d": [1, 2, 3, 4],, }, {"point_2d": [5, 6], "label": "p"}, '
              '{"bbox_2d": [true, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8]}]')
    parsed = parse_answer(answer, "qwen3_vl")
    assert coords(parsed) == [(1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)]
    assert [b.index for b in parsed.boxes] == [0, 6]
    assert kinds(parsed) == [("unparseable answer", 1), ("unparseable answer", 2), ("unparseable answer", 3),
                             ("no box", 4), ("unparseable answer", 5)]
    assert "not four numbers" in parsed.rejects[0].detail and "not valid JSON" in parsed.rejects[2].detail
    assert "point_2d" in parsed.rejects[3].detail


@pytest.mark.parametrize("answer, fragment", [
    ('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6', '{"bbox_2d": [5, 6'),
    ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_', '{"bbox_'),
    ('```json\n[{"bbox_2d": [1, 2, 3, 4]}, {', "{"),
])
def test_answers_cut_off_keep_the_boxes_before_the_cut(answer, fragment):
    parsed = parse_answer(answer, "qwen2_5_vl")
    assert coords(parsed) == [(1.0, 2.0, 3.0, 4.0)]
    assert kinds(parsed) == [("unparseable answer", 1)] and parsed.rejects[0].fragment == fragment
    assert "cut off" in parsed.rejects[0].detail


def test_thinking_blocks_are_skipped_and_an_unclosed_one_is_no_answer():
    parsed = parse_answer('<think>maybe {"bbox_2d": [9, 9, 9, 9]}</think>\n[{"bbox_2d": [1, 2, 3, 4]}]', "qwen3_vl")
    assert coords(parsed) == [(1.0, 2.0, 3.0, 4.0)] and parsed.rejects == []
    parsed = parse_answer('<think>I should box {"bbox_2d": [1, 2, 3, 4]}', "qwen3_vl")
    assert parsed.boxes == [] and kinds(parsed) == [("no answer", None)]
    assert "never closed" in parsed.rejects[0].detail
    assert kinds(parse_answer("", "glm")) == [("no answer", None)]


def test_an_answer_without_a_box_names_the_expected_format():
    parsed = parse_answer("The answer is (B) 102.", "qwen2_5_vl")
    assert parsed.boxes == [] and kinds(parsed) == [("no box", None)]
    assert "bbox_2d" in parsed.rejects[0].detail and parsed.rejects[0].fragment == "The answer is (B) 102."
    # bare coordinate lists are no documented format of these families
    assert kinds(parse_answer("[12, 30, 80, 95]", "qwen3_vl")) == [("no box", None)]


def test_qwen2_vl_box_tokens_with_object_references():
    answer = ("<|object_ref_start|>the red car<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|> and "
              "<|box_start|>( 5 , 6 ),( 7 , 8 )<|box_end|><|object_ref_start|>a dog<|object_ref_end|>"
              "<|box_start|>(1,2),(3<|box_end|><|box_start|>(10,10),(20,20)")
    parsed = parse_answer(answer, "qwen2_vl")
    assert coords(parsed) == [(100.0, 200.0, 300.0, 400.0), (5.0, 6.0, 7.0, 8.0)]
    assert [b.label for b in parsed.boxes] == ["the red car", None]  # a reference labels only the box after it
    assert kinds(parsed) == [("unparseable answer", 2), ("unparseable answer", 3)]
    assert "(x1,y1),(x2,y2)" in parsed.rejects[0].detail and "without <|box_end|>" in parsed.rejects[1].detail
    # JSON is no documented Qwen2-VL format: not read as boxes
    assert kinds(parse_answer('[{"bbox_2d": [1, 2, 3, 4]}]', "qwen2_vl")) == [("no box", None)]


def test_glm_box_tokens_in_every_bracket_style():
    for content, expected in [
        ("[[100,250,600,750]]", [(100.0, 250.0, 600.0, 750.0)]),
        ("[100, 250, 600, 750]", [(100.0, 250.0, 600.0, 750.0)]),
        ("(100,250),(600,750)", [(100.0, 250.0, 600.0, 750.0)]),
        ("<100, 250, 600, 750>", [(100.0, 250.0, 600.0, 750.0)]),
        ("[[1,2,3,4],[5,6,7,8]]", [(1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)]),
    ]:
        parsed = parse_answer(f"The region is <|begin_of_box|>{content}<|end_of_box|>.", "glm")
        assert coords(parsed) == expected and parsed.rejects == [], content


def test_glm_final_answers_between_box_tokens_are_not_boxes():
    answer = ("<think>look</think><answer>Region <|begin_of_box|>[[10,20,30,40]]<|end_of_box|>; so the answer is "
              "<|begin_of_box|>B<|end_of_box|> or <|begin_of_box|>3.5<|end_of_box|></answer>")
    parsed = parse_answer(answer, "glm")
    assert coords(parsed) == [(10.0, 20.0, 30.0, 40.0)] and parsed.rejects == []
    parsed = parse_answer("The answer is <|begin_of_box|>12<|end_of_box|>", "glm")
    assert kinds(parsed) == [("no box", None)]


def test_glm_malformed_and_cut_off_boxes():
    parsed = parse_answer("<|begin_of_box|>[[1,2,3]]<|end_of_box|> <|begin_of_box|>[[5,6,7,8]]<|end_of_box|> "
                          "<|begin_of_box|>[[9,9", "glm")
    assert coords(parsed) == [(5.0, 6.0, 7.0, 8.0)]
    assert kinds(parsed) == [("unparseable answer", 0), ("unparseable answer", 2)]
    assert "3 numbers" in parsed.rejects[0].detail and "without <|end_of_box|>" in parsed.rejects[1].detail


def test_glm_also_reads_bbox_2d_objects():
    parsed = parse_answer('<|begin_of_box|>[[1,2,3,4]]<|end_of_box|> [{"bbox_2d": [5, 6, 7, 8], "label": "y"}]', "glm")
    assert coords(parsed) == [(1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)] and parsed.boxes[1].label == "y"


def test_format_of_each_family_and_unknown_names():
    assert {f: format_for(f) for f in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v", "glm46v", "glm4v_moe")} == {
        "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl", "glm4v": "glm", "glm46v": "glm",
        "glm4v_moe": "glm"}
    assert set(FORMATS) == {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm"}
    with pytest.raises(FormatError, match="llava"):
        format_for("llava")
    with pytest.raises(FormatError, match="known: qwen2_vl"):
        parse_answer("x", "kosmos")


def test_a_prompt_that_opened_the_thinking_block_makes_a_tagless_answer_all_reasoning():
    # Qwen3-VL-Thinking's template writes <think> into the prompt: the answer holds only "...</think>answer"
    parsed = parse_answer('look at the bar</think>[{"bbox_2d": [1, 2, 3, 4]}]', "qwen3_vl", thinking_open=True)
    assert coords(parsed) == [(1.0, 2.0, 3.0, 4.0)]
    parsed = parse_answer('the bar is at {"bbox_2d": [1, 2, 3, 4]}', "qwen3_vl", thinking_open=True)
    assert parsed.boxes == [] and kinds(parsed) == [("no answer", None)]  # cut off mid-thought
    assert coords(parse_answer('{"bbox_2d": [1, 2, 3, 4]}', "qwen3_vl")) == [(1.0, 2.0, 3.0, 4.0)]
