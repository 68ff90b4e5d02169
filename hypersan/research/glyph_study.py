"""The adaptivity question on the glyph set (docs/ABLATIONS.md, "Glyphs"): do subtasks of a many-class task get
nets much smaller than the class-agnostic nets of the same accuracy?

    hypersan sweep configs/sweeps/glyphs.toml                                  # the nets (about 2 h on 2 cores)
    hypersan study glyphs --runs runs/glyph-sweep --out runs/glyph-study [--peer-steps 2000]

Every run folder of the sweep that is finished (`done`) takes part:
- `dense-w2`, `dense-w4`, `dense-w8`, `dense-w16`: dense nets at 1/8, 1/4, 1/2 and full width (the width check,
  and points of the class-agnostic curve);
- `agnostic-g*` (when run): all-classes nets pruned while training (the mask of the all-classes request only);
- `hypernet-g*`: the hypernetwork at gamma *: its own net per subtask (adaptive), and its all-classes net
  (another class-agnostic point);
- `budget*`: a budget-conditioned model (configs/glyphs_budget.toml), scored at every budget of BUDGETS: its own
  net per subtask, and its all-classes net at the same budget (a class-agnostic net pruned in training, added to
  the curve). Its report chooses, per subtask group, the budget whose nets need the fewest MACs against the curve
  on validation.

Steps, each saved in OUT as JSON and skipped when already there:
1. `subtasks.json`: the named groups (grounded through the vocabulary: digits, capitals, small letters, vowels,
   Greek, Cyrillic, capitals and digits), 20 random pairs, the 20 pairs the full-width dense net confuses most
   on validation, 20 random 5-class sets, 10 random 20-class sets, and all classes.
2. `net-NAME.json`: every subtask's accuracy and MAC ratio (against the full-width dense net) on validation and
   test, for every net: class-agnostic nets are one body with the head cut to the subtask; a hypernetwork's
   adaptive nets are built per subtask as `hypersan eval` builds them.
3. `peer.json` (with --peer-steps > 0): Torch-Pruning per subset (Taylor importance on the subset's loss, global,
   iterative; as in the Fashion-MNIST ablation) on the full-width dense net at the MACs of the selected
   hypernetwork's net for the same subtask, then fine-tuned for --peer-steps steps: digits, the two hardest
   pairs and one 20-class set (the CPU budget).
4. `peer-mR.json` (with --peer-macs R,...): the same peer at MAC ratio R on the same subtasks, reported against
   the budget-conditioned models at budget R. With --peer-base NAME the peer prunes that dense net instead of
   dense-w16, and its files are named `peer-NAME.json`, `peer-mR-NAME.json`.
5. `specialists-eE.json` (with --specialists E): the specialist ceiling, nets trained from scratch on the digits
   and the two hardest pairs alone, at two small widths, for E epochs over those images.
6. `report.md`: the width check, the confusions, the selection on validation, and per subtask group the MACs the
   class-agnostic curve needs for the adaptive nets' accuracy.

With --nets-from DIR, the nets an earlier study scored on the same subtasks join the report under their names
(an earlier curve, or an earlier recipe's hypernetwork), where no finished run here has that name.

Choices (the gamma to ship) read the validation split only; the test split gives the figures.
"""
from __future__ import annotations

import argparse
import copy
import random
import re
import statistics
import sys
import time
from pathlib import Path

from .sweep import finished_runs

NAMED = {"digits": "digits", "capitals": "capital letters", "small letters": "small letters", "vowels": "vowels",
         "Greek": "Greek letters", "Cyrillic": "Cyrillic letters", "capitals + digits": "capital letters and digits"}
SAMPLED = (("random pairs", 2, 20), ("random 5-class sets", 5, 20), ("random 20-class sets", 20, 10))
HARD_PAIRS = 20
SELECT_WITHIN_PT = 1.0  # ship the largest gamma whose mean val accuracy is within this of the dense net's
BUDGETS = (0.03, 0.05, 0.08, 0.12, 0.2, 0.3, 0.5)  # a budget-conditioned model is scored at each of these


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def gamma_of(name: str) -> tuple[float, str]:
    """A hypernetwork run's sort key: its gamma (hypernet-g1, hypernet-g1-lr02: 1), then its name."""
    m = re.match(r"[a-z]+-g([0-9.]+)(?:-|$)", name)
    if m is None:
        raise ValueError(f"{name}: a hypernetwork run is named hypernet-g<gamma>[-variant]")
    return float(m[1]), name


def adaptive_names(nets: dict) -> list[str]:
    """The nets held against the curve, by gamma: every scored net with adaptive rows, the hypernetwork runs and any
    other (the shipped model read with --nets-from, say). Only the runs are candidates for selection."""
    return sorted((n for n, res in nets.items() if "adaptive" in res), key=gamma_of)


def splits(cfg, limit: int = 0):
    from ..data.datasets import load_dataset
    from ..training.train import split_training_data

    _, _, vx, vy, _ = split_training_data(cfg)
    tx, ty, _ = load_dataset(cfg.data.dataset, "test", cfg.data.data_dir or None)
    if limit:  # a smoke run: a seeded sample of each split
        import torch

        pick = {n: torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:limit].sort().values
                for n, y in (("val", vy), ("test", ty))}
        vx, vy, tx, ty = vx[pick["val"]], vy[pick["val"]], tx[pick["test"]], ty[pick["test"]]
    return {"val": (vx, vy), "test": (tx, ty)}


def choose_subtasks(engine, val, seed: int = 0) -> list[dict]:
    """The study's subtasks, each {"group", "name", "indices"}; the hardest pairs from the dense net on val."""
    from ..research.report import hardest_pairs
    from ..training.evaluate import plain_logits

    classes = engine.model.classes
    k = len(classes)
    out = []
    for group, request in NAMED.items():
        t, _ = engine.resolve(request)
        out.append({"group": group, "name": request, "indices": sorted(t)})
    rng = random.Random(seed)
    for group, size, n in SAMPLED:
        seen: set = set()
        while len(seen) < n:
            seen.add(tuple(sorted(rng.sample(range(k), size))))
        out += [{"group": group, "name": ", ".join(classes[i] for i in t), "indices": list(t)} for t in sorted(seen)]
    x, y = val
    pred = plain_logits(engine.subnet(None, fold_bn=True), x).argmax(1)
    out += [{"group": "hardest pairs", "name": f"{classes[a]}, {classes[b]}", "indices": [a, b]}
            for a, b in hardest_pairs(pred.tolist(), y.tolist(), HARD_PAIRS)]
    out.append({"group": "all classes", "name": "all classes", "indices": list(range(k))})
    return out


def score_body(net, data: dict, subtasks: list[dict], ref_macs: int, shape) -> dict:
    """A class-agnostic net: one body, the head cut to each subtask (its logits restricted to the subtask)."""
    from ..research.ablate import cut_head
    from ..training.evaluate import plain_logits
    from ..prune.metrics import count_macs, subset_accuracy

    out = {}
    for split, (x, y) in data.items():
        logits = plain_logits(net, x)
        rows = []
        for s in subtasks:  # every subtask has two classes or more: |T|-way accuracy on its own images
            t = s["indices"]
            rows.append({"acc": subset_accuracy(logits, y, t),
                         "mac_ratio": count_macs(cut_head(net, t), shape) / ref_macs})
        out[split] = {"rows": rows, "top1": float((logits.argmax(1) == y).float().mean()),
                      "pred": logits.argmax(1).tolist()}
    return out


def score_adaptive(engine, data: dict, subtasks: list[dict], ref_macs: int, seed: int = 0,
                   budget: float | None = None) -> dict:
    """A hypernetwork's own net per subtask, built as `hypersan eval` builds it (statistics calibrated per class
    set), scored on the subtask's own images: its accuracy (argmax over the subtask, as `hypersan eval`'s acc
    for two classes and more) needs no other image. budget: a budget-conditioned model's net at that budget."""
    from ..training.evaluate import plain_accuracy

    out = {split: {"rows": []} for split in data}
    t0 = time.perf_counter()
    dense_macs = engine.dense_cost()[0]
    for s in subtasks:
        t = tuple(s["indices"])
        net = engine.subnet(t, fold_bn=True, seed=seed, budget=budget)
        cost = engine.cost(net)
        for split, (x, y) in data.items():
            out[split]["rows"].append({"acc": plain_accuracy(net, t, x, y),
                                       "mac_ratio": cost["mac_ratio"] * dense_macs / ref_macs,
                                       "seen": engine.model.is_seen(t)})
    log(f"  {len(subtasks)} subtasks{'' if budget is None else f' at budget {budget:g}'} in "
        f"{time.perf_counter() - t0:.0f} s")
    return out


def score_budgeted(engine, data: dict, subtasks: list[dict], ref_macs: int, shape, seed: int = 0) -> dict:
    """A budget-conditioned model at every budget of BUDGETS: its own net per subtask (adaptive), and its
    all-classes net at the same budget with the head cut to each subtask (a class-agnostic net pruned in
    training, a point of the curve)."""
    every = tuple(range(len(engine.model.classes)))
    out = {}
    for b in BUDGETS:
        body = engine.subnet(every, fold_bn=True, seed=seed, budget=b)
        out[f"{b:g}"] = {"agnostic": score_body(body, data, subtasks, ref_macs, shape),
                         "adaptive": score_adaptive(engine, data, subtasks, ref_macs, seed, budget=b)}
    return out


def group_means(rows: list[dict], subtasks: list[dict]) -> dict[str, tuple[float, float]]:
    """{group: (mean mac_ratio, mean acc)} over the group's subtasks."""
    by: dict[str, list[dict]] = {}
    for s, r in zip(subtasks, rows):
        by.setdefault(s["group"], []).append(r)
    return {g: (statistics.fmean(r["mac_ratio"] for r in rs), statistics.fmean(r["acc"] for r in rs))
            for g, rs in by.items()}


def select_gamma(nets: dict, split: str = "val") -> tuple[str | None, dict]:
    """The largest-gamma hypernetwork whose mean accuracy over the subtasks is within SELECT_WITHIN_PT of the
    full-width dense net's on the same subtasks (on validation); when none is, the most accurate one."""
    ref = statistics.fmean(r["acc"] for r in nets["dense-w16"]["agnostic"][split]["rows"])
    gaps = {}
    for name, res in nets.items():
        if name.startswith("hypernet-g"):
            gaps[name] = 100 * (statistics.fmean(r["acc"] for r in res["adaptive"][split]["rows"]) - ref)
    ok = [n for n, g in gaps.items() if g >= -SELECT_WITHIN_PT]
    if ok:
        return max(ok, key=lambda n: (gamma_of(n)[0], gaps[n])), gaps  # equal gammas: the more accurate
    # none is that close: the most accurate one (the report says the rule's bound was missed)
    return (max(gaps, key=gaps.get) if gaps else None), gaps


PEER_PAIRS = 2  # the hardest pairs the peer covers by default (--peer-pairs)


def peer_picks(subtasks: list[dict], pairs: int = PEER_PAIRS) -> list[int]:
    """The peer's subtasks (the CPU budget): digits, the `pairs` hardest pairs and one 20-class set."""
    picks = [i for i, s in enumerate(subtasks) if s["group"] == "digits"]
    picks += [i for i, s in enumerate(subtasks) if s["group"] == "hardest pairs"][:pairs]
    picks += [i for i, s in enumerate(subtasks) if s["group"] == "random 20-class sets"][:1]
    return picks


def run_peer(dense, targets: dict[int, float], subtasks: list[dict], data: dict, train: tuple, steps: int,
             ref_macs: int, seed: int = 0) -> list[dict]:
    """Torch-Pruning per subset on the full-width dense net, then fine-tuned: for each subtask index in `targets`,
    at that MAC ratio (to the full-width dense net)."""
    from ..research import baselines
    from ..research.ablate import plain_cost
    from ..prune.surgery import prune_backbone

    tx, ty = train
    stats = dense.statistics(None, seed=seed)
    dense_macs = plain_cost(dense, None)["dense_macs"]
    ft_args = peer_objective(dense, seed)
    out = []
    for i, ratio in targets.items():
        s, target = subtasks[i], ratio * ref_macs / dense_macs
        t = tuple(s["indices"])
        log(f"  peer: {s['name'][:60]} at MAC ratio {target:.3f}")
        t0 = time.perf_counter()
        base = prune_backbone(dense.model.backbone, None, t, bn_stats=stats, fold_bn=False,
                              input_shape=dense.model.info.input_shape)
        net = baselines.subset_prune(base, t, tx, ty, target, dense_macs, stages=5, stage_steps=50,
                                     importance="taylor", max_pruning_ratio=0.95, **ft_args)
        prune_s = time.perf_counter() - t0
        for n_steps in (0, steps):
            row, _ = tuned_row(dense, net, i, s, n_steps, prune_s, train, data, ref_macs, seed)
            out.append(dict(row, adaptive_mac_ratio=ratio))
            log(f"    {n_steps} steps: test acc {row['test_acc']:.4f} at {row['mac_ratio']:.3f} "
                f"({row['build_s']:.0f} s)")
    return out


def tuned_row(dense, net, i: int, s: dict, n_steps: int, base_s: float, train: tuple, data: dict, ref_macs: int,
              seed: int = 0) -> tuple[dict, dict | None]:
    """One fine-tuned arm of a class set, the peer's and the hypernetwork's alike: a copy of the plain `net`
    fine-tuned `n_steps` with the peer's objective (none at 0), BN recalibrated on the dense net's calibration
    stream, scored on every split. Returns (row, the fine-tune's record or None); `build_s` adds the copy's
    seconds to `base_s`, the seconds the net took to build."""
    import torch

    from ..research import baselines
    from ..research.ablate import plain_cost
    from ..training.evaluate import plain_accuracy

    tx, ty = train
    t = tuple(s["indices"])
    m = copy.deepcopy(net)
    t1 = time.perf_counter()
    fit = baselines.finetune(m, tx, ty, t, steps=n_steps, **peer_objective(dense, seed)) if n_steps else None
    baselines.recalibrate_bn(m, dense.calib_spec(seed).stream(tx, torch.device("cpu")))
    row = {"subtask": i, "group": s["group"], "name": s["name"], "finetune_steps": n_steps,
           "mac_ratio": plain_cost(dense, m)["macs"] / ref_macs, "build_s": base_s + time.perf_counter() - t1}
    for split, (x, y) in data.items():
        row[f"{split}_acc"] = plain_accuracy(m.eval(), t, x, y)
    return row, fit


def peer_objective(dense, seed: int = 0) -> dict:
    """The peer's fine-tuning settings (baselines.finetune): every net fine-tuned in the study, the peer's and the
    hypernetwork's alike, trains with exactly these."""
    from ..data.datasets import Augmentation

    cfg = dense.model.config
    return dict(lr=0.01, seed=seed, beta=cfg.loss.beta, augmentation=Augmentation.of(cfg.data))


def run_hypernet_ft(engine, dense, picks: list[int], subtasks: list[dict], data: dict, train: tuple,
                    steps: list[int], ref_macs: int, seed: int = 0) -> list[dict]:
    """The `hypernet_ft` arm: the hypernetwork's own net for each picked class set (a cold build: masks, BN
    calibration, surgery), then fine-tuned for each of `steps` SGD steps with exactly the peer's objective
    (peer_objective), BN recalibrated as the peer's is. `build_s` is the whole per-subset cost: the build and
    the fine-tune."""
    out = []
    for i in picks:
        s = subtasks[i]
        t0 = time.perf_counter()
        net = engine.subnet(tuple(s["indices"]), fold_bn=False, seed=seed)
        built = time.perf_counter() - t0
        for n_steps in steps:
            row, fit = tuned_row(dense, net, i, s, n_steps, built, train, data, ref_macs, seed)
            row.update(finetune_s=fit["wall_s"] if fit else 0.0, cold_build_s=built)
            out.append(row)
            log(f"  hypernet_ft: {s['name'][:50]}, {n_steps} steps: test acc {row['test_acc']:.4f} at "
                f"{row['mac_ratio']:.3f} ({row['build_s']:.0f} s)")
    return out


SPECIALIST_SCALES = (0.25, 0.5)  # the specialists' widths: these fractions of the full-width dense net's


def specialist_picks(subtasks: list[dict]) -> list[int]:
    """The specialist ceiling's class sets: the digits and the two hardest pairs."""
    return [i for i in peer_picks(subtasks) if subtasks[i]["group"] != "random 20-class sets"]


def run_specialists(dense, picks: list[int], subtasks: list[dict], data: dict, train: tuple, epochs: int,
                    ref_macs: int, seed: int = 0, scales=SPECIALIST_SCALES) -> list[dict]:
    """The specialist ceiling: for each picked class set, plain nets of the dense net's architecture at each width
    scale, trained from scratch on that class set's images alone (softmax cross-entropy over its classes, the
    dense net's augmentation, optimizer and learning rate) for `epochs` passes over those images. How much room
    a class set leaves for a specialized net: its accuracy and MACs beside the adaptive nets'."""
    import torch
    import torch.nn.functional as F

    from ..data.datasets import Augmentation, to_float
    from ..nn.subnet import build_plain
    from ..prune.metrics import count_macs, plain_accuracy
    from ..training.optim import sgd_steps

    cfg = dense.model.config
    augmentation = Augmentation.of(cfg.data)
    arch = dense.model.backbone.arch
    shape = tuple(dense.model.info.input_shape)
    tx, ty = train
    out = []
    for i in picks:
        s = subtasks[i]
        t = sorted(s["indices"])
        keep = torch.isin(ty, torch.tensor(t))
        images, labels = tx[keep], torch.searchsorted(torch.tensor(t), ty[keep])
        per_epoch = max(1, -(-len(labels) // cfg.train.batch_size))
        for scale in scales:
            widths = {k: max(1, round(v * scale)) for k, v in arch["site_widths"].items()}
            torch.manual_seed(seed)
            net = build_plain(dict(arch, site_widths=widths, num_classes=len(t)), [str(c) for c in t])

            def batch_loss(idx, gen, net=net, images=images, labels=labels):
                xb = augmentation(to_float(images[idx]), gen)
                return F.cross_entropy(net(xb), labels[idx])

            fit = sgd_steps(net, batch_loss, len(labels), epochs * per_epoch, cfg.train.lr, cfg.train.batch_size, seed,
                            momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay, warmup=per_epoch // 2)
            row = {"subtask": i, "group": s["group"], "name": s["name"], "scale": scale, "widths": widths,
                   "epochs": epochs, "images": len(labels), "train_s": fit["wall_s"],
                   "mac_ratio": count_macs(net.eval(), shape) / ref_macs}
            for split, (x, y) in data.items():
                row[f"{split}_acc"] = plain_accuracy(net, t, x, y)
            out.append(row)
            log(f"  specialist: {s['name'][:40]} at {scale:g} width: test acc {row['test_acc']:.4f}, MAC ratio "
                f"{row['mac_ratio']:.4f} ({fit['wall_s']:.0f} s)")
    return out


def curve_points(nets: dict, split: str) -> dict[str, dict[str, tuple[float, float]]]:
    """{net: {group: (mac, acc)}} of every class-agnostic net: each run's unmasked or all-classes net, and a
    budget-conditioned model's all-classes net at each budget."""
    out = {n: r["agnostic"][split]["rows"] for n, r in nets.items()}
    for n, r in nets.items():
        for b, res in r.get("budgets", {}).items():
            out[f"{n}@{b}"] = res["agnostic"][split]["rows"]
    return out


def _fmt(v, fmt: str, below: bool = False) -> str:
    return "—" if v is None else ("≥ " if below else "") + format(v, fmt)


def budget_report(nets: dict, subtasks: list[dict], fixed: dict, peer_base: str = "dense-w16") -> list[str]:
    """The budget-conditioned models' sections: per group and budget against the class-agnostic curve, the budget
    chosen per group on validation, within the model, and against the peer at fixed MACs."""
    from ..research.report import equal_accuracy

    lines = []
    groups = list(dict.fromkeys(s["group"] for s in subtasks))
    # every class-agnostic net's group means, per split: the curve each budget model is read against
    agns = {split: {n: group_means(rows, subtasks) for n, rows in curve_points(nets, split).items()}
            for split in ("val", "test")}
    for name in sorted(n for n in nets if n.startswith("budget")):
        res = nets[name]["budgets"]
        best: dict[str, tuple[float, str]] = {}
        for split in ("val", "test"):
            agn = agns[split]
            lines += ["", f"## {name}: its nets per budget against the class-agnostic curve ({split})", "",
                      "One budget-conditioned model, its own net per subtask at each budget (the engine's exact "
                      "budget rule), against the curve of every class-agnostic net (as above, with this model's "
                      "all-classes net at every budget added). `≥`: the net is less accurate than the curve's "
                      "cheapest net, so the ratio is a lower bound.", "",
                      "| group | budget | MAC ratio | acc | curve MACs at that acc | MACs / curve | "
                      "MACs / curve (linear) | acc − curve (pt) |", "|---|---|---|---|---|---|---|---|"]
            for g in groups:
                curve = [agn[n][g] for n in agn]
                for b, r in res.items():
                    mac, acc = group_means(r["adaptive"][split]["rows"], subtasks)[g]
                    e = equal_accuracy(mac, acc, curve)
                    lines.append(f"| {g} | {b} | {mac:.4f} | {acc:.4f} | {_fmt(e['curve_mac_ratio'], '.4f')} | "
                                 f"{_fmt(e['mac_vs_curve'], '.2f', e['below'])} | "
                                 f"{_fmt(e['mac_vs_curve_linear'], '.2f', e['below'])} | {_fmt(e['acc_gap_pt'], '+.2f')} |")
                    if split == "val" and e["mac_vs_curve"] is not None and not e["below"]:
                        if g not in best or e["mac_vs_curve"] < best[g][0]:
                            best[g] = (e["mac_vs_curve"], b)
        agn = agns["test"]
        lines += ["", f"## {name}: the budget chosen per group on validation (test figures)", "",
                  "Per group, the budget whose nets need the fewest MACs against the curve on validation (nets "
                  "under the curve's cheapest point left out); its test figures.", "",
                  "| group | budget | val MACs / curve | test MAC ratio | test acc | test MACs / curve | "
                  "test acc − curve (pt) |", "|---|---|---|---|---|---|---|"]
        for g in groups:
            if g not in best:
                lines.append(f"| {g} | — | — | — | — | — | — |")
                continue
            ratio, b = best[g]
            mac, acc = group_means(res[b]["adaptive"]["test"]["rows"], subtasks)[g]
            e = equal_accuracy(mac, acc, [agn[n][g] for n in agn])
            lines.append(f"| {g} | {b} | {ratio:.2f} | {mac:.4f} | {acc:.4f} | "
                         f"{_fmt(e['mac_vs_curve'], '.2f', e['below'])} | {_fmt(e['acc_gap_pt'], '+.2f')} |")
        lines += ["", f"## {name}: subtask nets against its own all-classes net at the same budget (test)", "",
                  "| group | budget | subtask nets: MAC ratio | acc | all-classes net: MAC ratio | acc | acc gap (pt) |",
                  "|---|---|---|---|---|---|---|"]
        for g in groups:
            for b, r in res.items():
                mac, acc = group_means(r["adaptive"]["test"]["rows"], subtasks)[g]
                amac, aacc = group_means(r["agnostic"]["test"]["rows"], subtasks)[g]
                lines.append(f"| {g} | {b} | {mac:.4f} | {acc:.4f} | {amac:.4f} | {aacc:.4f} | "
                             f"{100 * (acc - aacc):+.2f} |")
        for ratio, peer in sorted(fixed.items()):
            if f"{ratio:g}" not in res:
                continue
            rows = res[f"{ratio:g}"]["adaptive"]
            lines += ["", f"## {name} at budget {ratio:g} against Torch-Pruning per subset at MAC ratio {ratio:g}",
                      "", f"The peer prunes {peer_base}.", "",
                      "| subtask | group | fine-tune steps | MAC ratio (peer / adaptive) | peer val | peer test | "
                      "adaptive val | adaptive test | adaptive − peer, test (pt) | peer build (s) |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for p in peer:
                a = {split: rows[split]["rows"][p["subtask"]] for split in ("val", "test")}
                lines.append(f"| {p['name'][:50]} | {p['group']} | {p['finetune_steps']} | {p['mac_ratio']:.4f} / "
                             f"{a['test']['mac_ratio']:.4f} | {p['val_acc']:.4f} | {p['test_acc']:.4f} | "
                             f"{a['val']['acc']:.4f} | {a['test']['acc']:.4f} | "
                             f"{100 * (a['test']['acc'] - p['test_acc']):+.2f} | {p['build_s']:.0f} |")
    return lines


def longest_peer(peer: list[dict]) -> dict[int, dict]:
    """{subtask: the peer's row with its longest fine-tune}."""
    best: dict[int, dict] = {}
    for p in peer:
        if p["subtask"] not in best or p["finetune_steps"] > best[p["subtask"]]["finetune_steps"]:
            best[p["subtask"]] = p
    return best


def hyper_ft_summary(rows: list[dict], peer: list[dict]) -> list[dict]:
    """Per group and fine-tune length, hypernet_ft against the peer's longest fine-tune on test: the class sets
    compared, on how many the hypernetwork's net is ahead (ties apart), the mean and standard deviation of the
    difference (pt), and the median per-subset seconds of each."""
    import statistics

    best = longest_peer(peer)
    cells: dict[tuple[str, int], list[tuple[float, float, float, int]]] = {}
    for r in rows:
        p = best.get(r["subtask"])
        if p is not None:
            cells.setdefault((r["group"], r["finetune_steps"]), []).append(
                (100 * (r["test_acc"] - p["test_acc"]), r["build_s"], p["build_s"], p["finetune_steps"]))
    out = []
    for (group, steps), v in cells.items():
        d = [x[0] for x in v]
        out.append({"group": group, "steps": steps, "n": len(d), "ahead": sum(x > 0 for x in d),
                    "tied": sum(x == 0 for x in d), "mean_pt": statistics.fmean(d),
                    "sd_pt": statistics.stdev(d) if len(d) > 1 else 0.0,
                    "median_s": statistics.median(x[1] for x in v), "peer_median_s": statistics.median(x[2] for x in v),
                    "peer_steps": min(x[3] for x in v)})
    return out


def hyper_ft_report(rows: list[dict], peer: list[dict], chosen: str | None) -> list[str]:
    """The hypernet_ft section: the hypernetwork's net fine-tuned with the peer's objective, against the peer with
    its longest fine-tune, per class set, with the per-subset seconds (build + fine-tune) of each; first a summary
    per group."""
    best = longest_peer(peer)
    lines = ["", f"## The hypernetwork fine-tuned (hypernet_ft, {chosen}) against the peer", "",
             "The hypernetwork's own net for the class set (a cold build), then N SGD steps with exactly the peer's "
             "objective and BN recalibration. `per-subset s`: build + fine-tune, each method's whole cost for one "
             "class set on this machine.", ""]
    summary = hyper_ft_summary(rows, peer)
    if summary:
        lines += ["| group | steps | peer steps | class sets | hypernet_ft ahead | tied | mean − peer, test (pt) | sd | "
                  "median per-subset s | peer median s |", "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {c['group']} | {c['steps']} | {c['peer_steps']} | {c['n']} | {c['ahead']} | {c['tied']} | "
                  f"{c['mean_pt']:+.2f} | {c['sd_pt']:.2f} | {c['median_s']:.0f} | {c['peer_median_s']:.0f} |"
                  for c in summary]
        lines.append("")
    lines += ["| subtask | group | steps | MAC ratio | val | test | peer steps | peer MAC ratio | peer test | "
             "hypernet_ft − peer, test (pt) | per-subset s | peer per-subset s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = best.get(r["subtask"])
        peer_cells = (f"{p['finetune_steps']} | {p['mac_ratio']:.4f} | {p['test_acc']:.4f} | "
                      f"{100 * (r['test_acc'] - p['test_acc']):+.2f}") if p else "— | — | — | —"
        lines.append(f"| {r['name'][:50]} | {r['group']} | {r['finetune_steps']} | {r['mac_ratio']:.4f} | "
                     f"{r['val_acc']:.4f} | {r['test_acc']:.4f} | {peer_cells} | {r['build_s']:.0f} | "
                     f"{_fmt(p and p['build_s'], '.0f')} |")
    return lines


def seconds_panels(hyper_ft: list[dict]) -> list[int]:
    """The class sets the seconds plot draws, one panel each: every one of the rows, but of the hardest pairs only
    the first PEER_PAIRS, so that the figure stays readable however many pairs ran."""
    group = {r["subtask"]: r.get("group") for r in hyper_ft}
    pairs = [i for i in group if group[i] == "hardest pairs"]
    return [i for i in group if i not in pairs[PEER_PAIRS:]]


def plot_seconds(out: Path, hyper_ft: list[dict], peer: list[dict], nets: dict, chosen: str) -> str | None:
    """acc_vs_seconds-<chosen>.png: test accuracy against per-subset seconds (build + fine-tune), one panel per class set
    of the peer: the peer at each of its fine-tunes, the hypernetwork's net with none (at its cold build's
    seconds, where the rows record it) and with each of its fine-tunes. None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from .report import method_style, save_figure

    picks = seconds_panels(hyper_ft)
    fig, axes = plt.subplots(1, len(picks), figsize=(3.6 * len(picks), 3.8), squeeze=False)
    for ax, i in zip(axes[0], picks):
        mine = sorted((r for r in hyper_ft if r["subtask"] == i), key=lambda r: r["build_s"])
        theirs = sorted((r for r in peer if r["subtask"] == i), key=lambda r: r["build_s"])
        if theirs:
            ax.plot([r["build_s"] for r in theirs], [100 * r["test_acc"] for r in theirs], linewidth=1.2,
                    **{**method_style("tp_subset_ft_long"), "label": "Torch-Pruning per subset (+ FT)"})
        xs, ys = [r["build_s"] for r in mine], [100 * r["test_acc"] for r in mine]
        if mine and "cold_build_s" in mine[0]:
            xs.insert(0, mine[0]["cold_build_s"])
            ys.insert(0, 100 * nets[chosen]["adaptive"]["test"]["rows"][i]["acc"])
        ax.plot(xs, ys, linewidth=1.2, **{**method_style("hypernet_ft"), "label": "hypernetwork (+ FT)"})
        for r in theirs + mine:
            ax.annotate(str(r["finetune_steps"]), (r["build_s"], 100 * r["test_acc"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: minor labels collide
        ax.set_title(mine[0]["name"][:32], fontsize=9)
        ax.set_xlabel("per-subset seconds: build + fine-tune (log)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("test accuracy on the class set (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = save_figure(fig, out / f"acc_vs_seconds-{chosen}.png")
    plt.close(fig)
    return path


def report(nets: dict, subtasks: list[dict], peer: list[dict] | None, classes: list[str], data_y: dict,
           fixed: dict | None = None, command: str = "hypersan study glyphs", peer_base: str = "dense-w16",
           specialists: list[dict] | None = None, hyper_ft: list[dict] | None = None,
           compared: str | None = None) -> str:
    from ..research.report import equal_accuracy
    from ..data.glyphs import case_insensitive_accuracy

    lines = ["# Glyphs: the adaptivity study", "",
             f"Generated by `{command}`.", "",
             "## Width check (dense nets, all classes, top-1)", "",
             "| net | MAC ratio | val top-1 | test top-1 | test top-1, case-insensitive |", "|---|---|---|---|---|"]
    def width(name: str) -> tuple[int, str]:  # dense-w2 < dense-w2-e6 < dense-w4 < ...
        w, _, rest = name[len("dense-w"):].partition("-")
        return (int(w), rest) if w.isdigit() else (1 << 30, name)
    for name in sorted((n for n in nets if n.startswith("dense-w")), key=width):
        r = nets[name]["agnostic"]
        every = r["test"]["rows"][-1]
        ci = case_insensitive_accuracy(r["test"]["pred"], data_y["test"], classes)
        lines.append(f"| {name} | {every['mac_ratio']:.3f} | {r['val']['top1']:.4f} | {r['test']['top1']:.4f} "
                     f"| {ci:.4f} |")
    for name in sorted(n for n in nets if not n.startswith("dense")):
        r = nets[name]["agnostic"]
        ci = case_insensitive_accuracy(r["test"]["pred"], data_y["test"], classes)
        lines.append(f"| {name} (all-classes net) | {r['test']['rows'][-1]['mac_ratio']:.3f} | {r['val']['top1']:.4f} "
                     f"| {r['test']['top1']:.4f} | {ci:.4f} |")
    if "dense-w16" in nets:
        from collections import Counter

        pred, y = nets["dense-w16"]["agnostic"]["test"]["pred"], data_y["test"]
        c = Counter((classes[int(t)], classes[int(p)]) for p, t in zip(pred, y) if p != t)
        n_err = sum(c.values())
        lines += ["", f"## Confusions of dense-w16 on test ({n_err} errors; the 15 most frequent)", "",
                  "| true | predicted | images |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {n} |" for (a, b), n in c.most_common(15)]
    chosen, gaps = select_gamma(nets) if "dense-w16" in nets else (None, {})
    lines += ["", "## Selection on validation", "",
              f"Rule: the largest gamma whose mean validation accuracy over the study's subtasks is within "
              f"{SELECT_WITHIN_PT} pt of the full-width dense net's (when none is, the most accurate one): "
              f"**{chosen}**.", "",
              "| hypernetwork | val mean acc − dense (pt) |", "|---|---|"]
    lines += [f"| {n} | {g:+.2f} |" for n, g in sorted(gaps.items(), key=lambda kv: gamma_of(kv[0]))]
    for split in ("val", "test"):
        lines += ["", f"## Adaptive nets against the class-agnostic curve ({split})", "",
                  "The curve: the Pareto front of every class-agnostic net (the dense widths, any all-classes net pruned "
                  "in training, each hypernetwork's all-classes net), head cut to the subtask; mean over the group's "
                  "subtasks. `MACs / curve`: the adaptive net's MACs over the MACs the curve needs for the same "
                  "accuracy (`—`: the curve never reaches it), the curve read in log MACs; `linear` reads it linearly "
                  "in MACs, which flatters the adaptive net on a concave curve. `acc − curve`: against the curve at "
                  "the same MACs.",
                  "`held out`: how many of the group's class sets the hypernetwork never trained on (its held-out "
                  "combinations).",
                  "", "| group | n | held out | hypernetwork | MAC ratio | acc | curve MACs at that acc | MACs / curve | "
                  "MACs / curve (linear) | acc − curve (pt) |", "|---|---|---|---|---|---|---|---|---|---|"]
        agn = {n: group_means(rows, subtasks) for n, rows in curve_points(nets, split).items()}
        groups = list(dict.fromkeys(s["group"] for s in subtasks))
        n_of = {g: sum(s["group"] == g for s in subtasks) for g in groups}
        for g in groups:
            curve = [agn[n][g] for n in agn]
            for name in adaptive_names(nets):
                rows = nets[name]["adaptive"][split]["rows"]
                mac, acc = group_means(rows, subtasks)[g]
                held = sum(not r["seen"] for s, r in zip(subtasks, rows) if s["group"] == g)
                e = equal_accuracy(mac, acc, curve)
                lines.append(f"| {g} | {n_of[g]} | {held} | {name} | {mac:.4f} | {acc:.4f} | "
                             f"{_fmt(e['curve_mac_ratio'], '.4f')} | {_fmt(e['mac_vs_curve'], '.2f', e['below'])} | "
                             f"{_fmt(e['mac_vs_curve_linear'], '.2f', e['below'])} | {_fmt(e['acc_gap_pt'], '+.2f')} |")
    lines += ["", "## Within one model: each hypernetwork's subtask nets against its own all-classes net (test)", "",
              "The same backbone both ways, so this isolates what conditioning on the class set buys from what joint "
              "training costs the backbone. The all-classes net is cut only at the head.", "",
              "| group | hypernetwork | subtask nets: MAC ratio | acc | all-classes net: MAC ratio | acc | "
              "MACs subtask / all-classes | acc gap (pt) |", "|---|---|---|---|---|---|---|---|"]
    for g in list(dict.fromkeys(s["group"] for s in subtasks)):
        for name in adaptive_names(nets):
            mac, acc = group_means(nets[name]["adaptive"]["test"]["rows"], subtasks)[g]
            amac, aacc = group_means(nets[name]["agnostic"]["test"]["rows"], subtasks)[g]
            lines.append(f"| {g} | {name} | {mac:.4f} | {acc:.4f} | {amac:.4f} | {aacc:.4f} | {mac / amac:.2f} | "
                         f"{100 * (acc - aacc):+.2f} |")
    if peer:
        matched = compared or chosen  # the peer and the fine-tunes are matched to this hypernetwork's nets
        lines += ["", f"## Against Torch-Pruning per subset at matched MACs ({matched})", "",
                  "| subtask | group | fine-tune steps | MAC ratio (peer / adaptive) | peer val | peer test | "
                  "adaptive val | adaptive test | adaptive − peer, test (pt) | peer build (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for p in peer:
            a_val = nets[matched]["adaptive"]["val"]["rows"][p["subtask"]]["acc"]
            a_test = nets[matched]["adaptive"]["test"]["rows"][p["subtask"]]["acc"]
            lines.append(f"| {p['name'][:50]} | {p['group']} | {p['finetune_steps']} | {p['mac_ratio']:.4f} / "
                         f"{p['adaptive_mac_ratio']:.4f} | {p['val_acc']:.4f} | {p['test_acc']:.4f} | {a_val:.4f} | "
                         f"{a_test:.4f} | {100 * (a_test - p['test_acc']):+.2f} | {p['build_s']:.0f} |")
    if hyper_ft:
        lines += hyper_ft_report(hyper_ft, peer or [], compared or chosen)
    if specialists:
        lines += ["", "## The specialist ceiling: nets trained on one class set alone", "",
                  "Plain nets of the dense net's architecture at a fraction of its widths, trained from scratch on the "
                  "class set's images only (softmax over its classes); beside them, each hypernetwork's net for the "
                  "same class set. Test accuracy.", "",
                  "| class set | net | MAC ratio | val | test |", "|---|---|---|---|---|"]
        for i in dict.fromkeys(r["subtask"] for r in specialists):
            name = subtasks[i]["name"][:50]
            for r in (r for r in specialists if r["subtask"] == i):
                lines.append(f"| {name} | specialist, {r['scale']:g} width, {r['epochs']} epochs | "
                             f"{r['mac_ratio']:.4f} | {r['val_acc']:.4f} | {r['test_acc']:.4f} |")
            for n in adaptive_names(nets):
                rv, rt = nets[n]["adaptive"]["val"]["rows"][i], nets[n]["adaptive"]["test"]["rows"][i]
                lines.append(f"| {name} | {n} | {rt['mac_ratio']:.4f} | {rv['acc']:.4f} | {rt['acc']:.4f} |")
    lines += budget_report(nets, subtasks, fixed or {}, peer_base)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hypersan study glyphs", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/glyph-sweep", help="the runs of a sweep (hypersan sweep configs/sweeps/glyphs.toml)")
    p.add_argument("--out", default="runs/glyph-study")
    p.add_argument("--peer-steps", type=int, default=2000, help="the peer's fine-tuning steps (0: no peer)")
    p.add_argument("--peer-base", default="dense-w16",
                   help="the dense net of --runs that the peer prunes (default dense-w16; another base's peer files "
                        "are named after it, e.g. peer-m0.08-dense-w16-e6.json)")
    p.add_argument("--peer-macs", type=lambda v: [float(x) for x in v.split(",") if x], default=[],
                   metavar="R,R", help="also run the peer at these MAC ratios (to the full-width dense net), against "
                                       "the budget-conditioned models at the same budgets")
    p.add_argument("--nets-from", action="append", default=[], metavar="DIR",
                   help="also read the scored nets (net-NAME.json) of another study folder whose subtasks.json is "
                        "this study's, for names no finished run here has: an earlier study's curve, say")
    p.add_argument("--specialists", type=int, default=0, metavar="EPOCHS",
                   help="the specialist ceiling: nets trained on the digits and the two hardest pairs alone, at "
                        f"{' and '.join(f'{s:g}' for s in SPECIALIST_SCALES)} of the dense widths, for EPOCHS passes "
                        "over those images (0: none)")
    p.add_argument("--finetune", type=lambda v: [int(x) for x in v.split(",") if x], default=[], metavar="N,N",
                   help="the hypernet_ft arm: the selected hypernetwork's nets for the peer's class sets, each "
                        "fine-tuned N steps with the peer's objective (e.g. 200,2000; default: none)")
    p.add_argument("--against", default=None, metavar="NAME",
                   help="match the peer and the --finetune arm to this hypernetwork run's nets instead of the "
                        "selected one's (selection and --ship are unaffected); e.g. hypernet-g1-closed-p1")
    p.add_argument("--peer-pairs", type=int, default=PEER_PAIRS, metavar="N",
                   help=f"how many of the hardest pairs the peer and the --finetune arm cover, beside the digits and "
                        f"one 20-class set (default {PEER_PAIRS}; the study picks {HARD_PAIRS}); class sets already in "
                        "the study folder's files are kept, only the missing ones run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="score on this many images per split (smoke runs; 0: all)")
    p.add_argument("--ship", default=None, metavar="DIR",
                   help="save the selected hypernetwork here (hypersan/pretrained/glyphs), with the statistics of the "
                        "named groups calibrated and the study's figures in meta.json; an earlier checkpoint there "
                        "is replaced, any other folder never")
    p.add_argument("--ship-curve", default=None, metavar="DIR",
                   help="save the class-agnostic curve here, the longest-trained dense net of each width (dense-w8-e8 "
                        "over dense-w8) as DIR/glyphs_dense_w<width>, which hypersan eval --checkpoint reads; earlier "
                        "checkpoints there are replaced, any other folder never")
    args = p.parse_args(argv)
    if args.peer_pairs < 0:
        p.error(f"--peer-pairs {args.peer_pairs}: give how many hardest pairs to cover, 0 to {HARD_PAIRS}")
    import torch

    from ..prune.engine import PruningEngine
    from ..io import atomic_write_json, read_json, atomic_write_text

    torch.set_num_threads(args.threads)
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = finished_runs(runs)
    if "dense-w16" not in done:
        p.error(f"{runs}/dense-w16 is not finished: the study needs the full-width dense net (hypersan sweep "
                "configs/sweeps/glyphs.toml)")
    if args.peer_base not in done or not args.peer_base.startswith("dense"):  # before any scoring
        p.error(f"--peer-base {args.peer_base}: no finished dense net of that name in {runs}")
    dense = PruningEngine.from_pretrained(done["dense-w16"], seed=args.seed)
    cfg = dense.model.config
    data = splits(cfg, args.limit)
    ref_macs = dense.dense_cost()[0]
    shape = tuple(dense.model.info.input_shape)
    sub_path = out / "subtasks.json"
    if not sub_path.exists():
        atomic_write_json(sub_path, choose_subtasks(dense, data["val"], args.seed))
    subtasks = read_json(sub_path)
    nets = {}
    for name, folder in done.items():
        path = out / f"net-{name}.json"
        if not path.exists():
            log(f"scoring {name}")
            engine = dense if name == "dense-w16" else PruningEngine.from_pretrained(folder, seed=args.seed)
            body = engine.subnet(None, fold_bn=True, seed=args.seed) if name.startswith("dense") else \
                engine.subnet(tuple(range(len(engine.model.classes))), fold_bn=True, seed=args.seed)
            res = {"agnostic": score_body(body, data, subtasks, ref_macs, shape)}
            if name.startswith("hypernet"):
                res["adaptive"] = score_adaptive(engine, data, subtasks, ref_macs, args.seed)
            if name.startswith("budget"):
                res["budgets"] = score_budgeted(engine, data, subtasks, ref_macs, shape, args.seed)
            atomic_write_json(path, res)
        nets[name] = read_json(path)
    for other in map(Path, args.nets_from):
        if not (other / "subtasks.json").is_file() or read_json(other / "subtasks.json") != subtasks:
            p.error(f"--nets-from {other}: its subtasks.json is not this study's ({sub_path}); its nets were scored "
                    "on other subtasks")
        for path in sorted(other.glob("net-*.json")):
            name = path.stem[len("net-"):]
            if name not in nets:
                nets[name] = read_json(path)
                log(f"{name}: scored in {other}")
    train_xy: list = []  # the training split, read once, when a peer first needs it

    def training_split() -> tuple:
        if not train_xy:
            from ..training.train import split_training_data

            train_xy.extend(split_training_data(cfg)[:2])
        return tuple(train_xy)

    def peer_file(path: Path, targets: dict[int, float], what: str) -> list[dict]:
        return extend_rows(path, list(targets), lambda i: run_peer(
            peer_base, {i: targets[i]}, subtasks, data, training_split(), args.peer_steps, ref_macs, args.seed),
            f"Torch-Pruning per subset {what}")

    peer_base = dense if args.peer_base == "dense-w16" else PruningEngine.from_pretrained(done[args.peer_base],
                                                                                       seed=args.seed)
    tag = "" if args.peer_base == "dense-w16" else f"-{args.peer_base}"
    peer = None
    chosen, _ = select_gamma(nets)
    if args.against is not None and (args.against not in done or not args.against.startswith("hypernet")):
        p.error(f"--against {args.against}: no finished hypernetwork run of that name in {runs}")
    compared = args.against or chosen  # the net the peer and the fine-tunes are matched to
    picks = peer_picks(subtasks, args.peer_pairs)
    if args.peer_steps and compared:
        rows = nets[compared]["adaptive"]["test"]["rows"]
        targets = {i: rows[i]["mac_ratio"] for i in picks}
        peer = peer_file(peer_path(out, tag, compared, targets), targets, f"at the MACs of {compared}")
    fixed = {r: peer_file(out / f"peer-m{r:g}{tag}.json", {i: r for i in picks}, f"at MAC ratio {r:g}")
             for r in args.peer_macs}
    hyper_ft = None
    if args.finetune and compared:
        if compared not in done:
            p.error(f"--finetune: the hypernetwork {compared} is not a finished run of {runs}")
        engines: list = []  # the hypernetwork, loaded when a class set needs it

        def fine_tuned(i: int) -> list[dict]:
            if not engines:
                engines.append(PruningEngine.from_pretrained(done[compared], seed=args.seed))
            return run_hypernet_ft(engines[0], dense, [i], subtasks, data, training_split(), args.finetune, ref_macs,
                                   args.seed)

        hyper_ft = extend_rows(out / f"ft-{compared}-n{'-'.join(map(str, args.finetune))}.json", picks, fine_tuned,
                               f"the hypernet_ft arm: {compared} + {', '.join(map(str, args.finetune))} "
                               "fine-tuning steps")
        plot_seconds(out, hyper_ft, peer or [], nets, compared)
    specialists = None
    if args.specialists:
        path = out / f"specialists-e{args.specialists}.json"
        if not path.exists():
            log("the specialist ceiling")
            if not train_xy:
                from ..training.train import split_training_data

                train_xy.extend(split_training_data(cfg)[:2])
            atomic_write_json(path, run_specialists(dense, specialist_picks(subtasks), subtasks, data,
                                                    tuple(train_xy), args.specialists, ref_macs, args.seed))
        specialists = read_json(path)
    command = "hypersan study glyphs " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(nets, subtasks, peer, dense.model.classes, {s: y.tolist() for s, (_, y) in data.items()}, fixed,
                  command, args.peer_base, specialists, hyper_ft, compared)
    atomic_write_text(out / "report.md", text)
    print(text)
    if args.ship and chosen:
        ship(done[chosen], args.ship, nets, subtasks, chosen, args.seed, " ".join(argv or sys.argv[1:]), data)
    if args.ship_curve:
        ship_curve(done, args.ship_curve, nets, args.seed, " ".join(argv or sys.argv[1:]))
    return 0


def extend_rows(path: Path, picks: list[int], compute, what: str) -> list[dict]:
    """The rows of `path` (a JSON list of rows, each with its "subtask") for the subtasks in `picks`, in that order:
    those the file lacks are computed with `compute(i)` (a list of rows for subtask i), the file rewritten
    atomically after each, so that a stopped run resumes at the next class set and a longer list of picks only
    adds to what is there."""
    from ..io import atomic_write_json, read_json

    rows = read_json(path) if path.is_file() else []
    missing = [i for i in picks if i not in {r["subtask"] for r in rows}]
    if missing:
        log(f"{what}: {len(missing)} class set(s) to run")
    for i in missing:
        rows += compute(i)
        atomic_write_json(path, rows)
    order = {i: k for k, i in enumerate(picks)}
    return sorted((r for r in rows if r["subtask"] in order), key=lambda r: order[r["subtask"]])


def peer_path(out: Path, tag: str, chosen: str, targets: dict[int, float]) -> Path:
    """Where the peer matched to `chosen` is kept: peer-<chosen><tag>.json. A study's peer.json of before (not
    named by its hypernetwork) is read only when it was built at exactly these targets: once another
    hypernetwork is chosen, its peer is pruned to that one's MACs."""
    from ..io import read_json

    legacy = out / f"peer{tag}.json"
    if legacy.is_file():
        built = {r["subtask"]: r["adaptive_mac_ratio"] for r in read_json(legacy)}
        if built.keys() == targets.keys() and all(abs(built[i] - t) < 1e-9 for i, t in targets.items()):
            return legacy
    return out / f"peer-{chosen}{tag}.json"


def curve_runs(names) -> dict[int, str]:
    """{width: run name} of the class-agnostic curve: of each width's dense runs (dense-w8, dense-w8-e8, ...) the
    one trained longest (an -eN suffix: N epochs in all)."""
    best: dict[int, tuple[int, str]] = {}
    for name in names:
        m = re.fullmatch(r"dense-w(\d+)(?:-e(\d+))?", name)
        if m and (int(m[1]) not in best or int(m[2] or 0) > best[int(m[1])][0]):
            best[int(m[1])] = (int(m[2] or 0), name)
    return {w: name for w, (_, name) in sorted(best.items())}


def ship_curve(done: dict[str, Path], dest: str, nets: dict, seed: int, argv: str) -> None:
    """The curve's dense nets as checkpoints `glyphs_dense_w<width>`: class-agnostic (trained without masks), so
    `hypersan eval` scores each class set on the dense body with its head cut, on the dense statistics shipped."""
    from ..nn.checkpoint import CHECKPOINT_KIND
    from ..prune.engine import PruningEngine
    from ..io import check_output_dir

    for width, name in curve_runs(done).items():
        folder = Path(dest) / f"glyphs_dense_w{width}"
        check_output_dir(folder, CHECKPOINT_KIND, force=True)
        engine = PruningEngine.from_pretrained(done[name], seed=seed)
        model = engine.model
        if not model.class_agnostic:
            raise ValueError(f"{done[name]}: not a class-agnostic run (subtasks.dense_share < 1)")
        engine.subnet(None, fold_bn=True, seed=seed)  # the dense statistics, calibrated and cached to ship
        every = nets[name]["agnostic"]
        model.meta["metrics"] = {"command": f"hypersan study glyphs {argv}", "run": name,
                                 "dense": {s: {"top1": every[s]["top1"]} for s in ("val", "test")},
                                 "note": "the class-agnostic curve of the glyph study (docs/RESULTS.md)"}
        model.meta["source_checkpoint"] = str(done[name])
        model.meta["provenance"] = {**(model.meta.get("provenance") or {}),
                                    "training_data": "the glyph set (make glyphs; docs/DATA.md): train fonts only"}
        engine.save_pretrained(folder, force=True)
        log(f"shipped {name} to {folder}")


def ship(folder: Path, dest: str, nets: dict, subtasks: list[dict], chosen: str, seed: int, argv: str,
         data: dict) -> None:
    """The selected hypernetwork as a shipped checkpoint: the named groups' statistics calibrated, the study's
    per-subtask figures of the named groups in meta.json, its provenance."""
    from ..nn.checkpoint import CHECKPOINT_KIND
    from ..prune.engine import PruningEngine
    from ..io import check_output_dir

    check_output_dir(dest, CHECKPOINT_KIND, force=True)
    engine = PruningEngine.from_pretrained(folder, seed=seed)
    model = engine.model
    named = []
    for i, s in enumerate(subtasks):
        if s["group"] in NAMED or s["group"] == "all classes":
            engine.subnet(tuple(s["indices"]), fold_bn=True, seed=seed)  # calibrates and caches the statistics
            named.append({"request": s["name"], "classes": len(s["indices"]),
                          **{f"{split}_acc": nets[chosen]["adaptive"][split]["rows"][i]["acc"] for split in ("val", "test")},
                          "mac_ratio": nets[chosen]["adaptive"]["test"]["rows"][i]["mac_ratio"]})
    from ..training.evaluate import plain_logits
    from ..data.glyphs import case_insensitive_accuracy

    every = nets[chosen]["agnostic"]
    own = {}  # the shipped model's own dense net (no masks): top-1 over the 135 classes
    for split, (x, y) in data.items():
        pred = plain_logits(engine.subnet(None, fold_bn=True, seed=seed), x).argmax(1)
        own[split] = {"top1": float((pred == y).float().mean()),
                      "top1_case_insensitive": case_insensitive_accuracy(pred.tolist(), y.tolist(), model.classes)}
    model.meta["metrics"] = {"command": f"hypersan study glyphs {argv}", "named_requests": named,
                             "dense": own,
                             "all_classes_request_top1": {s: every[s]["top1"] for s in ("val", "test")},
                             "note": "the full study: docs/ABLATIONS.md (Glyphs)"}
    model.meta["source_checkpoint"] = str(folder)
    model.meta["provenance"] = {
        **(model.meta.get("provenance") or {}),
        # the run's own command line, as training recorded it (every setting is in its config.json too)
        "train_command": (model.meta.get("provenance") or {}).get("command") or f"the run {folder.name} of "
                                                                                  f"{folder.parent}",
        "training_data": "the glyph set (make glyphs; docs/DATA.md): train fonts only; validation fonts are "
                         "families of their own (data.val_split = 'dataset')",
        "selection": f"{chosen}: the largest gamma of the sweep whose mean validation accuracy over the study's "
                     f"subtasks is within {SELECT_WITHIN_PT} pt of the full-width dense net's; the test split was "
                     "read only for the reported figures"}
    engine.save_pretrained(dest, force=True)
    log(f"shipped {chosen} to {dest}")


if __name__ == "__main__":
    sys.exit(main())
