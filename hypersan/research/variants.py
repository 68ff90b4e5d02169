"""Training variants beside an ablation run, scored as the ablation scores its hypernetwork: the same class sets,
splits, seed, calibration and thresholds, each against the ablation's dense arm and its per-subset peer.

    hypersan study variants --ablation runs/ablation-recipe-lite --runs runs/fmnist-switches [--split val]

`--runs` is a sweep's folder (configs/sweeps/fmnist_switches.toml: the recipe's switches one at a time); every
finished run there is scored once (kept in RUNS/variants-SPLIT-sSEED/NAME.json) and the table is written beside
them (report.md). Choices are read on the validation split; --split test gives the final figures.

Columns: the run's unmasked body (all-classes accuracy on the split); over every class set of the ablation, the
mean accuracy against the dense arm's on the same classes, and the mean MAC ratio; single classes (one-vs-rest,
calibrated thresholds) with their false-positive rate; and on the per-subset peer's class sets, the mean gap to the
peer (its accuracy at the MACs of the ablation's own hypernetwork) beside both MAC ratios. A variant with more
MACs than the peer is not matched to it: read its gap with its MAC ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def train_seconds(folder: Path) -> float | None:
    """The run's own training time (its epochs' seconds), from train_state.json."""
    from ..io import read_json

    state = folder / "train_state.json"
    if not state.is_file():
        return None
    return sum(h.get("seconds", 0.0) for h in read_json(state).get("history", []))


def summarize(result: dict, dense: dict[tuple, dict], peer: dict[tuple, dict],
              rematched: dict[tuple, dict] | None = None) -> dict:
    """One table row from an evaluate() result and the ablation's rows ({indices: row}) of its dense arm and peer;
    `rematched`: the peer's rows pruned to this run's own MACs (--rematch), when there are any."""
    subs = result["subtasks"]

    def gap(s, ref):
        return 100 * (s["acc"] - ref[tuple(s["indices"])]["acc"])

    singles = [s for s in subs if s["size"] == 1]
    matched = [s for s in subs if tuple(s["indices"]) in peer]
    mean = statistics.fmean
    return {
        "body_acc": result["dense"]["acc"],
        "all_gap": mean(gap(s, dense) for s in subs), "all_mac": mean(s["mac_ratio"] for s in subs),
        "single_gap": mean(gap(s, dense) for s in singles) if singles else None,
        "single_fp": mean(s["fp_rate"] for s in singles) if singles else None,
        "dense_fp": mean(dense[tuple(s["indices"])]["fp_rate"] for s in singles) if singles else None,
        "peer_gap": mean(gap(s, peer) for s in matched) if matched else None,
        "peer_sets": len(matched),
        "mac": mean(s["mac_ratio"] for s in matched) if matched else None,
        "peer_mac": mean(peer[tuple(s["indices"])]["mac_ratio"] for s in matched) if matched else None,
        "rematch_gap": mean(gap(s, rematched) for s in subs if tuple(s["indices"]) in rematched)
        if rematched else None,
        "rematch_mac": mean(r["mac_ratio"] for r in rematched.values()) if rematched else None,
    }


def table(rows: dict[str, dict], peer_name: str) -> str:
    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    lines = [f"| run | body acc | all class sets: acc − dense (pt), MACs | single classes: acc − dense, "
             f"false positives (dense) | − {peer_name} (pt), MACs / peer's | − {peer_name} at the run's own MACs "
             f"(pt), peer's MACs | training s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        fp = "" if r["single_fp"] is None else f", {100 * r['single_fp']:.2f}% ({100 * r['dense_fp']:.2f}%)"
        rematch = "—" if r.get("rematch_gap") is None else f"{r['rematch_gap']:+.2f}, {r['rematch_mac']:.3f}"
        lines.append(f"| {name} | {100 * r['body_acc']:.2f}% | {r['all_gap']:+.2f}, {r['all_mac']:.3f} | "
                     f"{f(r['single_gap'], '+.2f')}{fp} | {f(r['peer_gap'], '+.2f')}, {f(r['mac'], '.3f')} / "
                     f"{f(r['peer_mac'], '.3f')} | {rematch} | {f(r.get('train_s'), '.0f')} |")
    return "\n".join(lines)


def rematch_targets(result: dict, peer: dict[tuple, dict], ref_macs: int) -> dict[tuple, float]:
    """{indices: the run's own MAC ratio} for the peer's class sets: where --rematch prunes the peer to. Refuses a
    run whose dense net is not the ablation's architecture (its ratios would mean other MACs)."""
    if result["dense"]["macs"] != ref_macs:
        raise ValueError(f"the run's dense net has {result['dense']['macs']} MACs, the ablation's {ref_macs}: "
                         "--rematch needs the same architecture, so that a MAC ratio means the same net size")
    return {tuple(s["indices"]): s["mac_ratio"] for s in result["subtasks"] if tuple(s["indices"]) in peer}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hypersan study variants", description=__doc__.split("\n\n")[0])
    p.add_argument("--ablation", required=True, help="a finished ablation run (its dense arm, peer and class sets)")
    p.add_argument("--runs", required=True, help="a sweep's folder of variants")
    p.add_argument("--seed", type=int, default=0, help="the ablation seed the variants start from")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--peer", default="tp_subset_ft_long", help="the per-subset method to hold each variant against")
    p.add_argument("--rematch", default="", metavar="RUN,RUN",
                   help="prune the peer again to each named run's own MACs per class set (the ablation's dense net "
                        "and baseline settings), so that a run smaller or larger than the ablation's hypernetwork "
                        "is compared at its own compute; kept in RUNS/variants-rematch-sSEED/")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    from ..config import build_section
    from ..io import atomic_write_json, atomic_write_text, read_json
    from ..prune.engine import PruningEngine
    from ..training.evaluate import evaluate
    from .ablate import Ablation, AblationConfig, plain_cost
    from .sweep import finished_runs

    torch.set_num_threads(args.threads)
    ab_dir, runs = Path(args.ablation), Path(args.runs)
    for what, path in (("--ablation", ab_dir / "ablation.json"), ("--runs", runs)):
        if not path.exists():
            p.error(f"{what}: {path} not found")
    ab = Ablation(build_section(AblationConfig, read_json(ab_dir / "ablation.json"), ""), ab_dir, log=log)
    rows = [r for r in ab.all_rows() if r["seed"] == args.seed and r["split"] == args.split]
    dense = {tuple(r["indices"]): r for r in rows if r["method"] == "dense"}
    peer = {tuple(r["indices"]): r for r in rows if r["method"] == args.peer and r["phrasing"] == "canonical"}
    if not dense:
        p.error(f"--ablation {ab_dir}: no dense rows of seed {args.seed} on {args.split}")
    x, y = ab.splits()[args.split]
    tx, ty = ab.training()
    cache = runs / f"variants-{args.split}-s{args.seed}"
    cache.mkdir(exist_ok=True)
    done = finished_runs(runs)
    rematch = [n for n in args.rematch.split(",") if n]
    if set(rematch) - set(done):
        p.error(f"--rematch: no finished run named {', '.join(sorted(set(rematch) - set(done)))} in {runs} "
                f"(finished: {', '.join(sorted(done)) or 'none'})")
    if rematch and not peer:
        p.error(f"--rematch: the ablation has no {args.peer} rows of seed {args.seed} to rematch")
    table_rows, ref_macs = {}, None
    for name, folder in done.items():
        path = cache / f"{name}.json"
        if not path.exists():
            log(f"scoring {name}")
            engine = PruningEngine.from_pretrained(folder, images=tx, labels=ty, seed=args.seed)
            result = evaluate(engine, x, y, ab.subtasks(engine.model), progress=False, seed=args.seed)
            atomic_write_json(path, result)
        result, rematched = read_json(path), None
        again = runs / f"variants-rematch-s{args.seed}" / f"{name}-{args.peer}.json"
        if name in rematch and not again.exists():
            if ref_macs is None:  # the ablation's dense net, loaded once for its MACs
                ref_macs = plain_cost(ab.trained("dense", args.seed, ab.cfg.run.gamma), None)["dense_macs"]
            try:
                targets = rematch_targets(result, peer, ref_macs)
            except ValueError as e:
                p.error(f"--rematch {name}: {e}")
            log(f"{args.peer} at the MACs of {name} ({len(targets)} class sets)")
            again.parent.mkdir(exist_ok=True)
            atomic_write_json(again, ab.per_subset_rows(args.seed, ab.cfg.run.gamma, targets, [args.peer]))
        if again.exists():
            rematched = {tuple(r["indices"]): r for r in read_json(again)
                         if r["split"] == args.split and r["phrasing"] == "canonical"}
        table_rows[name] = {**summarize(result, dense, peer, rematched), "train_s": train_seconds(folder)}
    command = "hypersan study variants " + " ".join(argv if argv is not None else sys.argv[1:])
    text = f"# Variants of {ab_dir} (seed {args.seed}, {args.split} split)\n\n`{command}`\n\n" + \
        table(table_rows, args.peer) + "\n"
    atomic_write_text(cache / "report.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
