"""The stage contract: one entry per stage module, scripts that call it, layers, code inputs, failure logs."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from peekaboo import closure, scoring, stage, stages
from peekaboo.datasets.base import adapter_names
from peekaboo.stage import StageCall

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"

# modules every other module may stand on; they import only each other
GROUND_FLOOR = {
    "peekaboo", "peekaboo.cells", "peekaboo.scores", "peekaboo.records", "peekaboo.jsonlines", "peekaboo.seeding",
    "peekaboo.logs", "peekaboo.provenance", "peekaboo.tables", "peekaboo.stage", "peekaboo.schema",
    "peekaboo.closure", "peekaboo.stages", "peekaboo.runlock",
}


def package_modules() -> list[str]:
    root = closure.PACKAGE_DIR
    out = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


@pytest.mark.parametrize("rule", sorted(stages.STAGE_MODULES))
def test_every_rule_script_is_main_calling_its_stage_module(rule):
    script = SCRIPTS / f"{rule}.py"
    tree = ast.parse(script.read_text())
    module = stages.STAGE_MODULES[rule]
    parent, _, name = module.rpartition(".")
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert (parent, name) in imports, f"{script.name} does not import {module}"
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(mains) == 1 and [a.arg for a in mains[0].args.args] == ["snakemake"]
    calls = [n for n in ast.walk(mains[0]) if isinstance(n, ast.Call)]
    assert any(ast.unparse(c) == f"run_from_snakemake({name}.run_stage, snakemake)" for c in calls), script.name
    # the script holds nothing else: no logic, no path arithmetic
    assert "Path(" not in script.read_text() and ".parent" not in script.read_text()


@pytest.mark.parametrize("rule", sorted(stages.STAGE_MODULES))
def test_every_stage_module_has_the_one_entry(rule):
    import importlib

    module = importlib.import_module(stages.STAGE_MODULES[rule])
    signature = inspect.signature(module.run_stage)
    assert list(signature.parameters) == ["call"]


def test_stage_modules_never_import_each_other():
    modules = set(stages.STAGE_MODULES.values())
    for module in modules:
        reached = closure.module_closure(module) - {module}
        # a stage's own package (models.reference for its training module) is not another stage
        assert not (reached & modules), f"{module} imports the stage module(s) {sorted(reached & modules)}"


def test_the_ground_floor_stands_on_nothing_above_it():
    for module in GROUND_FLOOR:
        above = closure.direct_imports(module) - GROUND_FLOOR
        assert not above, f"{module} imports {sorted(above)} from above the ground floor"


def _relative(files) -> set[str]:
    return {Path(f).relative_to(closure.PACKAGE_DIR).as_posix() for f in files}


def test_closure_follows_relative_function_level_and_package_imports():
    files = _relative(stages.code_files("traces"))
    # module level (generate), function level (loading's devices), a package's __init__ and the runner
    assert {"traces.py", "generate.py", "devices.py", "models/__init__.py", "models/loading.py", "stage.py",
            "__init__.py"} <= files
    # the dataset's scorer is imported by name at run time through the registry: only the rule that names it has it
    assert {f for f in files if f.startswith("scoring/")} == {"scoring/__init__.py"}
    named = _relative(stages.code_files("traces", "peekaboo.scoring.mathvista"))
    assert {"scoring/__init__.py", "scoring/mathvista.py"} <= named
    # training does not reach the scorers or the adapters: editing them does not re-train the models
    training = _relative(stages.code_files("train_reference"))
    assert not {"answers.py", "thinking.py", "datasets/base.py", "datasets/panels.py", "config.py"} & training
    assert not {f for f in training if f.startswith("scoring/")}


# the replay, the capture targets, the trace store (Zarr) and the replay's attention: traces' code, not generate's
CAPTURE = {"trace_replay.py", "replay.py", "capture.py", "attention_impl.py", "tracestore.py"}


def test_generation_does_not_hold_the_replay_the_capture_or_the_store():
    """Editing the replay, the capture targets or the store must re-run the traces (prefill speed), never the
    decode-bound generation (issue 22): they are in the traces rule's code inputs and not in generate's; the
    resume bookkeeping both share (``resume``) holds nothing of the store."""
    generate = _relative(stages.code_files("generate"))
    traces = _relative(stages.code_files("traces"))
    assert not CAPTURE & generate, sorted(CAPTURE & generate)
    assert CAPTURE <= traces, sorted(CAPTURE - traces)
    assert {"generate.py", "generations.py", "resume.py"} <= generate & traces
    assert not {m for m in closure.module_closure("peekaboo.resume") if m != "peekaboo"} - {
        "peekaboo.resume", "peekaboo.logs", "peekaboo.provenance"}
    # the grounding VLM generates through the same generator: the boxes stage holds none of it either
    assert not CAPTURE & _relative(stages.code_files("boxes"))


def test_the_boxes_stage_never_reaches_config_validation():
    """``grounding.stage`` resolves its model's source with ``models.identity.resolve_path``: editing the
    config validation does not re-run the boxes (a GPU stage), whichever adapter reads the dataset."""
    for adapter in adapter_names():
        files = _relative(stages.code_files("boxes", f"peekaboo.datasets.{adapter}"))
        assert "config.py" not in files, adapter
    from peekaboo import config
    from peekaboo.models import identity

    assert config.resolve_path is identity.resolve_path  # one function, where the workflow's common.smk reads it


@pytest.mark.parametrize("adapter", adapter_names())
def test_no_scoring_code_is_upstream_of_the_generation(adapter):
    """A scorer edit must never re-run the items (and through them the masks and the decode-bound generation):
    the closures of the rules before the traces hold no scoring module, whichever adapter they read with."""
    reader = f"peekaboo.datasets.{adapter}"
    rules = (("boxes", (reader,)), ("items", (reader,)), ("masks", ()), ("train_reference", ()), ("generate", ()))
    for rule, extra in rules:
        files = _relative(stages.code_files(rule, *extra))
        assert not {f for f in files if f.startswith("scoring/")}, (rule, adapter)
        # the thinking split is read by the grounding VLMs (boxes), not by a reader
        assert "thinking.py" not in files or rule == "boxes", (rule, adapter)
    # and no reader imports a scorer, whatever stage names it
    assert not {m for m in closure.module_closure(reader) if m.startswith("peekaboo.scoring")}


@pytest.mark.parametrize("adapter", adapter_names())
def test_the_traces_rule_holds_its_datasets_scorer_and_no_other(adapter):
    files = _relative(stages.code_files("traces", scoring.scorer_module(adapter)))
    scorers = {f for f in files if f.startswith("scoring/") and f[len("scoring/"):-3] in scoring.scorer_names()}
    assert scorers == {f"scoring/{adapter}.py"}
    assert {"thinking.py", "scoring/extraction.py"} <= files


def test_scorers_have_the_adapters_names():
    assert scoring.scorer_names() == adapter_names()
    for name in adapter_names():
        scorer = scoring.get_scorer(name)
        assert scorer.name == name and callable(scorer.score) and callable(scorer.summary_metrics)
    with pytest.raises(scoring.ScorerError, match="unknown scorer 'nope' .*known: hallusionbench, jsonl"):
        scoring.get_scorer("nope")


@pytest.mark.parametrize("rule", sorted(stages.STAGE_MODULES))
def test_python_imports_nothing_outside_a_rules_code_input(rule):
    """Import every module of the rule's closure in a fresh interpreter: Python's own import system must load
    no package module the closure (read from the source) left out."""
    files = stages.code_files(rule)
    modules = [m for m in closure.module_closure(stages.STAGE_MODULES[rule]) | closure.module_closure(stages.RUNNER)]
    code = ("import importlib, json, sys\n"
            f"for m in {sorted(modules)!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(getattr(m, '__file__', '') or '' for n, m in list(sys.modules.items())"
            " if n == 'peekaboo' or n.startswith('peekaboo.'))))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = {str(Path(p).resolve()) for p in json.loads(proc.stdout.splitlines()[-1]) if p}
    assert loaded <= {str(Path(f).resolve()) for f in files}, sorted(loaded - set(files))


def test_every_package_module_is_reachable_or_deliberately_outside_the_stages():
    # the stages, the adapters the items rule names and the scorers the traces rule names by the dataset's config
    roots = list(stages.STAGE_MODULES.values()) + [f"peekaboo.datasets.{a}" for a in adapter_names()] + \
        [scoring.scorer_module(a) for a in scoring.scorer_names()]
    reached = set().union(*(closure.module_closure(m) for m in roots))
    outside = set(package_modules()) - reached
    # what no stage runs: the workflow's own helpers, reference-model checks, tiny test models, notebook entry
    assert outside <= {"peekaboo.config", "peekaboo.closure", "peekaboo.stages", "peekaboo.models.tiny",
                       "peekaboo.models.reference.behaviour"}, sorted(outside)


def smk_rules() -> dict[str, tuple[str, str]]:
    """Every rule of workflow/rules/*.smk: name -> (file, body)."""
    found = {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2]):
            found[name] = (path.name, re.split(r"^\S", body, maxsplit=1, flags=re.M)[0])
    return found


def test_every_rule_that_visits_every_item_or_trace_has_a_benchmark():
    """Snakemake's ``benchmark:`` (time, memory) on every stage that reads items, masks, trace stores or the
    per-trace tables; only the claims (summary tables) and the target rules go without (issue 22)."""
    rules = smk_rules()
    without = {name for name, (_, body) in rules.items() if "    benchmark:\n" not in body}
    assert without == {"claims", "requests"}, sorted(without)  # (`all` is the Snakefile's)
    # each in its own folder of results/benchmarks/: no two rules write one file
    folders = [re.findall(r'BENCH\("([^/"]+)/', body) for name, (_, body) in rules.items() if name not in without]
    assert all(len(f) == 1 for f in folders) and len({f[0] for f in folders}) == len(folders), folders
    assert rules["steps"][0] == "steps.smk"


def test_uncaught_error_goes_to_the_log_with_its_traceback(tmp_path):
    log = tmp_path / "logs" / "stage.log"

    def failing(call: StageCall) -> None:
        raise ZeroDivisionError("planted failure in " + call.wildcards["d"])

    call = StageCall(inputs={}, outputs={}, config={}, results_dir=tmp_path, wildcards={"d": "mine"}, log=log)
    with pytest.raises(ZeroDivisionError):
        stage.run(failing, call)
    text = log.read_text()
    assert "failed" in text and "Traceback" in text and "planted failure in mine" in text


def test_check_of_code_inputs_names_what_the_rule_left_out(tmp_path, monkeypatch):
    import peekaboo.crm  # noqa: F401 (loaded, so the check sees it)

    monkeypatch.setenv(stage.CHECK_CODE_ENV, "1")
    call = StageCall(inputs={}, outputs={}, config={}, results_dir=tmp_path, code=stages.code_files("items"))
    with pytest.raises(RuntimeError, match=r"crm\.py"):
        stage.run(lambda c: None, call)


def test_stage_call_names_an_undeclared_input(tmp_path):
    call = StageCall(inputs={"steps": ["a.parquet"]}, outputs={"table": "t.parquet"}, config={}, results_dir=tmp_path)
    assert call.path("steps") == Path("a.parquet")
    with pytest.raises(stage.StageInputError, match="'sidecars' is not declared"):
        call.paths("sidecars")
    with pytest.raises(stage.StageInputError, match="'maps' is not declared"):
        call.output("maps")


SNAKEFILE = """\
rule boom:
    output: "out.txt"
    params: config={}, results="."
    log: "logs/boom.log"
    script: "boom.py"
"""
SCRIPT = """\
import sys
sys.path.insert(0, {src!r})
from peekaboo.stage import run_from_snakemake


def explode(call):
    raise ValueError("planted failure inside a stage")


def main(snakemake):
    run_from_snakemake(explode, snakemake)


if __name__ == "__main__":
    main(snakemake)
"""


@pytest.mark.slow
def test_a_failing_job_leaves_its_traceback_in_its_own_log(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "boom.py").write_text(SCRIPT.format(src=str(REPO / "src")))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    log = (tmp_path / "logs" / "boom.log").read_text()
    assert "Traceback" in log and "planted failure inside a stage" in log
