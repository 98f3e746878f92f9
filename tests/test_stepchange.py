"""Step change measures, acknowledgements, and their separation on the labelled step pairs."""

from pathlib import Path

import pandas as pd
import pytest

from peekaboo import schema
from peekaboo.alignment import StepEncoder
from peekaboo.stepchange import Acknowledgement, auroc, named_values, step_change, values_distance
from fixtures.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "tests" / "data" / "crm_step_pairs.csv"


def test_named_values_normalise_numbers_synonyms_and_proper_nouns():
    assert named_values("The thermometer reads twenty-five degrees.") == {"25"}
    assert named_values("Seven apples, 3 pears.") == {"7", "3"}
    assert named_values("The upper-left shape is grey.") == {"top", "left", "gray"}
    assert named_values("There are two circles.") == {"2", "circle"}
    # a capitalised word opening a sentence counts only where the other step has it as a proper noun
    assert "paris" not in named_values("Paris is marked.")
    assert "paris" in named_values("Paris is marked.", "The map marks Paris.")
    # a line break, a bullet or markdown emphasis opens a sentence too
    assert named_values("First we look.\nThe shape is red.") == {"red"}
    assert named_values("- **Red** is the colour.") == {"red"}
    assert named_values("The caption says 'Save water'.") >= {"'save water'"}
    assert named_values("The cartoon's caption") == frozenset()  # a possessive is no quote
    assert named_values("no") == {"no"} and "no" not in named_values("The tree has no leaves at all.")


def test_values_distance_separates_a_changed_fact_from_a_rewording():
    assert values_distance("The clock shows 3:15.", "According to the clock it is 3:15.") == 0.0
    assert values_distance("The clock shows 3:15.", "The clock shows 9:45.") == 1.0
    assert values_distance("The top-left shape is red.", "The top-left shape is green.") == pytest.approx(0.5)
    assert values_distance("It is raining.", "The sun shines.") == 0.0  # neither names a value


def test_acknowledgement_phrases_default_from_the_schema_and_configurable():
    ack = Acknowledgement()
    assert ack.phrases == tuple(schema.section("crm", {})["acknowledgement_phrases"])
    for text in ("The top-left panel is hidden.", "I can't make out the label.", "That part is greyed out.",
                 "The sign is unreadable.", "The price is not visible."):
        assert ack(text), text
    for text in ("The top-left shape is red.", "x = 3.", ""):
        assert not ack(text), text
    custom = Acknowledgement([r"\bverdeckt\b"])
    assert custom("Das Feld ist verdeckt.") and not custom("The panel is hidden.")
    assert not Acknowledgement([])("The panel is hidden.")
    with pytest.raises(ValueError, match="crm.acknowledgement_phrases"):
        Acknowledgement(["(unclosed"])


def test_step_change_measures():
    ack = Acknowledgement()
    a, b = "The top-left shape is red.", "The top-left shape is green."
    assert step_change(a, b, 0.95, "cosine", ack) == pytest.approx(0.05)
    assert step_change(a, b, 0.95, "values", ack) == pytest.approx(0.5)
    assert step_change(a, b, 0.95, "cosine_values", ack) == pytest.approx(0.5)
    assert step_change(a, "The top-left panel is hidden.", 0.8, "cosine_values_ack", ack) == 1.0
    assert step_change(a, a, 1.0, "cosine_values_ack", ack) == 0.0
    with pytest.raises(ValueError, match="crm.change_measure: unknown measure 'bleu'"):
        step_change(a, b, 0.9, "bleu", ack)


def test_auroc_counts_ties_half():
    assert auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auroc([0.5, 0.5], [1, 0]) == 0.5
    assert auroc([0.1, 0.9], [1, 0]) == 0.0


def test_labelled_pairs_and_the_default_measure_separates_them_best():
    pairs = pd.read_csv(PAIRS)
    assert len(pairs) >= 200
    counts = pairs["kind"].value_counts()
    assert set(counts.index) == {"paraphrase", "colour", "number", "entity", "acknowledgement", "unrelated"}
    assert (pairs["changed"] == (pairs["kind"] != "paraphrase").astype(int)).all()
    module = load_script("checks/crm_change_measures.py")
    table = module.measure_table(pairs, StepEncoder("all-MiniLM-L6-v2", device="cpu"), Acknowledgement()).set_index(
        "measure")
    default = schema.section("crm", {})["change_measure"]
    assert table.loc[default, "auroc_all"] == table["auroc_all"].max()
    # the cosine alone cannot tell a swapped number from a rewording; the default can
    assert table.loc["cosine", "auroc_number"] < 0.7 < 0.9 < table.loc[default, "auroc_number"]
    assert table.loc[default, "auroc_all"] > table.loc["cosine", "auroc_all"] + 0.03
