"""Does editing each package module re-run exactly the rules whose code input holds it?

    python checks/code_inputs.py [--configfile config.yaml] [--modules masks.py crm.py ...]

Run it in a checkout whose workflow has finished (``snakemake`` has nothing
to do). For every module under ``src/peekaboo/`` (or the ones named) it
appends a comment, asks ``snakemake -n`` which rules would run because one of
their own inputs changed ("updated input files"), puts the file back exactly
as it was (content and modification time), and compares that set with the
rules whose ``input.code`` holds the file (``peekaboo.stages``, with the
config's datasets' readers for items and their scorers for traces). Rules
that would re-run only because an upstream output changes are downstream
effects, not the edit's.
Prints one line per module and exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from peekaboo import config as pcfg  # noqa: E402
from peekaboo import stages  # noqa: E402


def rules_run(cfg: dict) -> set[str]:
    """The stage rules the config's default target runs (viewer is on demand; boxes only for model-made boxes)."""
    rules = set(stages.STAGE_MODULES) - {"viewer"}
    references = [m["reference"] for m in cfg["models"].values() if m.get("reference")]
    if not any(r["source"] == "train" for r in references):
        rules.discard("train_reference")
    if not any(r["source"] == "shipped" for r in references):
        rules.discard("ship_reference")
    if not any(isinstance(d.get("boxes"), dict) and d["boxes"].get("kind") in ("vlm", "detector")
               for d in cfg["datasets"].values()):
        rules.discard("boxes")
    return rules


def expected_rules(cfg: dict, path: Path) -> set[str]:
    """The rules whose code input, for this config's datasets, holds ``path``."""
    names = sorted({spec["adapter"] for spec in cfg["datasets"].values()})
    readers = [f"peekaboo.datasets.{a}" for a in names]
    # the modules the rules name by the datasets' adapter names: the readers for items and boxes, the scorers for
    # traces
    named = {"items": readers, "boxes": readers, "traces": [f"peekaboo.scoring.{a}" for a in names]}
    out = set()
    for rule in sorted(rules_run(cfg)):
        extra = named.get(rule, [])
        if str(path.resolve()) in {str(Path(f).resolve()) for f in stages.code_files(rule, *extra)}:
            out.add(rule)
    return out


def rerun_rules(configfile: str) -> set[str]:
    """Rules a dry run would run because one of their own inputs changed."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", configfile],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(text[-3000:])
    match = re.search(r"^\s*updated input files:\n\s*(.+)$", text, re.MULTILINE)
    return {r.strip() for r in match.group(1).split(",")} if match else set()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", default="config.yaml")
    parser.add_argument("--modules", nargs="*", help="files under src/peekaboo/ (default: all)")
    args = parser.parse_args(argv)
    cfg = pcfg.load(REPO / args.configfile, base_dir=REPO)
    root = REPO / "src" / "peekaboo"
    files = [root / m for m in args.modules] if args.modules else sorted(root.rglob("*.py"))
    if rerun_rules(args.configfile):
        print("the workflow has work to do before any edit: run snakemake first")
        return 2
    failures = 0
    for path in files:
        before, stat = path.read_bytes(), path.stat()
        try:
            path.write_bytes(before + b"\n# an edit by checks/code_inputs.py\n")
            got = rerun_rules(args.configfile)
        finally:
            path.write_bytes(before)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        want = expected_rules(cfg, path)
        ok = got == want
        failures += not ok
        rel = path.relative_to(root).as_posix()
        print(f"{'ok  ' if ok else 'DIFF'} {rel:<40} re-runs {', '.join(sorted(got)) or '-'}"
              + ("" if ok else f"   (its closure holds it for: {', '.join(sorted(want)) or '-'})"), flush=True)
    print(f"\n{len(files) - failures} of {len(files)} modules re-run exactly the rules whose code input holds them")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
