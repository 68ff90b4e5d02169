"""One budget-conditioned model against a family of fixed-gamma models: is the budget met, does one model match the
family's accuracy/compute front, does accuracy rise with the budget, and is a budgeted build cheap?

    hypersan study budget --budget runs/budget-study/budget-s0 \
        --fixed runs/budget-study/hypernet-g1-s0 runs/budget-study/hypernet-g2-s0 \
                runs/ablation/models/hypernet-g4-s0 runs/budget-study/hypernet-g8-s0 \
        --dense runs/ablation/models/dense-g4-s0 --out runs/budget-study/report

Every model is scored on the validation split (where choices are made) and on the test split (the final figures),
on the same 30 subtasks (10 pairs, 10 triples, 10 five-class sets, seen and held-out as sampled) and the budgets
{0.08, 0.12, 0.2, 0.3, 0.5}. Accuracy is |T|-way accuracy of the pruned net on the images of its classes. The
family is read at full strength: the γ models that no other beats on average at no more MACs, on validation
(family_front), linear between them on each class set (family_at). Writes budget_study.json, budget_study.md
and budget_front.png to --out.

Several budget models against one family: score each model alone (no --fixed), the family once, and reuse the
rows (the study records a sha256 of every checkpoint's weights and reuses rows only for the same weights):

    hypersan study budget --budget runs/A --dense runs/dense --out runs/rows-A
    hypersan study budget --budget runs/A --fixed runs/g1 runs/g4 --dense runs/dense --out runs/report-A \
        --reuse runs/rows-A/budget_study.json
    hypersan study budget --budget runs/B --fixed runs/g1 runs/g4 --dense runs/dense --out runs/report-B \
        --reuse runs/report-A/budget_study.json

A family scored once stands in for its checkpoints (which need not be on the machine any more), and a second
training run of the budget model gives the spread that retraining alone causes:

    hypersan study budget --budget runs/C --family-from runs/report-A/budget_study.json --out runs/report-C \
        --twin runs/report-A/budget_study.json

Every budget row records the images its net gets wrong, so that two budgets' nets are also compared image by
image (significant_falls: how many falls are beyond chance).

--guard scores guarded requests instead (PruningEngine.guard: at each budget, the smallest weighed budget whose net
is the most accurate on the validation split); each row records the budget it was served at.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch


from ..data.datasets import load_split
from ..data.subtasks import sample_combinations
from ..io import atomic_write_json, atomic_write_text
from ..prune.engine import PruningEngine
from ..research.bench import dense_forward_seconds
from ..research.report import interp_acc, method_style, pareto_front, save_figure
from ..prune.metrics import subset_accuracy
from ..training.evaluate import plain_accuracy_and_errors, plain_logits
from ..training.train import split_training_data

BUDGETS = (0.08, 0.12, 0.2, 0.3, 0.5)


def subtasks(engine: PruningEngine, per_size: int, seed: int) -> list[tuple]:
    model = engine.model
    out = []
    for size in (2, 3, 5):
        out += [model.classes_of(b) for b in sample_combinations(len(model.basic), size, per_size, seed)]
    return out


def splits(engine: PruningEngine, limit: int) -> dict:
    cfg = engine.model.config
    _, _, vx, vy, _ = split_training_data(cfg)
    tx, ty, _ = load_split(cfg.data, "test")
    return {"val": (vx[:limit] if limit else vx, vy[:limit] if limit else vy),
            "test": (tx[:limit] if limit else tx, ty[:limit] if limit else ty)}


def score(engine: PruningEngine, t: tuple, data: dict, budget=None, seed: int = 0, guard: bool = False) -> dict:
    """One net's row: its MACs, build times and accuracy (and wrong images) on each split. `guard`: the guarded
    request (PruningEngine.guard), whose row records the budget it was served at."""
    t0 = time.perf_counter()
    net = engine.subnet(list(t), fold_bn=True, budget=budget, seed=seed, guard=guard)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.subnet(list(t), fold_bn=True, budget=budget, seed=seed, guard=guard)  # warm: statistics cached now
    warm = time.perf_counter() - t0
    cost = engine.cost(net)
    row = {"classes": list(t), "size": len(t), "seen": engine.model.is_seen(t), "budget": budget,
           "mac_ratio": cost["mac_ratio"], "build_s": build, "build_warm_s": warm}
    if guard:
        row["served_budget"] = net.guard["budget"]
        budget = net.guard["budget"]
    if budget is not None:  # the generator's own net, before the engine cut it to the budget
        with torch.no_grad():
            masks, _ = engine.model.generate(engine.model.select([t]), None, torch.tensor([budget]))
        mac = engine.mac_model
        widths = {k: int(masks[k][0].sum()) for k in mac.sizes}
        row["generated_mac_ratio"] = mac(widths, len(t)) / mac.dense
    for split, (x, y) in data.items():
        row[f"acc_{split}"], row[f"wrong_{split}"] = plain_accuracy_and_errors(net, t, x, y)
    return row


def weights_hash(path: str) -> str:
    """sha256 of a checkpoint's weights: a study's rows may be reused only for the very same weights."""
    h = hashlib.sha256()
    with open(Path(path) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def same_study(prev: dict, tasks: list[tuple], seed: int, limit: int) -> bool:
    """Whether an earlier study (its budget_study.json) scored the same subtasks with the same seed and image
    limit, so that its rows line up with this one's."""
    return (prev.get("subtasks_list") == [list(t) for t in tasks] and prev.get("seed") == seed
            and prev.get("limit") == limit)


def reusable_rows(prev: dict, hashes: dict[str, str], tasks: list[tuple], seed: int, limit: int,
                  guard: bool = False) -> dict[str, list]:
    """The rows of an earlier study (its budget_study.json) that this one may take as they are: those of a
    checkpoint with the same weights (by hash), scored on the same subtasks, seed and image limit, and the budget
    model's only if scored with the same guard setting. Returns {checkpoint name: rows}, with "budget" and "dense"
    for the budget model's and the dense net's rows; an earlier study that differs in subtasks, seed or limit, or
    that predates the hashes, gives nothing."""
    if not same_study(prev, tasks, seed, limit) or "hashes" not in prev:
        return {}
    out = {}
    for name, rows in prev.get("fixed_rows", {}).items():
        if name in hashes and prev["hashes"].get(name) == hashes[name]:
            out[name] = rows
    for key in ("budget", "dense"):
        if key in hashes and prev["hashes"].get(key) == hashes[key]:
            out[key] = prev[f"{key}_rows"]
    if prev.get("guard", False) != guard:
        out.pop("budget", None)
    return out


def family_front(fixed_rows: dict[str, list[dict]], key: str = "acc_val") -> list[str]:
    """The fixed-γ models a user would keep, by name: the Pareto front of the family's mean MACs and mean accuracy
    (`key`, by default on validation, where choices are made). A γ that another beats on average at no more MACs
    is left out, as its user would leave it; no γ is picked per class set with hindsight."""
    means = {n: (statistics.mean(r["mac_ratio"] for r in rows), statistics.mean(r[key] for r in rows))
             for n, rows in fixed_rows.items()}
    kept = set(pareto_front(means.values()))
    return sorted((n for n in means if means[n] in kept), key=lambda n: means[n][0])


def family_at(points: list[tuple[float, float]], mac: float, reach: float) -> float | None:
    """The family's accuracy at `mac` on one class set, from its kept models' (mac, acc) `points`: linear between
    them, and the costliest kept model's past it up to `reach` (the largest MACs of any of the family's models on
    this class set: a budget there buys that model); None outside the family's range."""
    if not points:
        return None
    pts = sorted(points)
    if pts[-1][0] < mac <= reach:
        return pts[-1][1]
    return interp_acc(pts, mac)


def by_class_set(budget_rows: list[dict], key: str) -> dict[tuple, list]:
    """{class set: its rows' `key` at each of BUDGETS, in order}."""
    at = {(tuple(r["classes"]), r["budget"]): r[key] for r in budget_rows}
    return {t: [at[(t, b)] for b in BUDGETS] for t in sorted({t for t, _ in at})}


SLACK = 0.002  # 0.2 pt: the accuracy a step may lose and still count as rising


def falls(accs: list[float], slack: float = SLACK) -> list[bool]:
    """For accuracies at rising budgets (or MACs), whether each step loses more than `slack` (0.2 pt by default):
    the one rule behind every rising share of the study."""
    return [b < a - slack for a, b in zip(accs, accs[1:])]


def fall_p(wrong_before: list[int], wrong_after: list[int]) -> float:
    """One-sided exact McNemar test that a net got worse on the same images: of the images exactly one of the two
    nets gets wrong, the chance that a fair coin puts at least as many on the second net's side as it lost.
    1.0 when it lost none."""
    before, after = set(wrong_before), set(wrong_after)
    lost, gained = len(after - before), len(before - after)
    n = lost + gained
    if lost == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2 ** n


SIGNIFICANT = 0.05  # a fall whose one-sided McNemar p-value is below this is one chance would rarely give


def significant_falls(budget_rows: list[dict], split: str) -> dict | None:
    """Image by image, the steps from one budget to the next where a class set's net got worse beyond chance
    (fall_p < SIGNIFICANT): per step, and the share of class sets with none. Next to the 0.2-pt rule, which
    on a few hundred images counts one image: how many of those falls are more than a coin's. Each step is a
    test of its own (no correction for the 120 of them, which makes falls easier to find, not harder). None for
    rows scored before the errors were recorded."""
    key = f"wrong_{split}"
    if not budget_rows or any(key not in r for r in budget_rows):
        return None
    per_step, changed, clean = [0] * (len(BUDGETS) - 1), [], 0
    wrong_at = by_class_set(budget_rows, key)
    for wrong in wrong_at.values():
        ps = [fall_p(a, b) for a, b in zip(wrong, wrong[1:])]
        per_step = [n + (p < SIGNIFICANT) for n, p in zip(per_step, ps)]
        clean += all(p >= SIGNIFICANT for p in ps)
        changed += [len(set(a) ^ set(b)) for a, b in zip(wrong, wrong[1:])]
    return {"per_step": per_step, "rising_share": clean / len(wrong_at),
            "images_changed_median": statistics.median(changed), "images_changed_max": max(changed)}


def twin_spread(rows: list[dict], twin: list[dict], split: str) -> dict:
    """The same study's budget rows of another training run of the same model (a second seed): per budget, the
    share of class sets whose accuracy differs between the two by more than 0.2 pt. The 0.2-pt rule on steps of
    one model is read against it: where retraining alone moves that many class sets, a step's fall of that size
    says little."""
    key = f"acc_{split}"
    other = {(tuple(r["classes"]), r["budget"]): r[key] for r in twin}
    out = {}
    for b in BUDGETS:
        mine = [r for r in rows if r["budget"] == b and (tuple(r["classes"]), b) in other]
        if not mine:
            raise ValueError(f"the twin study has no rows at budget {b} for these class sets: score both on the "
                             "same subtasks, seed and limit")
        out[str(b)] = sum(abs(r[key] - other[(tuple(r["classes"]), b)]) > SLACK for r in mine) / len(mine)
    return out


def analyse(budget_rows: list[dict], fixed_rows: dict[str, list[dict]], dense_rows: list[dict], split: str,
            images: dict | None = None, front: list[str] | None = None) -> dict:
    """The study's figures on one split. `images` ({class tuple: number of the split's images of that class set})
    adds the share of class sets that rise when a fall of one image is allowed as well (the 0.2-pt criterion
    counts single images on small sets). `front`: the family's kept models (family_front; default: all)."""
    key = f"acc_{split}"
    met = [r["mac_ratio"] <= r["budget"] + 0.005 for r in budget_rows]
    per_budget = {}
    for b in BUDGETS:
        rows = [r for r in budget_rows if r["budget"] == b]
        gaps, at_budget = [], []
        for r in rows:  # the family's front of this subtask, at the budget model's own MAC ratio
            pts = {n: (f["mac_ratio"], f[key]) for n, fam in fixed_rows.items() for f in fam
                   if f["classes"] == r["classes"]}
            kept = [p for n, p in pts.items() if front is None or n in front]
            reach = max((m for m, _ in pts.values()), default=0.0)
            same = family_at(kept, r["mac_ratio"], reach)
            if same is not None:
                gaps.append(100 * (r[key] - same))
            allowed = family_at(kept, b, reach)  # and at the budget asked for: the MACs the user allowed
            if allowed is not None:
                at_budget.append(100 * (r[key] - allowed))
        ref = {tuple(d["classes"]): d[key] for d in dense_rows}
        per_budget[str(b)] = {
            "acc": statistics.mean(r[key] for r in rows), "mac_ratio": statistics.mean(r["mac_ratio"] for r in rows),
            "generated_mac_ratio": statistics.mean(r["generated_mac_ratio"] for r in rows),
            "vs_dense_pt": statistics.mean(100 * (r[key] - ref[tuple(r["classes"])]) for r in rows),
            "vs_family_pt": statistics.mean(gaps) if gaps else None, "family_compared": len(gaps),
            "vs_family_at_budget_pt": statistics.mean(at_budget) if at_budget else None,
            "family_within_0.3pt": (statistics.mean(gaps) >= -0.3) if gaps else None}
    rising = rising_one = 0
    per_step = [0] * (len(BUDGETS) - 1)  # class sets that lose more than 0.2 pt at each step
    accs_at = by_class_set(budget_rows, key)
    names = list(accs_at)
    for t, accs in accs_at.items():
        fell = falls(accs)
        rising += not any(fell)
        per_step = [n + f for n, f in zip(per_step, fell)]
        if images:
            rising_one += not any(falls(accs, max(SLACK, 1 / images[t] + 1e-9)))
    family = {name: {"acc": statistics.mean(r[key] for r in rows),
                     "mac_ratio": statistics.mean(r["mac_ratio"] for r in rows)} for name, rows in fixed_rows.items()}
    # the peer's own monotony: each class set's fixed models, in the order of the family's mean MACs
    order = sorted(family, key=lambda n: family[n]["mac_ratio"])
    fam_rising = None
    if len(order) > 1:
        fam_rising = 0
        for t in names:
            accs = [next(r[key] for r in fixed_rows[n] if tuple(r["classes"]) == t) for n in order]
            fam_rising += not any(falls(accs))
        fam_rising /= len(names)
    served = [r.get("served_budget", r["budget"]) for r in budget_rows]  # a guarded request's own budget
    over = [r["generated_mac_ratio"] / b for r, b in zip(budget_rows, served) if r["generated_mac_ratio"] > b]
    return {"served_smaller": sum(b < r["budget"] for r, b in zip(budget_rows, served)),
            "budget_met": sum(met) / len(met), "cases": len(met), "per_budget": per_budget,
            "generated_over": len(over), "generated_over_max": max(over) if over else None,
            "generated_over_median": statistics.median(over) if over else None,
            "rising_share": rising / len(names), "falls_per_step": per_step, "family": family,
            "family_rising_share": fam_rising, "significant_falls": significant_falls(budget_rows, split),
            **({"rising_one_image_share": rising_one / len(names),
                "images_median": statistics.median(images[t] for t in names)} if images else {})}


def plot(out: Path, result: dict, split: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = result["analysis"][split]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    fam = sorted(a["family"].items(), key=lambda kv: kv[1]["mac_ratio"])
    ax.plot([v["mac_ratio"] for _, v in fam], [100 * v["acc"] for _, v in fam], linewidth=1.2,
            **{**method_style("hypernet"), "label": "fixed-γ hypernetworks (one model per γ)"})
    for name, v in fam:
        ax.annotate(name.split("/")[-1], (v["mac_ratio"], 100 * v["acc"]), fontsize=7, xytext=(4, -10),
                    textcoords="offset points")
    pb = sorted(a["per_budget"].items(), key=lambda kv: float(kv[0]))
    ax.plot([v["mac_ratio"] for _, v in pb], [100 * v["acc"] for _, v in pb], linewidth=1.2,
            **{**method_style("pertask"), "label": "one budget-conditioned model", "marker": "s"})
    for b, v in pb:
        ax.annotate(f"b={b}", (v["mac_ratio"], 100 * v["acc"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("MAC ratio to the dense net (log scale), mean over 30 subtasks")
    ax.set_ylabel(f"{split} accuracy on the subtask's classes (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, out / "budget_front.png")
    plt.close(fig)
    return path


def report(result: dict) -> str:
    lines = ["# Budget-conditioned model against fixed-γ models", "",
             f"Command: `{result['command']}`", "",
             f"Subtasks: {result['subtasks']} (pairs, triples, 5-class sets); budgets {list(BUDGETS)}.", ""]
    for split in ("val", "test"):
        a = result["analysis"][split]
        lines += [f"## {split}", "",
                  f"- budget met (MAC ratio ≤ b + 0.005): {100 * a['budget_met']:.1f}% of {a['cases']} cases",
                  f"- accuracy does not fall by more than 0.2 pt from one budget to the next: "
                  f"{100 * a['rising_share']:.0f}% of subtasks"
                  + ("" if "rising_one_image_share" not in a else
                     f" ({100 * a['rising_one_image_share']:.0f}% when a fall of one image is allowed too; median "
                     f"{a['images_median']:.0f} images per class set)"),
                  "- class sets that lose more than 0.2 pt, at each step "
                  + ", ".join(f"{b0}→{b1}: {n}" for b0, b1, n in zip(BUDGETS, BUDGETS[1:], a["falls_per_step"])),
                  *([] if a.get("significant_falls") is None else
                    [f"- image by image, steps where a class set's net got worse beyond chance (one-sided McNemar, "
                     f"p < {SIGNIFICANT}): " + ", ".join(f"{b0}→{b1}: {n}" for b0, b1, n in zip(
                         BUDGETS, BUDGETS[1:], a["significant_falls"]["per_step"]))
                     + f"; class sets with none: {100 * a['significant_falls']['rising_share']:.0f}% (a step turns "
                     f"{a['significant_falls']['images_changed_median']:g} image(s) from right to wrong or back at "
                     f"the median, {a['significant_falls']['images_changed_max']} at most)"]),
                  *([] if "twin" not in result else
                    [f"- another training run of the model ({result['twin']['study']}) differs by more than 0.2 pt "
                     "on " + ", ".join(f"{100 * v:.0f}%" for v in result["twin"][split].values())
                     + " of the class sets at the budgets " + ", ".join(result["twin"][split])]),
                  *([] if a.get("family_rising_share") is None else
                    [f"- the same for the fixed-γ family, its models in the order of their mean MACs "
                     f"({len(a['family'])} models, {len(a['family']) - 1} steps): "
                     f"{100 * a['family_rising_share']:.0f}% of subtasks"]),
                  *([] if not result.get("guard") else
                    [f"- guarded requests: {a['served_smaller']} of {a['cases']} were served the net of a smaller "
                     "budget (the smallest weighed budget whose net gets the most validation images right)"]),
                  f"- the generator's own net was over budget in {a['generated_over']} of {a['cases']} cases"
                  + ("" if not a["generated_over"] else f" (median {a['generated_over_median']:.2f}x, at most "
                     f"{a['generated_over_max']:.2f}x the budget) and was cut to fit"), "",
                  "| budget | generator's MAC ratio | after the cut | acc | vs dense (pt) | "
                  "vs fixed-γ front at the same MACs (pt) | compared | vs the front at the budget's MACs (pt) |",
                  "|---|---|---|---|---|---|---|---|"]
        for b, v in a["per_budget"].items():
            fam = "—" if v["vs_family_pt"] is None else f"{v['vs_family_pt']:+.2f}"
            at_b = "—" if v.get("vs_family_at_budget_pt") is None else f"{v['vs_family_at_budget_pt']:+.2f}"
            lines.append(f"| {b} | {v['generated_mac_ratio']:.3f} | {v['mac_ratio']:.3f} | {100 * v['acc']:.2f}% | "
                         f"{v['vs_dense_pt']:+.2f} | {fam} | "
                         f"{v['family_compared']}/{len(result['subtasks_list'])} | {at_b} |")
        kept = result.get("family_front")
        lines += ["", "| fixed model | mean MAC ratio | acc | on the front (val) |", "|---|---|---|---|"]
        for name, v in sorted(a["family"].items(), key=lambda kv: kv[1]["mac_ratio"]):
            on = "yes" if kept is None or name in kept else "no: beaten at no more MACs"
            lines.append(f"| {name} | {v['mac_ratio']:.3f} | {100 * v['acc']:.2f}% | {on} |")
        lines.append("")
    c = result["costs"]
    lines += ["## Build cost", "",
              f"- median cold build of a budgeted subnet (masks, cut, BN calibration, surgery): {c['build_s']:.3f} s",
              f"- median warm build (statistics cached: masks, cut, surgery, BN folding): {c['build_warm_s']:.4f} s",
              f"- one dense batch-256 forward: {c['dense_forward_s']:.4f} s",
              f"- cuts: {c['cuts']['cut']} of {c['cuts']['requests']} budgeted nets were over budget as generated; "
              f"{c['cuts']['channels']} channels dropped in all", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hypersan study budget", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", required=True, help="the budget-conditioned checkpoint")
    p.add_argument("--fixed", nargs="*", default=[],
                   help="fixed-gamma checkpoints of the same backbone (none: the budget model and the dense net "
                        "only, and no comparison with a family; a later study can --reuse those rows)")
    p.add_argument("--dense", help="the separately trained dense net (the reference)")
    p.add_argument("--out", required=True)
    p.add_argument("--per-size", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="images per split (0: all): for smoke runs")
    p.add_argument("--reuse", nargs="+", default=[],
                   help="earlier studies' budget_study.json files: their rows of checkpoints with the same weights, "
                        "subtasks, seed and limit are taken as they are, not scored again (the first file wins)")
    p.add_argument("--family-from", metavar="STUDY_JSON",
                   help="an earlier study's budget_study.json whose fixed-γ family and dense net (rows, checkpoint "
                        "paths and weight hashes) this study takes instead of --fixed and --dense, whose checkpoints "
                        "need not be here; same subtasks, seed and limit")
    p.add_argument("--guard", action="store_true",
                   help="score guarded requests (PruningEngine.guard): at each budget, the net of the smallest "
                        "budget up to it whose net is the most accurate on the validation split")
    p.add_argument("--twin", metavar="STUDY_JSON",
                   help="the study of another training run of the same budget model (a second seed), same "
                        "subtasks, seed and limit: adds how many class sets the two differ on by > 0.2 pt")
    args = p.parse_args(argv)
    if args.family_from and (args.fixed or args.dense):
        p.error("--family-from takes the family and the dense net from an earlier study: leave out --fixed and "
                "--dense")
    if not args.family_from and not args.dense:
        p.error("give the dense reference: --dense CHECKPOINT, or --family-from an earlier study")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    budget = PruningEngine.from_pretrained(args.budget, seed=args.seed)
    data = splits(budget, args.limit)
    tasks = subtasks(budget, args.per_size, args.seed)
    say(f"{len(tasks)} subtasks x {len(BUDGETS)} budgets; {len(data['val'][1])} val and {len(data['test'][1])} "
        "test images")
    family = None
    if args.family_from:
        family = json.loads(Path(args.family_from).read_text())
        if (not same_study(family, tasks, args.seed, args.limit) or "hashes" not in family
                or not family.get("fixed_rows")):
            p.error(f"{args.family_from}: no family rows with weight hashes for these subtasks, seed {args.seed} and "
                    f"limit {args.limit}; score the family with --fixed and --dense instead")
    twin = None
    if args.twin:
        twin = json.loads(Path(args.twin).read_text())
        if not same_study(twin, tasks, args.seed, args.limit):
            p.error(f"{args.twin}: another study's subtasks, seed or limit; score the twin with --seed {args.seed} "
                    f"--limit {args.limit}")
    names = [Path(path).name for path in args.fixed]
    if len(set(names)) != len(names) or {"budget", "dense"} & set(names):
        p.error(f"--fixed checkpoints need distinct folder names other than 'budget' and 'dense' (got {names})")
    hashes = {**{Path(path).name: weights_hash(path) for path in args.fixed}, "budget": weights_hash(args.budget)}
    if family is not None:
        hashes.update({k: v for k, v in family["hashes"].items() if k != "budget"})
    else:
        hashes["dense"] = weights_hash(args.dense)
    reused, costs = {}, None
    for path in args.reuse:
        prev = json.loads(Path(path).read_text())
        got = {k: v for k, v in reusable_rows(prev, hashes, tasks, args.seed, args.limit,
                                                           args.guard).items() if k not in reused}
        if "budget" in got:
            costs = prev["costs"]
        reused.update(got)
        say(f"reused from {path}: {', '.join(sorted(got)) or 'nothing'}")
    # the images each accuracy is taken on, selected as plain_accuracy selects them
    images = {split: {t: int(torch.isin(y, torch.tensor(t)).sum()) for t in tasks} for split, (_, y) in data.items()}
    if "budget" in reused:
        budget_rows = reused["budget"]
    else:
        budget_rows = []
        for i, t in enumerate(tasks):
            for b in BUDGETS:
                budget_rows.append(score(budget, t, data, b, args.seed, args.guard))
            say(f"[{i + 1}/{len(tasks)}] {t}: " + ", ".join(f"{r['budget']}: {r['mac_ratio']:.3f}/{r['acc_val']:.4f}"
                                                             for r in budget_rows[-len(BUDGETS):]))
    fixed_rows = {} if family is None else family["fixed_rows"]
    for path, name in zip(args.fixed, names):
        if name in reused:
            fixed_rows[name] = reused[name]
        else:
            eng = PruningEngine.from_pretrained(path, seed=args.seed)
            fixed_rows[name] = [score(eng, t, data, None, args.seed) for t in tasks]
        say(f"{name}: mean MAC ratio {statistics.mean(r['mac_ratio'] for r in fixed_rows[name]):.3f}")
    if family is not None:
        dense_rows = family["dense_rows"]
    elif "dense" in reused:
        dense_rows = reused["dense"]
    else:
        dense = PruningEngine.from_pretrained(args.dense, seed=args.seed)
        net = dense.subnet(None, fold_bn=True)
        logits = {split: plain_logits(net, x) for split, (x, _) in data.items()}
        dense_rows = [{"classes": list(t), **{f"acc_{split}": subset_accuracy(logits[split], y, list(t))
                                              for split, (_, y) in data.items()}} for t in tasks]
    front = family_front(fixed_rows) if fixed_rows else None
    result = {"command": "hypersan study budget " + " ".join(argv if argv is not None else sys.argv[1:]),
              "checkpoints": {"budget": args.budget, "fixed": list(args.fixed), "dense": args.dense}
              if family is None else {**family["checkpoints"], "budget": args.budget},
              **({} if family is None else {"family_from": args.family_from}),
              "subtasks": len(tasks), "subtasks_list": [list(t) for t in tasks], "budgets": list(BUDGETS),
              "seed": args.seed, "limit": args.limit, "guard": args.guard, "hashes": hashes, "reused": sorted(reused),
              "budget_rows": budget_rows, "fixed_rows": fixed_rows, "dense_rows": dense_rows,
              "family_front": front,
              "analysis": {s: analyse(budget_rows, fixed_rows, dense_rows, s, images[s], front)
                           for s in ("val", "test")},
              **({} if twin is None else {"twin": {"study": args.twin, **{
                  s: twin_spread(budget_rows, twin["budget_rows"], s) for s in ("val", "test")}}}),
              # reused budget rows bring the costs measured with them (build and dense forward in one run)
              "costs": costs if costs is not None else {
                  "build_s": statistics.median(r["build_s"] for r in budget_rows),
                  "build_warm_s": statistics.median(r["build_warm_s"] for r in budget_rows),
                  "dense_forward_s": dense_forward_seconds(budget), "cuts": dict(budget.budget_cuts)}}
    atomic_write_json(out / "budget_study.json", result)
    atomic_write_text(out / "budget_study.md", report(result))
    try:
        plot(out, result, "test")
    except ImportError:
        pass
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
