"""Answer the ablation's questions from a finished run's results.csv, with the figures behind each answer.

    hypersan study questions --run runs/ablation [--split val] [--hard-pairs]

Every figure comes from `hypersan.research.report` (tested on a hand-made results.csv); this script only lays
them out. Every gap is against one reference: the separately trained dense net on the same classes, split and
seed. Choices are made on `--split val`; conclusions are read on the test split (the default).

1. Held-out combinations of size >= 3: does the hypernetwork reach per-task-mask accuracy (within 0.5 pt) at
   <= 0.8x their mac_ratio?
2. At matched MACs, does the hypernetwork lead Torch-Pruning per subset at full strength (tp_subset with the
   short and the generous fine-tune), seen and held-out, paired per subset, mean ± std over seeds?
3. Does adaptivity pay? On pairs, the hypernetwork's MACs against those the class-agnostic curve (agnostic_tp)
   needs for the same accuracy.
4. Costs: cold and warm build times, and from how many subsets the hypernetwork is cheaper in total.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


from .report import (adaptivity, agnostic_curve, cost_table, costs_text,
                                      heldout_vs_pertask, matched_mac_table, mean_std, read_results, size_table)

HARD_PAIRS = [("T-shirt/top", "Shirt"), ("Pullover", "Coat"), ("Pullover", "Shirt"), ("Coat", "Shirt"),
              ("Sandal", "Sneaker"), ("Sneaker", "Ankle boot")]


def question1(rows, gamma, split) -> list[str]:
    q = heldout_vs_pertask(rows, gamma, split)
    lines = ["### 1. Held-out combinations of size ≥ 3: hypernetwork vs per-task masks", ""]
    if not q["hypernet_acc"] or not q["pertask_acc"]:
        return lines + ["(not in this run)", ""]
    d = q["difference"]
    rel = [a / b for a, b in zip(q["hypernet_mac"], q["pertask_mac"])]
    return lines + ["| method | acc | mac_ratio |", "|---|---|---|",
                    f"| hypernet | {mean_std(q['hypernet_acc'], 4)} | {mean_std(q['hypernet_mac'])} |",
                    f"| pertask | {mean_std(q['pertask_acc'], 4)} | {mean_std(q['pertask_mac'])} |", "",
                    f"hypernet − pertask, paired per subset: {mean_std(d['per_seed'], 2)} pt over {d['pairs']} "
                    f"pairs; hypernet / pertask mac_ratio: {mean_std(rel)}. Target: within 0.5 pt at ≤ 0.8×.", ""]


def question2(rows, gamma, split) -> list[str]:
    return ["### 2. Matched MACs: the hypernetwork against each per-subset peer", "",
            matched_mac_table(rows, gamma, split), ""]


def question3(rows, gamma, split) -> list[str]:
    lines = ["### 3. Does adaptivity pay? Pairs against the class-agnostic curve", "",
             "| class-agnostic net (agnostic_tp) | mac_ratio | pair acc |", "|---|---|---|"]
    lines += [f"| | {m:.3f} | {a:.4f} |" for m, a in agnostic_curve(rows, split)]
    a = adaptivity(rows, gamma, split)
    if a:
        need = "never reached" if a["agnostic_mac_ratio"] is None else f"{a['agnostic_mac_ratio']:.3f}"
        ratio = "—" if a["ratio"] is None else f"{a['ratio']:.2f}"
        lines += ["", f"hypernet pairs: acc {a['acc']:.4f} at {a['mac_ratio']:.3f} of the MACs; the class-agnostic "
                      f"curve needs {need} for that accuracy: ratio {ratio}."]
    return lines + [""]


def costs(rows, split) -> list[str]:
    return ["### 4. Costs", "", cost_table(rows, split), "", *costs_text(rows, split), ""]


def breakdown(rows, gamma, split) -> list[str]:
    return ["### 5. By subtask size: gap to the dense net (pt) / mac_ratio", "", "Seen:", "",
            size_table(rows, gamma, True, split), "", "Held-out:", "", size_table(rows, gamma, False, split), ""]


def hard_pairs(run: Path) -> list[str]:
    """Evaluate the hard pairs with the run's trained models (no training) into <run>-hard-pairs."""
    from .ablate import Ablation, AblationConfig
    from .report import per_seed_means, select
    from ..config import build_section

    saved = json.loads((run / "ablation.json").read_text())
    cfg = build_section(AblationConfig, saved, "")
    cfg.run.gammas = []
    cfg.run.methods = [m for m in cfg.run.methods if m in ("dense", "hypernet", "pertask", "tp_subset",
                                                           "tp_subset_ft", "tp_subset_ft_long")]
    cfg.baselines.subset_sizes, cfg.baselines.subset_per_size = [], 0
    out = run.parent / f"{run.name}-hard-pairs"

    class HardPairs(Ablation):
        def subtasks(self, model):
            return [model.resolve(list(p)) for p in HARD_PAIRS]

    ab = HardPairs(cfg, out, log=lambda m: print(m, file=sys.stderr, flush=True), root=Path.cwd())
    ab.prepare()
    models = out / "models"
    if models.is_dir() and not models.is_symlink() and not any(models.iterdir()):
        models.rmdir()
    if not models.exists():
        os.symlink(os.path.relpath(run / "models", out), models)  # the run's trained models, never retrained
    ab.run(progress=False)
    rows = read_results(out / "results.csv")
    gamma = cfg.run.gamma
    lines = ["### Hard pairs (the run's trained models, test)", "",
             "| pair | " + " | ".join(cfg.run.methods) + " |", "|---|" + "---|" * len(cfg.run.methods)]
    for p in HARD_PAIRS:
        cells = [mean_std(per_seed_means(select(rows, m, gamma, classes="|".join(p)), "acc"), 4)
                 for m in cfg.run.methods]
        lines.append(f"| {p[0]} vs {p[1]} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/ablation")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--hard-pairs", action="store_true", help="also evaluate hard pairs with the run's models")
    args = p.parse_args(argv)
    run = Path(args.run)
    gamma = json.loads((run / "ablation.json").read_text())["run"]["gamma"]
    rows = read_results(run / "results.csv")
    out = [f"Main comparison at γ = {gamma:g}, {args.split} split ({run}/results.csv)", ""]
    out += (question1(rows, gamma, args.split) + question2(rows, gamma, args.split)
            + question3(rows, gamma, args.split) + costs(rows, args.split) + breakdown(rows, gamma, args.split))
    if args.hard_pairs:
        out += hard_pairs(run)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
