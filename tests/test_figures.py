"""Figures from tables alone: every file and manifest entry, sink status, empty inputs, determinism."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from peekaboo import figures

from fixtures.findings import findings_tree
from fixtures.scripts import load_script

CFG = {"formats": ["pdf", "png"], "example_items": 2, "dpi": 50}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    return root, findings_tree(root, n_items=25, bootstrap=10)[0]


def _digest(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_every_figure_written_and_listed_with_sources_and_captions(results):
    root, inputs = results
    manifest = figures.make_figures(inputs, root, root / "figures", CFG, root / "figures" / "manifest.json")
    entries = {e["name"]: e for e in manifest["figures"]}
    assert set(entries) == set(figures.FIGURES)
    for name, e in entries.items():
        assert e["status"] == "ok", (name, e["reason"])
        assert e["caption"] and e["sources"], name
        for f in e["files"]:
            assert (root / f).stat().st_size > 1000, f
    assert entries["collapse_curve"]["sources"] == ["collapse/trajectory.csv"]
    assert entries["vision_transfer"]["sources"] == ["regression/transfer.csv"]
    assert entries["entropy_comparison"]["sources"] == ["selective/entropy_comparison.csv"]
    # attention figures say whether sinks were excluded, in the manifest and the caption
    assert entries["attention_strip"]["attention_sinks"] == "kept"
    assert entries["collapse_curve"]["caption"].endswith("Attention sinks kept.")
    assert json.loads((root / "figures" / "manifest.json").read_text()) == manifest


def test_same_tables_give_the_same_bytes(tmp_path, results, monkeypatch):
    root, inputs = results
    # two figures (seaborn with bootstrap intervals; an image with overlays) keep the test short
    monkeypatch.setattr(figures, "FIGURES", {k: figures.FIGURES[k] for k in ("collapse_curve", "attention_strip")})
    runs = []
    for out in (tmp_path / "a", tmp_path / "b"):
        manifest = figures.make_figures(inputs, root, out, CFG, out / "manifest.json")
        runs.append(_digest([out / f"{e['name']}.{fmt}" for e in manifest["figures"] for fmt in CFG["formats"]]))
    assert runs[0] == runs[1] and len(runs[0]) == 4


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
    monkeypatch.setattr(figures, "FIGURES", {k: figures.FIGURES[k] for k in ("coefficients", "crm_modes")})
    manifest = figures.make_figures(inputs, root, tmp_path / "figs", {"formats": ["png"], "dpi": 50})
    status = {e["name"]: (e["status"], e["reason"]) for e in manifest["figures"]}
    assert status == {"coefficients": ("failed", "KeyError: 'column_that_does_not_exist'"), "crm_modes": ("ok", "")}
    assert (tmp_path / "figs" / "coefficients.png").exists()


def test_masking_table_shows_planted_reaction(results):
    root, inputs = results
    tables = figures.load_tables({"collapse_traces": inputs["collapse_traces"]}, root)
    from peekaboo.features import masking_response

    t = masking_response(tables.frames["collapse_traces"]).groupby(["model", "group"])[
        ["vision", "abstained"]].mean()
    assert t.loc[("grounded", "evidence hidden"), "vision"] < t.loc[("grounded", "unmasked"), "vision"] - 0.2
    assert t.loc[("grounded", "evidence hidden"), "abstained"] == 1.0
    assert t.loc[("blind-spot", "evidence hidden"), "abstained"] == 0.0
    assert abs(t.loc[("blind-spot", "evidence hidden"), "vision"] - t.loc[("blind-spot", "unmasked"), "vision"]) < 0.05


def test_collapse_truth_check_prints_the_numbers(results, capsys):
    root, _ = results
    check = load_script("checks/collapse_truth.py")
    assert check.main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "planted structure shown (grounded reacts more than blind-spot): yes" in out
    assert "grounded        panels          evidence hidden" in out
    assert "Errors per regression fit" in out and "errors=" in out
    assert "Vision veto" in out


def test_risk_coverage_draws_each_signal_once_with_the_primary_measure(results):
    root, inputs = results
    tables = figures.load_tables({k: inputs[k] for k in ("selective_curves", "selective_summary")}, root)
    curves = tables.frames["selective_curves"]
    # a second vision measure, written after the primary one as the selective stage does
    other = curves[curves["vision_measure"] != ""].assign(vision_measure="image_share", risk=1.0)
    tables.frames["selective_curves"] = pd.concat([curves, other], ignore_index=True)
    fig, _ = figures.fig_risk_coverage(tables, {})
    for ax in fig.axes:
        if not ax.lines:
            continue
        labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert len(labels) == len(set(labels))  # one curve per signal
        for line in ax.get_lines():
            x, y = line.get_data()
            if line.get_label().startswith("_"):
                continue  # the 90% marker
            assert (np.diff(x) > 0).all() and (np.asarray(y) < 1.0).any()
    assert "vision: evidence_share" in fig._suptitle.get_text()
    figures._pyplot().close(fig)
