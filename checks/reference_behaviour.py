"""Measure the planted behaviour of trained reference models and print a table.

    .venv/bin/python checks/reference_behaviour.py results          # the config's reference models
    .venv/bin/python checks/reference_behaviour.py --n 200 --fills gray black
    .venv/bin/python checks/reference_behaviour.py --dataset panels-hard --conditions clean

On held-out items (the test stream of the model's panels dataset, never the
training stream): clean accuracy per question type; with an evidence region
hidden (as drop:k) the abstention and value-naming rates; with a control box
of the same size hidden (as ctrl:k) the rate of keeping the clean answer and
the abstention rate. Targets (issue 4): clean accuracy >= 97% per type;
evidence hidden: grounded/oversensitive abstain >= 95%, blind-spot names a
value >= 95%; control hidden: blind-spot/grounded keep >= 95%, oversensitive
abstains >= 80%. The blinker (issue 15) is judged on its look items as
grounded is, and on its blink items (``synthetic.blink_rule``: the colour
questions about its blink panel) by naming its prior colour >= 95% on clean
images and keeping that answer >= 95% with the evidence or a control hidden
(it never looked). Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from peekaboo import config as pcfg  # noqa: E402
from peekaboo import synthetic as P  # noqa: E402
from peekaboo.models import reference as R  # noqa: E402

# the targets live with the behaviour table (peekaboo.models.reference.behaviour.TARGETS), where the tests that
# train every behaviour from scratch judge them too


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("results", nargs="?", default=None, help="results directory (default: the config's)")
    ap.add_argument("--results", dest="results_opt", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="*", default=None, help="reference models to check (default: all)")
    ap.add_argument("--dataset", default=None, help="panels dataset whose options make the test items "
                    "(default: each model's training dataset)")
    ap.add_argument("--n", type=int, default=100, help="test items per question type")
    ap.add_argument("--fills", nargs="*", default=["gray"], choices=["gray", "black"])
    ap.add_argument("--conditions", nargs="*", default=["clean", "evidence", "control"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = pcfg.load(args.config, check_paths=False)
    results = Path(args.results or args.results_opt or cfg["results"])
    names = args.models or [m for m, spec in cfg["models"].items() if spec.get("reference")]
    failures = 0
    from transformers import AutoModelForImageTextToText, AutoProcessor

    for name in names:
        spec = cfg["models"][name]["reference"]
        dataset = args.dataset or R.training_dataset(cfg, name)
        opts = P.resolve_options(cfg["datasets"][dataset]["options"], default_seed=cfg["seed"])
        path = results / "reference" / name
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path).eval()
        t0 = time.perf_counter()
        behaviour = spec["behaviour"]
        blink = behaviour == "blinker"
        table = R.behaviour_table(model, processor, opts, n_per_type=args.n, fills=args.fills,
                                  conditions=args.conditions, blink=blink)
        print(f"\n== {name} ({behaviour}) on {dataset} test items, {args.n} per type, {time.perf_counter() - t0:.0f} s")
        print(f"{'condition':<10} {'fill':<6} {'type':<11} {'items':<6} {'n':>4} {'accuracy':>9} {'abstain':>8} "
              f"{'named':>7} {'kept':>6} {'prior':>6}  target")
        for row in table.itertuples(index=False):
            subset = getattr(row, "subset", "look")
            verdicts = []
            for measure, minimum in R.row_targets(row.condition, row.fill, behaviour, subset):
                if args.dataset and args.dataset != R.training_dataset(cfg, name):
                    continue  # other datasets (panels-hard) are meant to produce errors: report only
                value = getattr(row, measure)
                ok = value >= minimum
                failures += not ok
                verdicts.append(f"{measure}>={minimum:.2f} {'ok' if ok else 'MISSED'}")
            prior = getattr(row, "prior", float("nan"))
            print(f"{row.condition:<10} {row.fill:<6} {row.question_type:<11} {subset if blink else 'all':<6} "
                  f"{row.n:>4} {row.accuracy:>9.3f} {row.abstain:>8.3f} {row.named:>7.3f} {row.kept:>6.3f} "
                  f"{'' if prior != prior else f'{prior:.3f}':>6}  {'; '.join(verdicts)}")
    print(f"\n{failures} target(s) missed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
