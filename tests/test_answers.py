"""Reading answers: gold answers' normal forms and numbers (``peekaboo.answers``, shared by readers and
scorers), the thinking split (``peekaboo.thinking``) and the scorers' extraction (``peekaboo.scoring.extraction``)."""

import pytest

from peekaboo import answers
from peekaboo.scoring import extraction
from peekaboo.thinking import split_thinking


@pytest.mark.parametrize(
    "text",
    [
        "unknown",
        "Unknown.",
        "I cannot see the top-left panel.",
        "I can't tell from the image",
        "The shape is not visible",
        "the panel is hidden",
        "It cannot be determined",
        "There is not enough information",
        "I don't know",
    ],
)
def test_abstentions_are_detected(text):
    assert extraction.is_abstention(text)


@pytest.mark.parametrize("text", ["red", "B", "42", "yes", "the circle is larger", "The known value is 3", ""])
def test_answers_are_not_abstentions(text):
    assert not extraction.is_abstention(text)


def test_final_answer_text_takes_the_last_marker_line():
    response = "Step 1: Panel A is red. Answer: draft\nStep 2: so it is red.\nAnswer: red\nThanks"
    assert extraction.final_answer_text(response) == "red"
    assert extraction.final_answer_text("Final answer: (B)") == "(B)"


def test_final_answer_text_falls_back_to_last_line_outside_think():
    assert extraction.final_answer_text("<think>Answer: no</think>\nThe shapes match.\nYes.\n\n") == "Yes."
    assert extraction.final_answer_text("reasoning here</think>\nblue") == "blue"
    assert extraction.final_answer_text("") == ""


@pytest.mark.parametrize(
    "text,expected",
    [
        ("B", "B"),
        ("(c)", "C"),
        ("B. blue", "B"),
        ("The answer is (D)", "D"),
        ("option b", "B"),
        ("I pick C.", "C"),
        ("blue", "B"),  # the choice's own text
        ("it is the dark red one", "C"),  # 'red' also appears, inside the longer 'dark red'
        ("A purple circle", None),  # the article A is not a letter
        ("E", None),  # beyond the choices
    ],
)
def test_extract_letter(text, expected):
    assert extraction.extract_letter(text, choices=["red", "blue", "dark red", "green"]) == expected


@pytest.mark.parametrize(
    "text,expected",
    [("Yes, it is.", "yes"), ("no", "no"), ("True", "yes"), ("I think the answer is no", "no"), ("maybe", None)],
)
def test_extract_yes_no(text, expected):
    assert extraction.extract_yes_no(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("12 apples", 12.0),
        ("-3.5", -3.5),
        ("1,234.5", 1234.5),
        ("3/4", 0.75),
        ("45%", 45.0),
        ("−2", -2.0),
        ("x1 and B2", None),
        ("none", None),
    ],
)
def test_parse_number(text, expected):
    assert answers.parse_number(text) == expected


def test_parse_number_first_or_last():
    assert answers.parse_number("3 + 4 = 7", which="last") == 7.0
    assert answers.parse_number("3 + 4 = 7", which="first") == 3.0


@pytest.mark.parametrize(
    "answer,answer_type,choices,expected",
    [
        ("Blue", "multi_choice", ["red", "blue"], "B"),
        ("b", "multi_choice", ["red", "blue"], "B"),
        (0, "multi_choice", ["red", "blue"], "A"),
        ("1,000", "integer", None, "1000"),
        (7, "integer", None, "7"),
        ("3.50", "float", None, "3.50"),
        ("1e3", "float", None, "1000"),
        (True, "yes_no", None, "yes"),
        ("No.", "yes_no", None, "no"),
        ("  The Red  Circle. ", "text", None, "red circle"),
        (["A", "b "], "list", None, "a, b"),
    ],
)
def test_normalize_answer(answer, answer_type, choices, expected):
    assert answers.normalize_answer(answer, answer_type, choices) == expected


@pytest.mark.parametrize(
    "answer,answer_type,choices",
    [("purple", "multi_choice", ["red", "blue"]), ("x", "integer", None), ("2.5", "integer", None), ("maybe", "yes_no", None)],
)
def test_normalize_answer_rejects_misfits(answer, answer_type, choices):
    with pytest.raises(answers.AnswerFormatError):
        answers.normalize_answer(answer, answer_type, choices)


def test_infer_answer_type():
    assert answers.infer_answer_type("x", ["a", "b"]) == "multi_choice"
    assert answers.infer_answer_type("12") == "integer"
    assert answers.infer_answer_type("1.5") == "float"
    assert answers.infer_answer_type("Yes") == "yes_no"
    assert answers.infer_answer_type(["a"]) == "list"
    assert answers.infer_answer_type("red") == "text"


def test_score_response_by_type():
    s = extraction.score_response("Step 1: it is blue.\nAnswer: (B)", "B", "multi_choice", ["red", "blue"])
    assert (s.answer_text, s.correct, s.abstained) == ("B", True, False)
    assert extraction.score_response("Answer: red", "B", "multi_choice", ["red", "blue"]).correct is False
    assert extraction.score_response("so 3 + 4 = 7", "7", "integer").correct is True
    assert extraction.score_response("Answer: 7.5", "7", "integer").correct is False  # never rounded to 8 or 7
    assert extraction.score_response("Answer: 3.14159", "3.14", "float").correct is True
    assert extraction.score_response("Answer: 3.16", "3.14", "float").correct is False
    assert extraction.score_response("Answer: Yes, they match", "yes", "yes_no").correct is True
    assert extraction.score_response("Answer: The Red Circle.", "red circle", "text").correct is True
    assert extraction.score_response("Answer: b and a", "a, b", "list").correct is True


def test_abstention_scores_wrong_and_flagged():
    s = extraction.score_response("Step 1: the panel is hidden.\nAnswer: unknown", "B", "multi_choice", ["red", "blue"])
    assert s.abstained is True and s.correct is False
    # a chain that mentions the hidden panel but still answers is no abstention (it is what CRM looks for)
    s = extraction.score_response("Step 1: the panel is hidden.\nAnswer: B", "B", "multi_choice", ["red", "blue"])
    assert s.abstained is False and s.correct is True
    # a gold answer that is itself 'unknown' is matched by an abstention
    assert extraction.score_response("Answer: cannot tell", "unknown", "text").correct is True


def test_unparsable_response_is_wrong_not_none():
    s = extraction.score_response("Answer: purple", "B", "multi_choice", ["red", "blue"])
    assert s.answer_text is None and s.correct is False


def test_question_with_choices_lists_letters():
    q = answers.question_with_choices("Which colour?", ["red", "blue"])
    assert q == "Which colour?\nChoices:\n(A) red\n(B) blue"
    assert answers.question_with_choices("Q?", None) == "Q?"


# --- thinking blocks and the final stated answer -------------------------------------------------


@pytest.mark.parametrize(
    "response, thinking_open, part, truncated",
    [
        ("<think>a</think>B", False, "B", False),
        ("a</think>\n\nB", True, "\n\nB", False),  # the template opened the block
        ("a</think>B", False, "B", False),
        ("<think>a</think>B<think>c", False, "", True),  # re-opened and never closed
        ("<think>a, so Answer: B", False, "", True),
        ("a, so Answer: B", True, "", True),  # cut off with no tag at all
        ("a, so Answer: B", False, "a, so Answer: B", False),  # a model that does not think
        ("", True, "", True),
        (None, False, "", False),
        ("<THINK>a</THINK>B", False, "B", False),
    ],
)
def test_split_thinking(response, thinking_open, part, truncated):
    assert split_thinking(response, thinking_open) == (part, truncated)


@pytest.mark.parametrize(
    "text, final, stated",
    [
        ("so it is 5.\n\\boxed{5}", "5", True),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", True),  # nested braces
        ("$\\boxed{\\text{B}}$", "B", True),
        ("\\boxed{12\\text{ cm}}", "12 cm", True),
        ("<answer>The answer is <|begin_of_box|>C<|end_of_box|></answer>", "C", True),
        ("Answer: A\nWait.\nAnswer: C\nThat is all.", "C", True),  # the last stated answer wins
        ("\\boxed{A} ... on reflection the answer is C.", "C.", True),
        ("The answer is \\boxed{7}.", "7", True),
        ("**Answer:** C", "C", True),
        ("**Final Answer**: (B)", "(B)", True),
        ("Final answer:\n\n**D**", "D", True),  # the answer on the next line
        ("The correct option is J.", "J.", True),
        ("Answer：B", "B", True),  # a full-width colon
        ("\\boxed{\\text{Answer: C}}", "Answer: C", True),  # a marker inside a box belongs to the box
        ("Yes, they match.\nThey are equal.", "They are equal.", False),
        ("<answer>C</answer>", "C", False),
        ("", "", False),
    ],
)
def test_final_answer(text, final, stated):
    assert extraction.final_answer(text) == (final, stated)


def test_final_answer_text_skips_the_thinking():
    assert extraction.final_answer_text("Maybe Answer: A\n</think>\n\nAnswer: C", thinking_open=True) == "C"
    assert extraction.final_answer_text("Maybe Answer: A", thinking_open=True) == ""


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", ("yes", False)),
        ("No, I cannot tell for sure.", ("no", False)),  # commits to no
        ("No way to tell.", (None, True)),
        ("There is no way to tell.", (None, True)),
        ("Yes and no.", (None, False)),
        ("Yes, but no, I cannot tell.", (None, True)),
        ("Yes, they match.\nThey are drawn alike.", ("yes", False)),  # unstated: the only one named
        ("The answer is No.", ("no", False)),
        ("Answer: no\nExplanation: yes, it looks bigger, but", ("no", False)),
        ("False.", ("no", False)),
        ("N/A", (None, False)),
        ("maybe", (None, False)),
        ("", (None, False)),
    ],
)
def test_read_yes_no(text, expected):
    assert extraction.read_yes_no(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("C because the ledger shows credit sales", "C"),
        ("B) 42 kg", "B"),
        ("(D) blue", "D"),
        ("B major, clearly", "D"),  # an option's text starts with "B": the text, not the letter
    ],
)
def test_extract_letter_reads_a_stated_letter_before_its_reason(text, expected):
    assert extraction.extract_letter(text, choices=["red", "blue", "green", "B major"]) == expected


def test_latex_fractions_are_numbers():
    assert answers.parse_number("\\frac{3}{4}") == 0.75
    assert answers.parse_number("\\dfrac{ 20 }{ 3 } cm") == pytest.approx(20 / 3)


def test_score_response_marks_a_cut_off_chain_truncated():
    s = extraction.score_response("The panel is red, so Answer: red", "red", "text", thinking_open=True)
    assert (s.answer_text, s.correct, s.truncated) == (None, False, True)
    s = extraction.score_response("The panel is red.</think>Answer: red", "red", "text", thinking_open=True)
    assert (s.answer_text, s.correct, s.truncated) == ("red", True, False)


@pytest.mark.parametrize(
    "statement,ordinals,expected",
    [
        ("from 1003 subtract 3 to get 1000", False, 1000.0),  # issue 26: the stated result, not the first number
        ("1000, because 1003 - 3 = 1000", False, 1000.0),
        ("12 because 3 × 4 = 12", False, 12.0),
        ("3 × 4 = 12", False, 12.0),
        ("5 - 2 = 3", False, 3.0),
        ("adding 1 to 6 gives 7, so the value is 6", False, 6.0),
        ("the total is 1000 dollars", False, 1000.0),
        ("approximately 3.5 m", False, 3.5),
        ("$12", False, 12.0),
        ("12cm", False, 12.0),
        ("9 cm^2", False, 9.0),
        ("x = -3", False, -3.0),
        ("$\\frac{3}{4}$", False, 0.75),
        ("７０．４", False, 70.4),
        ("12; the bar at 15 is another year", False, 12.0),
        ("four", False, 4.0),  # issue 26: number words
        ("Twenty-one.", False, 21.0),
        ("a hundred and five", False, 105.0),
        ("two hundred", False, 200.0),
        ("one half", False, 0.5),
        ("the third", True, 3.0),
        ("the 3rd", True, 3.0),
        ("twenty-first", True, 21.0),
        ("the third", False, None),  # an ordinal is no number unless a count or position is asked
        ("none", False, None),
        # where the rule is fooled (docs/datasets.md): a result word before a second number, working without a result
        ("the larger is 7 and the smaller is 5", False, 5.0),
        ("from 1003 subtract 3", False, 1003.0),
    ],
)
def test_stated_number_reads_the_stated_result(statement, ordinals, expected):
    assert extraction.stated_number(statement, ordinals) == expected


@pytest.mark.parametrize(
    "question,expected",
    [("How many cubes are left?", True), ("What is the number of red bars?", True), ("In which position is it?", True),
     ("Hint: ... a floating-point number with one decimal place ... What is the ratio?", False),
     ("What is the value of x?", False)],
)
def test_ordinals_only_where_a_count_is_asked(question, expected):
    assert extraction.asks_for_a_count(question) is expected


@pytest.mark.parametrize(
    "text,expected",
    [('"C".', "C"), ("“C”", "C"), ("'C'", "C"), ("「B」。", "B"), ("**C**", "C"), ('option "C"', "C"),
     ("I pick option **D**.", "D"), ("选项C", "C"), ('The answer is "C".', "C")],
)
def test_extract_letter_reads_quoted_and_bold_letters(text, expected):
    assert extraction.extract_letter(text, choices=["135°", "140°", "145°", "150°"]) == expected


@pytest.mark.parametrize(
    "text,expected",
    [("答案是 C", "C"), ("最终答案：4", "4"), ("Respuesta: 12", "12"), ("La réponse est B.", "B."), ("Ответ: 5", "5"),
     ("Die Antwort ist 7.", "7."), ("答え：3", "3")],
)
def test_final_answer_markers_in_other_languages(text, expected):
    assert extraction.final_answer(text) == (expected, True)


@pytest.mark.parametrize(
    "line,expected",
    [("There are 2 blocks that have exactly 36 houses.", 2.0), ("So 3 + 4 = 7", 7.0), ("It has 4 legs.", 4.0),
     ("The length is 9 cm^2.", 9.0), ("There are twelve of them.", 12.0), ("No number here.", None)],
)
def test_last_line_number_reads_the_result(line, expected):
    assert extraction.last_line_number(line) == expected
