"""Ship a budget-conditioned checkpoint inside the package (hypersan/pretrained/NAME), with the figures of its
budget study (tools/budget_study.py) and its provenance in meta.json.

    python tools/ship_budget.py --checkpoint runs/budget-warm/budget \
        --study runs/budget-warm/report/budget_study.json --dest hypersan/pretrained/fmnist_budget \
        --train-command "tools/budget_warm.sh runs/budget-warm (run budget)" \
        --selection "how it was chosen, on which split"

The statistics are not shipped: each (class set, budget) calibrates on the training images on first use (1-3 s),
as the budget study's cold builds did. An earlier checkpoint at --dest is replaced; any other folder never is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypersan.io import read_json  # noqa: E402
from hypersan.nn.model import SubtaskAdaptiveNet  # noqa: E402
from hypersan.prune.engine import PruningEngine  # noqa: E402

ROW_KEYS = ("classes", "size", "seen", "budget", "mac_ratio", "generated_mac_ratio", "acc_val", "acc_test")


def budget_metrics(study: dict) -> dict:
    """What meta.json keeps of a budget study: its command, the analysis per split, every (class set, budget) row
    of the budget-conditioned model, and the build costs."""
    return {"command": study["command"], "budgets": study["budgets"], "analysis": study["analysis"],
            "rows": [{k: r[k] for k in ROW_KEYS if k in r} for r in study["budget_rows"]],
            "costs": study["costs"], "note": "docs/BUDGETS.md has the study and its fixed-γ peers"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the budget-conditioned run folder")
    p.add_argument("--study", required=True, help="its budget_study.json")
    p.add_argument("--dest", required=True, help="hypersan/pretrained/NAME")
    p.add_argument("--train-command", required=True, help="how the checkpoint was trained (for meta.json)")
    p.add_argument("--selection", required=True,
                   help="how the checkpoint was chosen, and on which split (for meta.json)")
    args = p.parse_args(argv)
    study = read_json(Path(args.study))
    engine = PruningEngine.from_pretrained(args.checkpoint)
    model = engine.model
    if not model.budgeted:
        p.error(f"{args.checkpoint} is not budget-conditioned (generator.budget = false)")
    studied = (study["checkpoints"]["budget"] if "checkpoints" in study  # older studies: read from the command
               else study["command"].split("--budget ")[1].split()[0])
    if Path(studied).resolve() != Path(args.checkpoint).resolve():
        p.error(f"{args.study} studied another checkpoint ({study['command']})")
    engine.cache.clear()
    model.meta["metrics"] = budget_metrics(study)
    model.meta["source_checkpoint"] = str(args.checkpoint)
    data = (f"{model.config.data.dataset}: the training split less data.val_size={model.config.data.val_size} "
            "validation images")
    init = model.config.train.init_from
    if init:
        source = SubtaskAdaptiveNet.from_pretrained(init).config.data
        data += (f"; the backbone started from {init}, trained on " +
                 ("every training image, these validation images among them: validation figures are optimistic, "
                  "the test figures are clean" if source.val_size == 0 or source.dataset != model.config.data.dataset
                  else f"the same split (data.val_size={source.val_size})"))
    model.meta["provenance"] = {
        "train_command": args.train_command,
        "init_from": init or None,
        "training_data": data,
        "metrics_command": study["command"], "selection": args.selection}
    engine.save_pretrained(args.dest, force=True)
    print(f"shipped {args.checkpoint} to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
