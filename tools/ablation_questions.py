"""Answer the ablation's questions from a finished run's results.csv, with the figures behind each answer.

    python tools/ablation_questions.py --run runs/ablation [--hard-pairs]

1. Held-out combinations of size >= 3: does the hypernetwork reach per-task-mask accuracy (within 0.5 pt) at
   <= 0.8x their mac_ratio?
2. At matched MACs, does the hypernetwork match or beat Torch-Pruning per subset with fine-tuning, and at what
   build cost?
3. Does adaptivity pay? On pairs, does the hypernetwork reach the accuracy of the class-agnostic pruned nets at
   <= 0.6x their MACs (the MACs a class-agnostic net needs for the hypernetwork's pair accuracy, interpolated
   along the agnostic_tp sweep)?
4. Where does each method break down: by subtask size, and (--hard-pairs) on hard pairs such as T-shirt/top vs
   Shirt, evaluated with the run's trained models into a sibling folder `<run>-hard-pairs` (the per-subset
   baselines are pruned to the hypernetwork's MACs for each pair, as in the run).

Accuracies are means over subtasks, then mean +- std over seeds; "acc" is absolute test accuracy on the
subtask's classes (single classes: one-vs-rest).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

HARD_PAIRS = [("T-shirt/top", "Shirt"), ("Pullover", "Coat"), ("Pullover", "Shirt"), ("Coat", "Shirt"),
              ("Sandal", "Sneaker"), ("Sneaker", "Ankle boot")]


def read_rows(run: Path) -> list[dict]:
    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("acc", "dense_acc", "mac_ratio", "param_ratio", "gamma", "target_mac_ratio", "build_s", "train_s",
                  "fp_rate", "dense_fp_rate", "latency_ratio"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
        r["size"], r["seed"] = int(r["size"]), int(r["seed"])
        r["seen"] = r["seen"] == "True"
    return rows


def per_seed_mean(rows: list[dict], key: str) -> list[float]:
    by = defaultdict(list)
    for r in rows:
        if r[key] is not None:
            by[r["seed"]].append(r[key])
    return [statistics.mean(v) for _, v in sorted(by.items())]


def fmt(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if not values:
        return "—"
    m = statistics.mean(values) * scale
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def select(rows, method, gamma=None, **kw):
    out = [r for r in rows if r["method"] == method and r["phrasing"] == "canonical"
           and (gamma is None or r["gamma"] == gamma)]
    for k, v in kw.items():
        out = [r for r in out if (v(r[k]) if callable(v) else r[k] == v)]
    return out


def question1(rows, gamma) -> list[str]:
    lines = ["### 1. Held-out combinations of size ≥ 3: hypernetwork vs per-task masks", ""]
    hn = select(rows, "hypernet", gamma, seen=False, size=lambda s: s >= 3)
    pt = select(rows, "pertask", gamma, seen=False, size=lambda s: s >= 3)
    if not hn or not pt:
        return lines + ["(not in this run)", ""]
    acc_h, acc_p = per_seed_mean(hn, "acc"), per_seed_mean(pt, "acc")
    mac_h, mac_p = per_seed_mean(hn, "mac_ratio"), per_seed_mean(pt, "mac_ratio")
    gap = [100 * (a - b) for a, b in zip(acc_h, acc_p)]
    rel = [a / b for a, b in zip(mac_h, mac_p)]
    ok = abs(statistics.mean(gap)) <= 0.5 or statistics.mean(gap) > 0
    lines += ["| method | n | acc | mac_ratio |", "|---|---|---|---|",
              f"| hypernet | {len(hn) // len(acc_h)} | {fmt(acc_h)} | {fmt(mac_h)} |",
              f"| pertask | {len(pt) // len(acc_p)} | {fmt(acc_p)} | {fmt(mac_p)} |", "",
              f"hypernet − pertask accuracy: {fmt(gap, digits=2)} pt; hypernet / pertask mac_ratio: {fmt(rel)}. "
              f"Target (within 0.5 pt at ≤ 0.8×): accuracy {'met' if ok else 'missed'}, MACs "
              f"{'met' if statistics.mean(rel) <= 0.8 else 'missed'}.", ""]
    return lines + sweep_question1(rows)


def _interp_acc(points: list[tuple[float, float]], mac: float) -> float | None:
    """The accuracy a (mac, acc) sweep curve gives at `mac` (linear between points); None outside it."""
    pts = sorted(points)
    for (m0, a0), (m1, a1) in zip(pts, pts[1:]):
        if m0 <= mac <= m1:
            return a0 + (a1 - a0) * (mac - m0) / (m1 - m0) if m1 > m0 else max(a0, a1)
    return None


def sweep_question1(rows) -> list[str]:
    """Question 1 along the gamma sweep (first seed): each per-task point against the hypernetwork's curve at
    0.8x that point's MACs."""
    first = min(r["seed"] for r in rows)
    curves = {}
    for m in ("hypernet", "pertask"):
        by = defaultdict(list)
        for r in select(rows, m, seed=first, seen=False, size=lambda s: s >= 3):
            by[r["gamma"]].append(r)
        curves[m] = {g: (statistics.mean(r["mac_ratio"] for r in v), statistics.mean(r["acc"] for r in v))
                     for g, v in sorted(by.items())}
    if len(curves["hypernet"]) < 2 or not curves["pertask"]:
        return []
    lines = [f"Along the γ sweep (seed {first}, held-out, size ≥ 3):", "",
             "| method | γ | mac_ratio | acc |", "|---|---|---|---|"]
    for m, c in curves.items():
        lines += [f"| {m} | {g:g} | {mac:.3f} | {acc:.4f} |" for g, (mac, acc) in c.items()]
    lines += ["", "| per-task point | its mac_ratio | its acc | hypernet acc at 0.8× those MACs | gap (pt) |",
              "|---|---|---|---|---|"]
    pts = list(curves["hypernet"].values())
    for g, (mac, acc) in curves["pertask"].items():
        h = _interp_acc(pts, 0.8 * mac)
        if h is None:
            top = max(pts)
            lines.append(f"| γ = {g:g} | {mac:.3f} | {acc:.4f} | outside the hypernet's sweep (its largest: "
                         f"{top[1]:.4f} at {top[0]:.3f}) | {100 * (top[1] - acc):+.2f} at {top[0] / mac:.2f}× |")
        else:
            lines.append(f"| γ = {g:g} | {mac:.3f} | {acc:.4f} | {h:.4f} | {100 * (h - acc):+.2f} |")
    return lines + [""]


def question2(rows, gamma) -> list[str]:
    lines = ["### 2. Matched MACs: hypernetwork vs Torch-Pruning per subset (+ fine-tuning)", ""]
    hn = {(r["seed"], r["classes"]): r for r in select(rows, "hypernet", gamma)}
    table = ["| method | seen | n | acc | hypernet − method (pt) | mac_ratio | median build (s) |",
             "|---|---|---|---|---|---|---|"]
    for method in ("tp", "tp_ft", "random"):
        for seen in (True, False):
            got = [r for r in select(rows, method, gamma, seen=seen) if (r["seed"], r["classes"]) in hn]
            if not got:
                continue
            accs = per_seed_mean(got, "acc")
            diffs = defaultdict(list)
            for r in got:
                diffs[r["seed"]].append(100 * (hn[(r["seed"], r["classes"])]["acc"] - r["acc"]))
            d = [statistics.mean(v) for _, v in sorted(diffs.items())]
            build = statistics.median(r["build_s"] for r in got if r["build_s"] is not None)
            table.append(f"| {method} | {'seen' if seen else 'held-out'} | {len(got) // len(accs)} | {fmt(accs)} | "
                         f"{fmt(d, digits=2)} | {fmt(per_seed_mean(got, 'mac_ratio'))} | {build:.2f} |")
    hb = [r["build_s"] for r in hn.values() if r["build_s"] is not None]
    ft = [r["build_s"] for r in select(rows, "tp_ft", gamma) if r["build_s"] is not None]
    lines += table + [""]
    if hb and ft:
        lines += [f"Build time of one subtask net: hypernet median {1e3 * statistics.median(hb):.1f} ms (masks + "
                  f"surgery + BN folding, statistics cached), Torch-Pruning + fine-tuning "
                  f"{statistics.median(ft):.1f} s: {statistics.median(ft) / statistics.median(hb):,.0f}× longer.", ""]
    return lines


def _interp_mac(points: list[tuple[float, float]], acc: float) -> float | None:
    """The MACs at which a rising (mac, acc) curve reaches acc (linear between sweep points); None beyond it."""
    pts = sorted(points)
    for (m0, a0), (m1, a1) in zip(pts, pts[1:]):
        if a0 < acc <= a1:
            return m0 + (m1 - m0) * (acc - a0) / (a1 - a0)
    if pts and acc <= pts[0][1]:
        return pts[0][0]
    return None


def question3(rows, gamma) -> list[str]:
    lines = ["### 3. Does adaptivity pay? Pairs: hypernetwork vs the best class-agnostic pruned net", ""]
    pairs = lambda s: s == 2  # noqa: E731
    ag = select(rows, "agnostic_tp", size=pairs)
    curve = defaultdict(list)
    for r in ag:
        curve[r["target_mac_ratio"]].append(r)
    pts = [(statistics.mean(r["mac_ratio"] for r in g), statistics.mean(r["acc"] for r in g)) for g in curve.values()]
    lines += ["| class-agnostic net | mac_ratio | pair acc |", "|---|---|---|"]
    lines += [f"| agnostic_tp (target {t:g}) | {statistics.mean(r['mac_ratio'] for r in g):.3f} | "
              f"{statistics.mean(r['acc'] for r in g):.4f} |" for t, g in sorted(curve.items())]
    ah = select(rows, "agnostic_hypernet", gamma, size=pairs)
    if ah:
        lines.append(f"| agnostic_hypernet (the all-classes mask) | {statistics.mean(r['mac_ratio'] for r in ah):.3f} | "
                     f"{statistics.mean(r['acc'] for r in ah):.4f} |")
    lines += ["", "| hypernet | pair mac_ratio | pair acc | agnostic MACs at that acc | ratio (target ≤ 0.6) |",
              "|---|---|---|---|---|"]
    for g in sorted({r["gamma"] for r in select(rows, "hypernet")}):
        hn = select(rows, "hypernet", g, size=pairs)
        if not hn:
            continue
        mac, acc = statistics.mean(r["mac_ratio"] for r in hn), statistics.mean(r["acc"] for r in hn)
        need = _interp_mac(pts, acc)
        ratio = f"{mac / need:.2f}" if need else f"< {mac / max(p[0] for p in pts):.2f} (agnostic never reaches it)"
        lines.append(f"| γ = {g:g} | {mac:.3f} | {acc:.4f} | {need:.3f} |  {ratio} |" if need else
                     f"| γ = {g:g} | {mac:.3f} | {acc:.4f} | > {max(p[0] for p in pts):.3f} | {ratio} |")
    lines.append("")
    return lines


def breakdown(rows, gamma) -> list[str]:
    lines = ["### 4. Where methods break down: acc − dense net's acc on the same classes (pt), by size", ""]
    methods = [m for m in ("hypernet", "pertask", "hypernet_text", "tp", "tp_ft", "random", "agnostic_hypernet")
               if select(rows, m, gamma)]
    sizes = sorted({r["size"] for r in rows})
    dense = {(r["seed"], r["classes"]): r["acc"] for r in select(rows, "dense", gamma)}
    lines += ["| method | " + " | ".join(str(s) for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for m in methods:
        cells = []
        for s in sizes:
            got = [100 * (r["acc"] - dense[(r["seed"], r["classes"])]) for r in select(rows, m, gamma, size=s)
                   if (r["seed"], r["classes"]) in dense]
            cells.append(f"{statistics.mean(got):+.1f}" if got else "—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "(against the separately trained dense net, seeds paired; all subtasks, seen and held-out)", ""]
    return lines


def hard_pairs(run: Path) -> list[str]:
    """Evaluate the hard pairs with the run's trained models (no training) into <run>-hard-pairs."""
    from hypersan.ablate import Ablation, AblationConfig
    from hypersan.config import build_section

    saved = json.loads((run / "ablation.json").read_text())
    cfg = build_section(AblationConfig, saved, "")
    cfg.run.gammas = []
    cfg.run.methods = [m for m in cfg.run.methods if m in ("dense", "hypernet", "pertask", "tp", "tp_ft", "random")]
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
    rows = read_rows(out)
    gamma = cfg.run.gamma
    lines = ["### Hard pairs (the run's trained models)", "",
             "| pair | " + " | ".join(cfg.run.methods) + " | hypernet mac_ratio |", "|---|" + "---|" * (len(cfg.run.methods) + 1)]
    for p in HARD_PAIRS:
        name = "|".join(p)
        cells = []
        for m in cfg.run.methods:
            got = per_seed_mean(select(rows, m, gamma, classes=name), "acc")
            cells.append(fmt(got, digits=4) if got else "—")
        mac = per_seed_mean(select(rows, "hypernet", gamma, classes=name), "mac_ratio")
        lines.append(f"| {p[0]} vs {p[1]} | " + " | ".join(cells) + f" | {fmt(mac)} |")
    return lines + [""]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/ablation")
    p.add_argument("--hard-pairs", action="store_true", help="also evaluate hard pairs with the run's models")
    args = p.parse_args()
    run = Path(args.run)
    gamma = json.loads((run / "ablation.json").read_text())["run"]["gamma"]
    rows = read_rows(run)
    out = [f"Main comparison at γ = {gamma:g} ({run}/results.csv)", ""]
    out += question1(rows, gamma) + question2(rows, gamma) + question3(rows, gamma) + breakdown(rows, gamma)
    if args.hard_pairs:
        out += hard_pairs(run)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
