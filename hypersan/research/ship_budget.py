"""Ship a budget-conditioned checkpoint inside the package (hypersan/pretrained/NAME), with the figures of its
budget study (hypersan/research/budget_study.py) and its provenance in meta.json.

    hypersan study ship-budget --checkpoint runs/budget-warm/budget \
        --study runs/budget-warm/report/budget_study.json --dest hypersan/pretrained/fmnist_budget \
        --train-command "hypersan sweep configs/sweeps/budget_warm.toml (run budget)" \
        --selection "how it was chosen, on which split" [--guard-study runs/budget-warm/report-guard/budget_study.json]

The statistics are not shipped: each (class set, budget) calibrates on the training images on first use (1-3 s),
as the budget study's cold builds did. An earlier checkpoint at --dest is replaced; any other folder never is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from ..io import read_json
from ..nn.model import SubtaskAdaptiveNet
from ..prune.engine import PruningEngine

ROW_KEYS = ("classes", "size", "seen", "budget", "served_budget", "mac_ratio", "generated_mac_ratio", "acc_val",
            "acc_test")


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
    p.add_argument("--guard-study", help="the same checkpoint's budget_study.json of guarded requests (--guard)")
    args = p.parse_args(argv)
    study = read_json(Path(args.study))
    guarded = read_json(Path(args.guard_study)) if args.guard_study else None
    if study.get("guard"):
        p.error(f"{args.study} scored guarded requests; give it as --guard-study and the unguarded study as --study")
    if guarded is not None and not guarded.get("guard"):
        p.error(f"{args.guard_study} did not score guarded requests (budget_study.py --guard)")
    engine = PruningEngine.from_pretrained(args.checkpoint)
    model = engine.model
    if not model.budgeted:
        p.error(f"{args.checkpoint} is not budget-conditioned (generator.budget = false)")
    for path, st in ((args.study, study), (args.guard_study, guarded)):
        if st is None:
            continue
        studied = (st["checkpoints"]["budget"] if "checkpoints" in st  # older studies: read from the command
                   else st["command"].split("--budget ")[1].split()[0])
        if Path(studied).resolve() != Path(args.checkpoint).resolve():
            p.error(f"{path} studied another checkpoint ({st['command']})")
    engine.cache.clear()
    model.meta["metrics"] = budget_metrics(study)
    if guarded is not None:
        model.meta["metrics"]["guarded"] = budget_metrics(guarded)
    model.meta["source_checkpoint"] = str(args.checkpoint)
    d = model.config.data
    own_val = d.val_split == "dataset"  # the data set's own validation split (its own fonts, say)
    data = (f"{d.dataset}: the training split" + (", validated on the data set's own validation split" if own_val
                                                   else f" less data.val_size={d.val_size} validation images"))
    init = model.config.train.init_from
    root = Path.cwd()  # the repository the command runs in (init_from is named relative to it)
    if init and Path(init).is_absolute() and Path(init).resolve().is_relative_to(root):
        init = str(Path(init).resolve().relative_to(root))  # as the repository's scripts name it, not this machine
        model.config.train.init_from = init
    if init:
        source = SubtaskAdaptiveNet.from_pretrained(root / init if not Path(init).exists() else init).config.data
        if source.dataset == d.dataset and source.val_split == "dataset" and own_val:
            seen = "the same training split (the validation split is a file of its own)"
        elif source.dataset != d.dataset or (source.val_size == 0 and source.val_split != "dataset"):
            seen = ("every training image, these validation images among them: validation figures are optimistic, "
                    "the test figures are clean")
        else:
            seen = f"the same split (data.val_size={source.val_size})"
        data += f"; the backbone started from {init}, trained on {seen}"
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
