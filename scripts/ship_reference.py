"""Make the shipped reference models (shipped/reference/) from a training run of the workflow's own rule.

    .venv/bin/python scripts/ship_reference.py                       # train every reference model of config.yaml, ship them
    .venv/bin/python scripts/ship_reference.py --models blinker       # retrain and re-ship one (its init_from is trained too)
    .venv/bin/python scripts/ship_reference.py --from results         # ship models a run already trained (source: train)

Training runs ``snakemake --cores N`` on the config with every reference
model's ``reference.source`` set to ``train`` and the results in a scratch
folder (``--work``), targeting only ``reference/<model>``; a model that misses
its probe fails there and nothing is shipped. Each trained folder is then
copied to ``shipped/reference/<model>/`` and ``shipped/reference/manifest.json``
is rewritten: this command, the training command, the commit and whether the
checkout had uncommitted changes, the machine and package versions, and per
model the training config (what the rule read: ``spec.training_config``), its
steps and final probe, the training report's provenance and every file's
sha256. With ``--from`` the trained folders are taken from an earlier run's
results, after checking that each was trained from this config (the config
hash its training report records); the commit is that run's checkout's.

Commit the shipped folder: the default run (``source: shipped``) copies these
files after checking their hashes, and re-runs everything after a model whose
files changed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from peekaboo import config as pcfg  # noqa: E402
from peekaboo.models.reference import shipped, spec as reference_spec  # noqa: E402
from peekaboo.provenance import config_hash  # noqa: E402


def _git(where: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _with_init(cfg: dict, models: list[str]) -> list[str]:
    """``models`` and every model they are fine-tuned from, parents first."""
    out: list[str] = []

    def add(m: str) -> None:
        parent = reference_spec.init_model(cfg, m)
        if parent:
            add(parent)
        if m not in out:
            out.append(m)

    for m in models:
        add(m)
    return out


def train(config_path: Path, raw: dict, models: list[str], work: Path, cores: int) -> tuple[Path, str]:
    """Train ``models`` with the workflow's rule into ``work``/results; (the results folder, the command)."""
    raw = json.loads(json.dumps(raw))
    raw["results"] = str(work / "results")
    for m in models:
        raw["models"][m]["reference"] = {**raw["models"][m]["reference"], "source": "train"}
    train_config = work / "config.train.yaml"
    train_config.write_text(yaml.safe_dump(raw, sort_keys=False))
    targets = [f"{raw['results']}/reference/{m}" for m in models]
    # the targets first: --configfile takes every word after it
    command = [sys.executable, "-m", "snakemake", *targets, "--cores", str(cores), "--configfile", str(train_config)]
    print("training:", shlex.join(command), flush=True)
    proc = subprocess.run(command, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"training failed (exit {proc.returncode}); nothing shipped. Logs: {work}/results/logs/reference/")
    shown = shlex.join(["snakemake", *[f"results/reference/{m}" for m in models], "--cores", str(cores), "--configfile",
                        f"{config_path.name} with every shipped model's reference.source: train"])
    return Path(raw["results"]), shown


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "config.yaml")
    ap.add_argument("--models", nargs="*", default=None, help="models to (re)ship (default: every reference model); "
                    "the others of the manifest are kept")
    ap.add_argument("--from", dest="from_results", type=Path, default=None,
                    help="ship the models an earlier run trained (its results folder) instead of training")
    ap.add_argument("--command", default=None, help="with --from: the command that made those results (recorded)")
    ap.add_argument("--commit", default=None, help="with --from: the commit whose code and config trained them "
                    "(default: that of the checkout holding the results folder)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder of the training run (default: a temporary one)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / shipped.SHIPPED_DIR, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    raw = yaml.safe_load(args.config.read_text())
    cfg = pcfg.validate(json.loads(json.dumps(raw)), base_dir=args.config.parent, check_paths=False)
    every = [m for m, entry in cfg["models"].items() if entry.get("reference")]
    wanted = args.models or every
    unknown = [m for m in wanted if m not in every]
    if unknown:
        raise SystemExit(f"--models: {', '.join(unknown)} not reference models of {args.config} ({', '.join(every)})")

    if args.from_results:
        results = args.from_results.resolve()
        training_command = args.command or f"unknown: an earlier run's {results}"
        checkout = results.parent
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="ship-reference-"))
        work.mkdir(parents=True, exist_ok=True)
        results, training_command = train(args.config, raw, _with_init(cfg, wanted), work.resolve(), args.cores)
        checkout = REPO

    trained = {}
    for m in wanted:
        folder = results / "reference" / m
        report_path = folder / "training.json"
        if not report_path.exists():
            raise SystemExit(f"{report_path}: no trained model '{m}' there")
        config = reference_spec.training_config(cfg, m)
        recorded = (json.loads(report_path.read_text()).get("provenance") or {}).get("config_hash")
        if recorded != config_hash(config):
            raise SystemExit(f"{report_path}: trained from another config (config hash {recorded}, "
                             f"{args.config.name}'s entry of '{m}' gives {config_hash(config)}); nothing shipped")
        trained[m] = (folder, config)

    made = {
        "command": shlex.join(["python", "scripts/ship_reference.py", *(argv if argv is not None else sys.argv[1:])]),
        "training_command": training_command,
        "commit": args.commit or _git(checkout, "rev-parse", "HEAD") or None,
        "uncommitted_changes": False if args.commit else bool(_git(checkout, "status", "--porcelain", "--untracked-files=no")),
        "config": str(args.config.resolve().relative_to(REPO)) if args.config.resolve().is_relative_to(REPO) else str(args.config),
        "made": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "machine": {"cpu": _cpu(), "python": platform.python_version(),
                    **{p: _version(p) for p in ("torch", "transformers", "safetensors")}},
    }
    manifest = shipped.ship(trained, args.out, made=made, keep=[m for m in every if m not in wanted])
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    for m, entry in manifest["models"].items():
        print(f"{m}: {len(entry['files'])} files, {entry['steps']} steps, probe {entry['probe']}")
    print(f"shipped {', '.join(wanted)} to {args.out} ({size / 1e6:.1f} MB in all); commit it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
