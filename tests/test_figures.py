"""Figures from tables alone: every file and manifest entry, sink status, empty inputs, determinism."""

import hashlib
import json

import pytest

from peekaboo import figures

from _fixtures_collapse import write_results_tree

CFG = {"formats": ["pdf", "png"], "example_items": 2, "dpi": 60}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    return root, write_results_tree(root, n_items=25, bootstrap=10)


def _digest(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_every_figure_written_listed_and_reproducible(results):
    root, inputs = results
    manifest = figures.make_figures(inputs, root, root / "figures", CFG, root / "figures" / "manifest.json")
    entries = {e["name"]: e for e in manifest["figures"]}
    assert set(entries) == set(figures.FIGURES)
    for name, e in entries.items():
        assert e["status"] == "ok", (name, e["reason"])
        assert e["caption"] and e["sources"], name
        for f in e["files"]:
            assert (root / f).stat().st_size > 1000, f
    assert entries["collapse_curve"]["sources"] == sorted(
        ["collapse/blind-spot/panels-hard.parquet", "collapse/blind-spot/panels.parquet",
         "collapse/grounded/panels-hard.parquet", "collapse/grounded/panels.parquet"])
    # attention figures say whether sinks were excluded, in the manifest and the caption
    assert entries["attention_strip"]["attention_sinks"] == "kept"
    assert entries["collapse_curve"]["caption"].endswith("Attention sinks kept.")
    assert json.loads((root / "figures" / "manifest.json").read_text()) == manifest
    files = [root / f for e in manifest["figures"] for f in e["files"]]
    first = _digest(files)
    figures.make_figures(inputs, root, root / "figures", CFG, root / "figures" / "manifest.json")
    assert _digest(files) == first


def test_empty_tables_give_placeholders_and_reasons(tmp_path, results):
    root, inputs = results
    empty = {k: [] for k in inputs}
    manifest = figures.make_figures(empty, tmp_path, tmp_path / "figures", {"formats": ["png"], "dpi": 50})
    for e in manifest["figures"]:
        assert e["status"] == "empty" and "no rows" in e["reason"]
        assert (tmp_path / e["files"][0]).exists()


def test_a_failing_figure_does_not_stop_the_others(tmp_path, results, monkeypatch):
    root, inputs = results

    def broken(t, cfg):
        raise KeyError("column_that_does_not_exist")

    monkeypatch.setitem(figures.DRAW, "coefficients", broken)
    manifest = figures.make_figures(inputs, root, tmp_path / "figs", {"formats": ["png"], "dpi": 50})
    status = {e["name"]: e["status"] for e in manifest["figures"]}
    assert status.pop("coefficients") == "failed"
    assert set(status.values()) == {"ok"}


def test_masking_table_shows_planted_reaction(results):
    root, inputs = results
    tables = figures.load_tables({"collapse_traces": inputs["collapse_traces"]}, root)
    t = figures.masking_table(tables.frames["collapse_traces"]).groupby(["model", "group"])[
        ["vision", "abstained"]].mean()
    assert t.loc[("grounded", "evidence hidden"), "vision"] < t.loc[("grounded", "unmasked"), "vision"] - 0.2
    assert t.loc[("grounded", "evidence hidden"), "abstained"] == 1.0
    assert t.loc[("blind-spot", "evidence hidden"), "abstained"] == 0.0
    assert abs(t.loc[("blind-spot", "evidence hidden"), "vision"] - t.loc[("blind-spot", "unmasked"), "vision"]) < 0.05
