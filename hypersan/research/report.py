"""Reports of an ablation run: results.csv, a Markdown table, and PNG plots (matplotlib, optional extra)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

from ..io import atomic_write_text

CSV_COLUMNS = ["method", "seed", "gamma", "split", "classes", "size", "seen", "acc", "backbone_acc", "map",
               "backbone_map", "mac_ratio", "param_ratio", "fp_rate", "backbone_fp_rate", "target_mac_ratio",
               "phrasing", "build_s", "build_warm_s", "train_s", "finetune_steps", "images_seen", "latency_ratio",
               "widths"]
FLOATS = ("gamma", "acc", "backbone_acc", "map", "backbone_map", "mac_ratio", "param_ratio", "fp_rate",
          "backbone_fp_rate", "target_mac_ratio", "build_s", "build_warm_s", "train_s", "latency_ratio")
INTS = ("seed", "size", "finetune_steps", "images_seen")
REFERENCE = "dense"  # every gap is against the separately trained dense net on the same classes, split and seed

SWEPT = ("hypernet", "pertask", "tp_l1_uniform", "tp_l1_uniform_ft", "random", "tp_subset", "tp_subset_ft",
         "tp_subset_ft_long", "hypernet_ft", "hypernet_ft_long")  # methods with a row per gamma of the sweep


def _mean(v: Iterable[float]) -> float:
    v = [x for x in v if x is not None]
    return sum(v) / len(v) if v else math.nan


def mean_std(per_seed: list[float], digits: int = 3, scale: float = 1.0) -> str:
    """"m ± s" over seeds (sample std), "m" for one seed, "—" for none."""
    per_seed = [v * scale for v in per_seed if v is not None and not math.isnan(v)]
    if not per_seed:
        return "—"
    if len(per_seed) == 1:
        return f"{per_seed[0]:.{digits}f}"
    return f"{statistics.mean(per_seed):.{digits}f} ± {statistics.stdev(per_seed):.{digits}f}"


def _mean_std(per_seed: list[float]) -> str:
    return mean_std(per_seed)


def per_seed_means(rows: list[dict], value) -> list[float]:
    """Mean over rows of value(row) (a key or a function; None values skipped) per seed, in seed order."""
    f = value if callable(value) else (lambda r: r[value])
    by = defaultdict(list)
    for r in rows:
        v = f(r)
        if v is not None:
            by[r["seed"]].append(v)
    return [statistics.mean(v) for _, v in sorted(by.items())]


def read_results(path: str | os.PathLike) -> list[dict]:
    """results.csv back into rows (numbers as numbers, empty cells as None)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in FLOATS:
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
        for k in INTS:
            r[k] = int(float(r[k])) if r.get(k) not in (None, "") else None
        r["seen"] = r["seen"] == "True"
        r["split"] = r.get("split") or "test"
        r["widths"] = json.loads(r["widths"]) if r.get("widths") else None
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    """results.csv: one row per (method, seed, split, subtask[, gamma, phrasing, target]), raw figures only,
    written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "widths": json.dumps(r.get("widths")) if r.get("widths") is not None else ""})
    atomic_write_text(path, buf.getvalue())


def reference_acc(rows: list[dict]) -> dict:
    """{(seed, split, classes): accuracy of the reference (the dense method) on those classes}."""
    return {(r["seed"], r["split"], r["classes"]): r["acc"] for r in rows
            if r["method"] == REFERENCE and r["phrasing"] == "canonical"}


def gap(row: dict, ref: dict) -> Optional[float]:
    """acc − the reference's acc on the same classes, split and seed, in points; None without a reference."""
    a = ref.get((row["seed"], row["split"], row["classes"]))
    return None if a is None else 100 * (row["acc"] - a)


def select(rows: list[dict], method: Optional[str] = None, gamma: Optional[float] = None, split: str = "test",
           **kw) -> list[dict]:
    """Canonical-phrasing rows of a method (any when None), gamma and split; kw: column = value or predicate."""
    out = [r for r in rows if (method is None or r["method"] == method) and r["phrasing"] == "canonical"
           and r["split"] == split and (gamma is None or r["gamma"] == gamma)]
    for k, v in kw.items():
        out = [r for r in out if (v(r[k]) if callable(v) else r[k] == v)]
    return out


def main_rows(rows: list[dict], gamma: float, split: str = "test") -> list[dict]:
    """The main comparison: the main gamma, canonical phrasings, one split."""
    return [r for r in rows if r["phrasing"] == "canonical" and r["gamma"] == gamma and r["split"] == split]


def _by(rows, *keys):
    out = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def paired_difference(rows: list[dict], a: str, b: str, gamma: Optional[float] = None, split: str = "test",
                      **kw) -> dict:
    """Method a − method b in accuracy points, paired per (seed, subset): only subsets both have; the mean over
    subsets per seed, then mean ± std over seeds. Also each side's mean mac_ratio and the count of pairs. (A
    per-subset peer's rows carry the gamma of the hypernetwork whose MACs they match.)"""
    left = {(r["seed"], r["classes"]): r for r in select(rows, a, gamma, split, **kw)}
    right = {(r["seed"], r["classes"]): r for r in select(rows, b, gamma, split, **kw)}
    keys = sorted(set(left) & set(right))
    diffs, macs_a, macs_b = defaultdict(list), defaultdict(list), defaultdict(list)
    for k in keys:
        diffs[k[0]].append(100 * (left[k]["acc"] - right[k]["acc"]))
        macs_a[k[0]].append(left[k]["mac_ratio"])
        macs_b[k[0]].append(right[k]["mac_ratio"])
    per_seed = [statistics.mean(v) for _, v in sorted(diffs.items())]
    return {"pairs": len(keys), "seeds": len(per_seed), "per_seed": per_seed,
            "mean": statistics.mean(per_seed) if per_seed else math.nan,
            "std": statistics.stdev(per_seed) if len(per_seed) > 1 else math.nan,
            "mac_a": _mean(v for vs in macs_a.values() for v in vs),
            "mac_b": _mean(v for vs in macs_b.values() for v in vs)}


def _lerp_x(x0: float, x1: float, t: float, log: bool) -> float:
    """The point a share t of the way from x0 to x1: linear, or linear in log x (geometric)."""
    if log and x0 > 0 and x1 > 0:
        return math.exp(math.log(x0) + (math.log(x1) - math.log(x0)) * t)
    return x0 + (x1 - x0) * t


def _share_x(x0: float, x1: float, x: float, log: bool) -> float:
    """How far x lies from x0 to x1 (0 to 1), linearly or in log x."""
    if log and x0 > 0 and x1 > 0 and x > 0:
        return (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return (x - x0) / (x1 - x0)


def interp_acc(points: list[tuple[float, float]], mac: float, log: bool = False) -> Optional[float]:
    """The accuracy a (mac, acc) curve gives at `mac`, linear between its points (log=True: linear in log MACs,
    the way accuracy grows with width); None outside it."""
    pts = sorted(points)
    for (m0, a0), (m1, a1) in zip(pts, pts[1:]):
        if m0 <= mac <= m1:
            return a0 + (a1 - a0) * _share_x(m0, m1, mac, log) if m1 > m0 else max(a0, a1)
    if len(pts) == 1 and pts[0][0] == mac:
        return pts[0][1]
    return None


def interp_mac(points: list[tuple[float, float]], acc: float, log: bool = False) -> Optional[float]:
    """The MACs at which a rising (mac, acc) curve first reaches `acc`, linear between its points (log=True:
    linear in log MACs; on a concave curve a linear reading asks too few MACs of the curve); its smallest MACs
    when it starts above; None when it never reaches it."""
    pts = sorted(points)
    if pts and acc <= pts[0][1]:
        return pts[0][0]
    for (m0, a0), (m1, a1) in zip(pts, pts[1:]):
        if a0 < acc <= a1:
            return _lerp_x(m0, m1, (acc - a0) / (a1 - a0), log)
    return None


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (mac, acc) points that no other point beats (as cheap or cheaper and at least as accurate), sorted by
    MACs: a rising curve, which interp_mac and interp_acc read."""
    front: list[tuple[float, float]] = []
    for m, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or a > front[-1][1]:
            front.append((m, a))
    return front


def equal_accuracy(mac: float, acc: float, curve: Iterable[tuple[float, float]]) -> dict:
    """A net at (mac, acc) against a curve of other nets (its Pareto front): the MACs the curve needs for the same
    accuracy (None when it never reaches it), mac over those MACs, and the curve's accuracy at the same MACs (None
    outside the curve) with the gap in points; the curve is read in log MACs, and `*_linear` beside them reads it
    linearly in MACs (which flatters the net on a concave curve). `below`: the accuracy is at or under the curve's
    cheapest point, so the curve's MACs are an upper bound of what it needs (and mac over them a lower bound of
    the ratio)."""
    front = pareto_front(curve)
    need, need_lin = interp_mac(front, acc, log=True), interp_mac(front, acc)
    same, same_lin = interp_acc(front, mac, log=True), interp_acc(front, mac)
    return {"mac_ratio": mac, "acc": acc, "curve_mac_ratio": need, "below": bool(front) and acc <= front[0][1],
            "mac_vs_curve": None if need is None or need <= 0 else mac / need,
            "curve_acc": same, "acc_gap_pt": None if same is None else 100 * (acc - same),
            "curve_mac_ratio_linear": need_lin,
            "mac_vs_curve_linear": None if need_lin is None or need_lin <= 0 else mac / need_lin,
            "acc_gap_pt_linear": None if same_lin is None else 100 * (acc - same_lin)}


def hardest_pairs(predicted: Iterable[int], labels: Iterable[int], k: int) -> list[tuple[int, int]]:
    """The k pairs of classes an all-classes classifier confuses most: by the share of both classes' images that
    were called the other one, (i -> j) + (j -> i) over n_i + n_j; ties by class index."""
    count: dict[tuple[int, int], int] = defaultdict(int)
    n: dict[int, int] = defaultdict(int)
    for p, y in zip(predicted, labels):
        p, y = int(p), int(y)
        n[y] += 1
        if p != y:
            count[(min(p, y), max(p, y))] += 1
    rate = {pair: c / max(1, n[pair[0]] + n[pair[1]]) for pair, c in count.items()}
    return sorted(rate, key=lambda pair: (-rate[pair], pair))[:k]


def crossover(train_a: float, build_a: float, train_b: float, build_b: float) -> Optional[float]:
    """The number of subsets from which method a (one-off training train_a, then build_a per subset) costs less
    in total than method b; 0 when a is never dearer; None when a never catches up."""
    if train_a <= train_b and build_a <= build_b:
        return 0.0
    if build_a >= build_b:
        return None
    return (train_a - train_b) / (build_b - build_a)


def summary_table(rows: list[dict], gamma: float, split: str = "test") -> str:
    """Markdown: per method and seen / held-out, mean over subtasks (then mean ± std over seeds) of acc, the gap
    to the reference (the dense net on the same classes), the gap to the method's own backbone, mac_ratio,
    param_ratio and the out-of-subtask false-positive rate."""
    ref = reference_acc(rows)
    lines = ["| method | subtasks | n | acc | acc − dense (pt) | acc − own backbone (pt) | mac_ratio | param_ratio | "
             "fp_rate |", "|---|---|---|---|---|---|---|---|---|"]
    main = [r for r in main_rows(rows, gamma, split) if r["method"] != "agnostic_tp"]
    for (method, seen), group in sorted(_by(main, "method", "seen").items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        n = len(group) // max(1, len(_by(group, "seed")))

        def col(f, digits=3):
            return mean_std(per_seed_means(group, f), digits)

        lines.append(f"| {method} | {'seen' if seen else 'held-out'} | {n} | {col('acc')} | "
                     f"{col(lambda r: gap(r, ref), 2)} | {col(lambda r: 100 * (r['acc'] - r['backbone_acc']), 2)} | "
                     f"{col('mac_ratio')} | {col('param_ratio')} | {col('fp_rate')} |")
    return "\n".join(lines)


def size_table(rows: list[dict], gamma: float, seen: bool, split: str = "test") -> str:
    """Markdown: method × subtask size, cells "gap to the dense net (pt) / mac_ratio", means over subtasks and
    seeds."""
    ref = reference_acc(rows)
    main = [r for r in main_rows(rows, gamma, split) if r["seen"] == seen and r["method"] != "agnostic_tp"]
    if not main:
        return "(no such subtasks)"
    sizes = sorted({r["size"] for r in main})
    lines = ["| method | " + " | ".join(str(s) for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for (method,), group in sorted(_by(main, "method").items()):
        by_size = _by(group, "size")
        cells = []
        for s in sizes:
            g = by_size.get((s,), [])
            cells.append(f"{_mean(gap(r, ref) for r in g):+.2f} / {_mean(r['mac_ratio'] for r in g):.3f}"
                         if g else "—")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(rows: list[dict], split: str = "test") -> str:
    """Markdown: the gamma sweep (hypernet, pertask, and the per-subset baselines matched to the hypernet at each
    gamma) and the agnostic_tp MACs sweep, seen and held-out; on the sweep's seed (the first) only."""
    ref = reference_acc(rows)
    lines = ["| method | gamma / target | subtasks | acc − dense (pt) | mac_ratio |", "|---|---|---|---|---|"]
    first = min((r["seed"] for r in rows), default=0)
    swept = [r for r in select(rows, split=split, seed=first) if r["method"] in SWEPT]
    for (method, g, seen), group in sorted(_by(swept, "method", "gamma", "seen").items()):
        lines.append(f"| {method} | γ = {g:g} | {'seen' if seen else 'held-out'} | "
                     f"{_mean(gap(r, ref) for r in group):+.2f} | {_mean(r['mac_ratio'] for r in group):.3f} |")
    agnostic = select(rows, "agnostic_tp", split=split, seed=first)
    for (t, seen), group in sorted(_by(agnostic, "target_mac_ratio", "seen").items()):
        lines.append(f"| agnostic_tp | mac {t:g} | {'seen' if seen else 'held-out'} | "
                     f"{_mean(gap(r, ref) for r in group):+.2f} | {_mean(r['mac_ratio'] for r in group):.3f} |")
    return "\n".join(lines)


def cost_rows(rows: list[dict], split: str = "test") -> dict:
    """{method: {"cold", "warm", "train", "images", "n"}}: median cold and warm build time of one subtask net
    (over the subsets that have one), median one-off training time, median images seen per subset."""
    out = {}
    for (method,), group in sorted(_by(select(rows, split=split), "method").items()):
        def med(k):
            v = [r[k] for r in group if r.get(k) is not None]
            return statistics.median(v) if v else None
        out[method] = {"cold": med("build_s"), "warm": med("build_warm_s"), "train": med("train_s"),
                       "images": med("images_seen"), "n": sum(r.get("build_s") is not None for r in group)}
    return out


def cost_table(rows: list[dict], split: str = "test") -> str:
    """Markdown: median cold / warm build time of one subtask net, training time and images seen, per method."""
    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    lines = ["| method | subsets timed | median cold build (s) | median warm build (s) | median training (s) | "
             "images seen per subset |", "|---|---|---|---|---|---|"]
    for method, c in cost_rows(rows, split).items():
        lines.append(f"| {method} | {c['n']} | {f(c['cold'], '.3f')} | {f(c['warm'], '.4f')} | "
                     f"{f(c['train'], '.1f')} | {f(c['images'], ',.0f')} |")
    return "\n".join(lines)


def monotonicity_table(extras: dict) -> str:
    lines = ["| step | subset–superset pairs | pairs with a channel the superset drops | channels |",
             "|---|---|---|---|"]
    for step, e in sorted(extras.items()):
        m = e.get("monotonicity")
        if m:
            lines.append(f"| {step} | {m['pairs']} | {m['pairs_violated']} | "
                         f"{m['channel_violations']} of {m['channels']} |")
    return "\n".join(lines)


PEERS = ("tp_subset", "tp_subset_ft", "tp_subset_ft_long", "tp_l1_uniform", "tp_l1_uniform_ft", "random",
         "scratch", "hypernet_ft", "hypernet_ft_long")


def matched_mac_table(rows: list[dict], gamma: float, split: str = "test", method: str = "hypernet") -> str:
    """Markdown: `method` against every per-subset peer on the same subsets (the peer pruned to the method's
    MACs), seen and held-out: the paired difference (mean ± std over seeds), each side's accuracy and MACs, the
    peer's fine-tuning steps and images seen."""
    lines = [f"| peer | subsets | pairs (seeds) | {method} acc | peer acc | {method} − peer (pt) | {method} mac_ratio | "
             "peer mac_ratio | peer fine-tuning steps | peer images seen |", "|---|---|---|---|---|---|---|---|---|---|"]
    for peer in PEERS:
        for seen in (True, False):
            d = paired_difference(rows, method, peer, gamma, split, seen=seen)
            if not d["pairs"]:
                continue
            keys = {(r["seed"], r["classes"]) for r in select(rows, peer, gamma, split, seen=seen)}
            mine = [r for r in select(rows, method, gamma, split, seen=seen) if (r["seed"], r["classes"]) in keys]
            theirs = select(rows, peer, gamma, split, seen=seen)
            steps = statistics.median(r["finetune_steps"] or 0 for r in theirs)
            images = statistics.median(r["images_seen"] or 0 for r in theirs)
            lines.append(f"| {peer} | {'seen' if seen else 'held-out'} | {d['pairs']} ({d['seeds']}) | "
                         f"{mean_std(per_seed_means(mine, 'acc'), 4)} | {mean_std(per_seed_means(theirs, 'acc'), 4)} | "
                         f"{mean_std(d['per_seed'], 2)} | {d['mac_a']:.3f} | {d['mac_b']:.3f} | {steps:,.0f} | "
                         f"{images:,.0f} |")
    return "\n".join(lines)


def pearson(xs: list[float], ys: list[float]) -> Optional[float]:
    """Pearson's r of two equally long lists; None with fewer than 3 points or a constant list."""
    if len(xs) < 3 or len(xs) != len(ys):
        return None
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def _less_group_mean(rows: list[dict], value, key: str = "size") -> list[float]:
    """value(r) less the mean of value over the rows of r's group (same `key`)."""
    groups = _by(rows, key)
    means = {k: statistics.mean(value(r) for r in g) for k, g in groups.items()}
    return [value(r) - means[(r[key],)] for r in rows]


def difficulty(rows: list[dict], method: str, gamma: float, split: str = "test") -> dict:
    """Does a method spend MACs where its class sets are hard? Per seed, over its class sets (seen and held-out;
    sets of size >= 2, since a single class is scored one-vs-rest): Pearson's r of mac_ratio with the subset size,
    with the dense net's error on the set (1 − its accuracy), and with that error within a size (each set's
    MACs and error less the mean of its size), as {name: [r per seed]}."""
    ref = reference_acc(rows)
    out: dict = {"sets": 0, "size": [], "error": [], "error_within_size": []}
    for (seed,), group in sorted(_by(select(rows, method, gamma, split, size=lambda k: k >= 2), "seed").items()):
        group = [r for r in group if (seed, split, r["classes"]) in ref]
        err = {id(r): 1 - ref[(seed, split, r["classes"])] for r in group}
        macs = [r["mac_ratio"] for r in group]
        out["sets"] = max(out["sets"], len(group))
        for name, xs, ys in (("size", macs, [float(r["size"]) for r in group]),
                             ("error", macs, [err[id(r)] for r in group]),
                             ("error_within_size", _less_group_mean(group, lambda r: r["mac_ratio"]),
                              _less_group_mean(group, lambda r: err[id(r)]))):
            r = pearson(xs, ys)
            if r is not None:
                out[name].append(r)
    return out


def difficulty_table(rows: list[dict], gamma: float, split: str = "test") -> str:
    """Markdown: per jointly trained method, the correlation of its class sets' MACs with their size and with the
    dense net's error on them (difficulty), overall and within a size (mean ± std over seeds)."""
    lines = ["| method | class sets (per seed) | r(MACs, size) | r(MACs, dense error) | r(MACs, dense error) within "
             "a size |", "|---|---|---|---|---|"]
    for method in ("hypernet", "hypernet_text", "pertask"):
        d = difficulty(rows, method, gamma, split)
        if d["sets"]:
            lines.append(f"| {method} | {d['sets']} | {mean_std(d['size'], 2)} | {mean_std(d['error'], 2)} | "
                         f"{mean_std(d['error_within_size'], 2)} |")
    return "\n".join(lines)


def per_subset_seconds(rows: list[dict], gamma: float, split: str = "test") -> dict:
    """{method: {...}} on the class sets the per-subset peers were built for (at the hypernetwork's MACs): each
    method's mean accuracy and gap to the dense net (per seed), mean mac_ratio, and the median seconds to get a
    net for a new class set (cold build: masks and calibration for the hypernetwork; pruning, fine-tuning and
    calibration for a peer)."""
    peers = {(r["seed"], r["classes"]) for r in select(rows, gamma=gamma, split=split)
             if r["method"] in PEERS and r["method"] != "scratch"}
    ref = reference_acc(rows)
    out = {}
    for (method,), group in sorted(_by(select(rows, gamma=gamma, split=split), "method").items()):
        group = [r for r in group if (r["seed"], r["classes"]) in peers and r.get("build_s") is not None]
        if not group or method in ("dense", "agnostic_tp", "agnostic_hypernet"):
            continue
        out[method] = {"sets": len(group), "acc": per_seed_means(group, "acc"),
                       "gap": per_seed_means(group, lambda r: gap(r, ref)),
                       "mac_ratio": _mean(r["mac_ratio"] for r in group),
                       "seconds": statistics.median(r["build_s"] for r in group),
                       "steps": statistics.median(r.get("finetune_steps") or 0 for r in group)}
    return out


def seconds_table(rows: list[dict], gamma: float, split: str = "test") -> str:
    """Markdown: accuracy against the seconds each method needs per new class set, at matched MACs."""
    lines = ["| method | nets (all seeds) | acc | acc − dense (pt) | mac_ratio | fine-tuning steps | median seconds "
             "per new class set |", "|---|---|---|---|---|---|---|"]
    for method, c in sorted(per_subset_seconds(rows, gamma, split).items(), key=lambda kv: kv[1]["seconds"]):
        lines.append(f"| {method} | {c['sets']} | {mean_std(c['acc'], 4)} | {mean_std(c['gap'], 2)} | "
                     f"{c['mac_ratio']:.3f} | {c['steps']:,.0f} | {c['seconds']:.2f} |")
    return "\n".join(lines)


def heldout_vs_pertask(rows: list[dict], gamma: float, split: str = "test", min_size: int = 3) -> dict:
    """Held-out combinations of size >= min_size: hypernet and per-task masks, per-seed mean acc and mac_ratio,
    and their paired difference."""
    kw = dict(seen=False, size=lambda s: s >= min_size)
    h, p = select(rows, "hypernet", gamma, split, **kw), select(rows, "pertask", gamma, split, **kw)
    return {"hypernet_acc": per_seed_means(h, "acc"), "pertask_acc": per_seed_means(p, "acc"),
            "hypernet_mac": per_seed_means(h, "mac_ratio"), "pertask_mac": per_seed_means(p, "mac_ratio"),
            "difference": paired_difference(rows, "hypernet", "pertask", gamma, split, **kw)}


def agnostic_curve(rows: list[dict], split: str = "test", size: Optional[int] = 2, seed: Optional[int] = None
                   ) -> list[tuple[float, float]]:
    """The class-agnostic curve: (mean mac_ratio, mean acc) of agnostic_tp at each target, on subtasks of `size`
    (None: all)."""
    kw = {} if size is None else {"size": size}
    if seed is not None:
        kw["seed"] = seed
    return [(statistics.mean(r["mac_ratio"] for r in g), statistics.mean(r["acc"] for r in g))
            for _, g in sorted(_by(select(rows, "agnostic_tp", split=split, **kw), "target_mac_ratio").items())]


def adaptivity(rows: list[dict], gamma: float, split: str = "test", size: int = 2) -> dict:
    """The hypernetwork's subtasks of `size` against the class-agnostic curve at equal accuracy: its mean
    (mac_ratio, acc), the MACs the curve needs for that accuracy (interpolated; None when never reached), and the
    ratio of the two."""
    h = select(rows, "hypernet", gamma, split, size=size)
    if not h:
        return {}
    mac, acc = statistics.mean(r["mac_ratio"] for r in h), statistics.mean(r["acc"] for r in h)
    curve = agnostic_curve(rows, split, size)
    need, lin = interp_mac(curve, acc, log=True), interp_mac(curve, acc)
    return {"mac_ratio": mac, "acc": acc, "agnostic_mac_ratio": need, "ratio": None if need is None else mac / need,
            "agnostic_mac_ratio_linear": lin, "ratio_linear": None if lin is None else mac / lin}


def costs_text(rows: list[dict], split: str = "test") -> list[str]:
    """The crossover counts: from how many subsets on a jointly trained hypernetwork (its training, then a cold
    build per subset) costs less than the dense net's training and each peer's build per subset."""
    c = cost_rows(rows, split)
    h, d = c.get("hypernet"), c.get("dense")
    if not h or not d or h["train"] is None or d["train"] is None or h["cold"] is None:
        return []
    out = ["| peer | peer build per subset (s) | hypernet cold build (s) | extra one-off training (s) | "
           "hypernet cheaper in total from |", "|---|---|---|---|---|"]
    for peer in PEERS:
        if peer in c and c[peer]["cold"] is not None:
            n = crossover(h["train"], h["cold"], d["train"], c[peer]["cold"])
            out.append(f"| {peer} | {c[peer]['cold']:.2f} | {h['cold']:.2f} | {h['train'] - d['train']:.0f} | "
                       + ("never |" if n is None else f"{math.ceil(n)} subsets |"))
    return out


def write_reports(out: Path, rows: list[dict], extras: dict, gamma: Optional[float] = None) -> dict:
    """results.csv, table.md and plots/*.png (plots skipped, with a note, when matplotlib is missing)."""
    out = Path(out)
    if gamma is None:
        cfg = json.loads((out / "ablation.json").read_text()) if (out / "ablation.json").is_file() else {}
        gamma = cfg.get("run", {}).get("gamma", 0.5)
    write_csv(out / "results.csv", rows)
    md = ["# Ablation results", "",
          f"Main comparison at γ = {gamma:g}. Every gap is against one reference: the separately trained dense "
          "net on the same classes, split and seed (`acc − dense`); `acc − own backbone` is a second, "
          "separately named reference. Figures are on the test split unless a heading says validation.", "",
          "## Summary (test)", "", summary_table(rows, gamma), "",
          "## Summary (validation: the split choices are made on)", "", summary_table(rows, gamma, "val"), "",
          "## Matched MACs: the hypernetwork against each per-subset peer (test)", "",
          matched_mac_table(rows, gamma), "",
          "## Matched MACs (validation)", "", matched_mac_table(rows, gamma, "val"), "",
          "## By subtask size, seen (gap to dense in pt / mac_ratio)", "", size_table(rows, gamma, True), "",
          "## By subtask size, held-out", "", size_table(rows, gamma, False), "",
          "## Accuracy against seconds per new class set, at matched MACs (test)", "",
          "On the class sets the per-subset peers were built for; seconds are a cold build on this machine "
          "(`hypersan bench` names it), fine-tuning included.", "", seconds_table(rows, gamma), "",
          "## MACs against difficulty (test)", "",
          "Pearson's r over each seed's class sets of size 2 or more; the dense net's error on a set is its "
          "difficulty. A net that spends where its classes are hard has r(MACs, dense error) > 0 within a size.",
          "", difficulty_table(rows, gamma), "",
          "## Sweeps", "", sweep_table(rows), "",
          "## Monotonicity of kept channels", "", monotonicity_table(extras), "",
          "## Cost of a subtask network", "",
          "Cold: a class set the engine has never seen (masks, BN calibration, surgery, BN folding; for a peer: "
          "pruning, fine-tuning, calibration). Warm: its statistics cached (a peer caches nothing: warm = cold).",
          "", cost_table(rows), "", *costs_text(rows), ""]
    atomic_write_text(out / "table.md", "\n".join(md))
    plots = write_plots_once(out / "plots", rows, gamma)
    return {"csv": str(out / "results.csv"), "table": str(out / "table.md"), "plots": plots}


# One look per method in every figure: a readable name, a colour (matplotlib's tab20, fixed per method) and a
# marker, so that methods keep their colour across figures and points at the same place stay visible.
METHOD_STYLES = {
    "dense": ("dense net (reference)", 16, "s"),
    "hypernet": ("hypernetwork", 6, "o"),
    "hypernet_text": ("hypernetwork, text request", 7, "o"),
    "pertask": ("per-task masks", 2, "D"),
    "agnostic_hypernet": ("all-classes net of the hypernetwork", 8, "^"),
    "agnostic_tp": ("Torch-Pruning, class-agnostic", 9, "v"),
    "tp_subset": ("Torch-Pruning per subset", 1, "P"),
    "tp_subset_ft": ("Torch-Pruning per subset + 200-step FT", 0, "P"),
    "tp_subset_ft_long": ("Torch-Pruning per subset + 2000-step FT", 18, "X"),
    "tp_l1_uniform": ("uniform L1", 10, "<"),
    "tp_l1_uniform_ft": ("uniform L1 + FT", 11, ">"),
    "random": ("random channels", 14, "x"),
    "hypernet_ft": ("hypernetwork + 200-step FT", 5, "o"),
    "hypernet_ft_long": ("hypernetwork + 2000-step FT", 12, "h"),
    "scratch": ("trained from scratch", 4, "*"),
}


def method_style(method: str, index: int = 0) -> dict:
    """matplotlib keyword arguments of a method's line: label, colour, marker (unknown methods get the next
    free colour of tab20 by `index`)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    label, colour, marker = METHOD_STYLES.get(method, (method, (3 + 2 * index) % 20, "o"))
    return {"label": label, "color": cmap(colour), "marker": marker, "markersize": 6, "alpha": 0.9,
            "markeredgecolor": "black", "markeredgewidth": 0.4}


PLOTS_MANIFEST = ".plots.json"  # in the plots folder: the digest of what its plots were drawn from, and their names


def plots_digest(rows: list[dict], gamma: float) -> str:
    """What a run's plots depend on: its rows, its gamma, and the code that draws them (this module's source, so
    a hypersan that draws them differently draws them again)."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(json.dumps({"rows": rows, "gamma": gamma}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def write_plots_once(folder: Path, rows: list[dict], gamma: float) -> list[str]:
    """`write_plots`, unless `folder` already holds every plot drawn by this code from the same rows and gamma (a
    resumed run with nothing new: its plots stay as they are, and drawing them again took about 3 s)."""
    folder = Path(folder)
    digest = plots_digest(rows, gamma)
    try:
        done = json.loads((folder / PLOTS_MANIFEST).read_text())
    except (OSError, ValueError):
        done = {}
    names = done.get("plots") if isinstance(done, dict) and done.get("digest") == digest else None
    if names and all(isinstance(n, str) and (folder / n).is_file() for n in names):
        return [str(folder / n) for n in names]
    paths = write_plots(folder, rows, gamma)
    if paths:
        atomic_write_text(folder / PLOTS_MANIFEST,
                          json.dumps({"digest": digest, "plots": [Path(p).name for p in paths]}))
    return paths


def write_plots(folder: Path, rows: list[dict], gamma: float) -> list[str]:
    """pareto.png, mac_vs_size.png, acc_vs_seconds.png, kept_channels.png; [] when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    main = [r for r in rows if r["phrasing"] == "canonical" and r["split"] == "test"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    methods = sorted({r["method"] for r in main})
    for ax, seen in zip(axes, (True, False)):
        for k, ((method,), group) in enumerate(sorted(_by([r for r in main if r["seen"] == seen], "method").items())):
            # a curve for the sweeps (gamma; agnostic_tp's MACs), one mean point for every other method
            key = "gamma" if method in SWEPT else "target_mac_ratio" if method == "agnostic_tp" else "method"
            pts = sorted(_by(group, key).items(), key=lambda kv: _mean(r["mac_ratio"] for r in kv[1]))
            # methods that share a MAC ratio (a peer matched to the hypernetwork's) sit side by side, not on top
            nudge = 1 + 0.012 * (methods.index(method) - len(methods) / 2)
            xs = [nudge * _mean(r["mac_ratio"] for r in g) for _, g in pts]
            ys = [_mean(100 * r["acc"] for r in g) for _, g in pts]  # absolute: methods have their own dense nets
            ax.plot(xs, ys, linewidth=1.2, **method_style(method, k))
        ax.set_title("seen combinations" if seen else "held-out combinations")
        ax.set_xlabel("MAC ratio to the dense net (log scale)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("test accuracy on the subtask's classes (%)")
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize=8,
                   frameon=False)
        fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(handles) - 1) // 4), 1, 1))
    else:
        fig.tight_layout()
    paths.append(save_figure(fig, folder / "pareto.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = sorted(_by([r for r in main_rows(rows, gamma) if r["method"] != "agnostic_tp"], "method").items())
    for k, ((method,), group) in enumerate(groups):
        by_size = sorted(_by(group, "size").items())
        shift = 0.06 * (k - (len(groups) - 1) / 2)  # side by side at each size
        ax.plot([s + shift for (s,), _ in by_size], [_mean(r["mac_ratio"] for r in g) for _, g in by_size],
                linewidth=1.2, **method_style(method, k))
    ax.set_xlabel("subtask size (classes)")
    ax.set_ylabel("MAC ratio to the dense net")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(save_figure(fig, folder / "mac_vs_size.png"))
    plt.close(fig)

    timed = per_subset_seconds(rows, gamma)
    if timed:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for k, (method, c) in enumerate(sorted(timed.items())):
            ax.plot([c["seconds"]], [100 * statistics.mean(c["acc"])], linestyle="none", **method_style(method, k))
        ax.set_xscale("log")
        ax.set_xlabel("seconds to a net for a new class set (cold build, fine-tuning included; log scale)")
        ax.set_ylabel("test accuracy at matched MACs (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(save_figure(fig, folder / "acc_vs_seconds.png"))
        plt.close(fig)

    with_widths = [r for r in main_rows(rows, gamma) if r.get("widths")]
    if with_widths:
        picks = sorted({r["classes"] for r in with_widths if r["size"] in (2, 5)})[:3]
        entries = [r for r in with_widths if r["classes"] in picks and r["seed"] == with_widths[0]["seed"]]
        sites = list(entries[0]["widths"])
        full = {s: max(r["widths"].get(s, 0) for r in with_widths) for s in sites}
        grid = [[r["widths"].get(s, 0) / max(1, full[s]) for s in sites] for r in entries]
        fig, ax = plt.subplots(figsize=(3 + 0.9 * len(sites), 1.2 + 0.45 * len(entries)))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i, r in enumerate(entries):  # the kept width in every cell: readable at any printed size
            for j, site in enumerate(sites):
                ax.text(j, i, str(r["widths"].get(site, 0)), ha="center", va="center", fontsize=8,
                        color="white" if grid[i][j] < 0.6 else "black")
        ax.set_xticks(range(len(sites)), sites, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(entries)),
                      [f"{METHOD_STYLES.get(r['method'], (r['method'],))[0]}: {r['classes']}" for r in entries],
                      fontsize=8)
        ax.set_title("kept channels per site (cell: kept width; colour: fraction of the widest kept)", fontsize=9)
        fig.colorbar(im, ax=ax, label="kept fraction")
        fig.tight_layout()
        paths.append(save_figure(fig, folder / "kept_channels.png"))
        plt.close(fig)
    return paths


def save_figure(fig, path: Path) -> str:
    """Write a matplotlib figure to `path` atomically (a temporary file renamed into place); returns the path."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return str(path)
