"""The core quality bar on Fashion-MNIST: evaluate a checkpoint on every pair, sampled 5-class subtasks,
sizes 1..10 and held-out combinations, and check the figures against the targets.

    python tools/bench_core.py [--checkpoint DIR] [--out results.json] [--n-per-size 5] [--n5 30] [--split val]

Prints a summary table and writes the full per-subtask results (the `hypersan eval --json` format plus a
"summary" block) to --out. With no --checkpoint it evaluates the shipped model. `--split test` (the default)
gives final figures; `--split val` scores on the model's validation split (the `data.val_size` training
images it was not trained on), for choices of model and settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from hypersan.nn.checkpoint import CHECKPOINT_KIND, resolve_checkpoint  # noqa: E402
from hypersan.data.datasets import load_dataset  # noqa: E402
from hypersan.prune.engine import PruningEngine  # noqa: E402
from hypersan.training.evaluate import evaluate, parse_subtasks  # noqa: E402
from hypersan.io import OutputExistsError, check_output_dir  # noqa: E402
from hypersan.data.subtasks import sample_combinations  # noqa: E402
from hypersan.training.train import split_training_data  # noqa: E402


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v):
        t = torch.tensor(v, dtype=torch.float64)
        order = t.argsort()
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for val in t.unique():  # average the ranks of ties
            m = t == val
            r[m] = r[m].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


def mean(v):
    v = list(v)
    return sum(v) / len(v) if v else float("nan")


def summarize(r: dict, num_classes: int) -> dict:
    """The quality-bar figures from per-subtask results."""
    subs = r["subtasks"]
    by_size = {k: [s for s in subs if s["size"] == k] for k in range(1, num_classes + 1)}
    pairs = [s for s in by_size[2] if s["seen"]]
    fives = [s for s in by_size[5] if s["seen"]]
    full = by_size[num_classes][0]
    size_means = {k: mean(s["mac_ratio"] for s in v) for k, v in by_size.items() if v}
    heldout = {}
    for k, v in by_size.items():
        seen, unseen = [s for s in v if s["seen"]], [s for s in v if not s["seen"]]
        if seen and unseen:
            heldout[k] = {
                "n_seen": len(seen), "n_unseen": len(unseen),
                "acc_seen": mean(s["acc"] for s in seen), "acc_unseen": mean(s["acc"] for s in unseen),
                "gap_seen": mean(s["acc"] - s["dense_acc"] for s in seen),
                "gap_unseen": mean(s["acc"] - s["dense_acc"] for s in unseen),
                "mac_seen": mean(s["mac_ratio"] for s in seen), "mac_unseen": mean(s["mac_ratio"] for s in unseen)}
    return {
        "dense_acc": r["dense"]["acc"],
        "pairs": {"n": len(pairs), "mac_ratio": mean(s["mac_ratio"] for s in pairs),
                  "acc": mean(s["acc"] for s in pairs), "dense_acc": mean(s["dense_acc"] for s in pairs)},
        "fives": {"n": len(fives), "mac_ratio": mean(s["mac_ratio"] for s in fives),
                  "acc": mean(s["acc"] for s in fives), "dense_acc": mean(s["dense_acc"] for s in fives)},
        "all_classes": {"acc": full["acc"], "dense_acc": full["dense_acc"], "mac_ratio": full["mac_ratio"]},
        "mac_ratio_by_size": size_means,
        "spearman_size_mac": spearman(list(size_means), list(size_means.values())),
        "spearman_size_mac_per_subtask": spearman([s["size"] for s in subs], [s["mac_ratio"] for s in subs]),
        "heldout_by_size": heldout,
    }


def checks(s: dict) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for each figure of the quality bar."""
    ho = s["heldout_by_size"].values()
    acc_gap = max((abs(h["acc_unseen"] - h["acc_seen"]) for h in ho), default=float("nan"))
    rel_gap = max((abs(h["gap_unseen"] - h["gap_seen"]) for h in ho), default=float("nan"))
    mac_gap = max((abs(h["mac_unseen"] - h["mac_seen"]) for h in ho), default=float("nan"))
    p, f, a = s["pairs"], s["fives"], s["all_classes"]
    return [
        ("dense 10-way acc >= 0.930", s["dense_acc"] >= 0.93, f"{s['dense_acc']:.4f}"),
        ("pairs: mean mac_ratio <= 0.30", p["mac_ratio"] <= 0.30, f"{p['mac_ratio']:.3f}"),
        ("pairs: mean acc >= dense-restricted - 0.005", p["acc"] >= p["dense_acc"] - 0.005,
         f"{p['acc']:.4f} vs {p['dense_acc']:.4f}"),
        ("5-class: mean mac_ratio <= 0.55", f["mac_ratio"] <= 0.55, f"{f['mac_ratio']:.3f}"),
        ("5-class: mean acc >= dense-restricted - 0.005", f["acc"] >= f["dense_acc"] - 0.005,
         f"{f['acc']:.4f} vs {f['dense_acc']:.4f}"),
        ("all 10: acc within 0.005 of dense", abs(a["acc"] - a["dense_acc"]) <= 0.005,
         f"{a['acc']:.4f} vs {a['dense_acc']:.4f}"),
        ("Spearman(size, mean mac_ratio) >= 0.8", s["spearman_size_mac"] >= 0.8, f"{s['spearman_size_mac']:.3f}"),
        ("held-out vs seen, same size: |acc gap| <= 0.005", acc_gap <= 0.005,
         f"max {acc_gap:.4f} (relative to dense-restricted: {rel_gap:.4f})"),
        ("held-out vs seen, same size: |mac_ratio gap| <= 0.05", mac_gap <= 0.05, f"max {mac_gap:.3f}"),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--out", default=None, help="write full results + summary JSON here")
    p.add_argument("--n-per-size", type=int, default=5, help="sampled seen subtasks per size for the size curve")
    p.add_argument("--n2", type=int, default=0, help="sampled pairs (0: all of them)")
    p.add_argument("--n5", type=int, default=30, help="sampled 5-class subtasks")
    p.add_argument("--n-unseen", type=int, default=10, help="held-out combinations per size (2..9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: final figures; val: the validation split of the training data, for choices")
    p.add_argument("--ship", default=None, metavar="DIR",
                   help="also save the model with its recorded metrics and calibrated BN statistics to DIR "
                        "(hypersan/pretrained/NAME for a shipped model; an earlier checkpoint there is replaced)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt = resolve_checkpoint(args.checkpoint)
    engine = PruningEngine.from_pretrained(ckpt, seed=args.seed)
    model = engine.model
    cfg = model.config
    if args.split == "val" and not cfg.data.val_size:
        p.error(f"{ckpt} was trained without a validation split (data.val_size = 0): every training image was "
                "used in training; use --split test")
    if args.ship:
        try:  # before any work: an earlier checkpoint there is replaced, any other folder never
            check_output_dir(args.ship, CHECKPOINT_KIND, force=True)
        except OutputExistsError as e:
            p.error(f"--ship: {e}")
    k = len(model.classes)
    specs = ["size=2" + (f",n={args.n2}" if args.n2 else ""), f"size=5,n={args.n5}"]
    specs += [f"size={n},n={args.n_per_size}" for n in range(1, k + 1)]
    subtasks = parse_subtasks(model, specs, seed=args.seed)
    if model.holdout.listable():
        held = [model.classes_of(b) for b in model.holdout.listing()]
        g = torch.Generator().manual_seed(args.seed)
        for size in range(2, k):
            of_size = [t for t in held if len(t) == size]
            pick = torch.randperm(len(of_size), generator=g)[:args.n_unseen].tolist()
            subtasks += [of_size[i] for i in sorted(pick) if of_size[i] not in subtasks]
    else:  # too many combinations to list the held-out ones: draw up to --n-unseen per size
        nb = len(model.basic)
        for size in range(2, nb):
            drawn = sample_combinations(nb, size, args.n_unseen, args.seed, model.holdout, seen=False)
            subtasks += [t for t in (model.classes_of(b) for b in drawn) if t not in subtasks]
    if args.split == "val":
        _, _, eval_x, eval_y, _ = split_training_data(cfg)
    else:
        eval_x, eval_y, _ = load_dataset(cfg.data.dataset, "test", cfg.data.data_dir or None)
    t0 = time.perf_counter()
    r = evaluate(engine, eval_x, eval_y, subtasks, progress=sys.stderr.isatty(), seed=args.seed)
    s = summarize(r, k)
    out = {"checkpoint": str(ckpt), "command": "python tools/bench_core.py " + " ".join(argv or sys.argv[1:]),
           "split": args.split, **r, "summary": s,
           "checks": [{"target": t, "met": m, "measured": v} for t, m, v in checks(s)]}
    where = "" if args.split == "test" else f" (val split, {len(eval_y)} images)"
    print(f"checkpoint {ckpt}{where}: {len(subtasks)} subtasks in {time.perf_counter() - t0:.0f} s")
    print("mac_ratio by size: " + "  ".join(f"{n}:{v:.3f}" for n, v in s["mac_ratio_by_size"].items()))
    for t, m, v in checks(s):
        print(f"  [{'met' if m else 'MISSED'}] {t}: {v}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    if args.ship:
        model.meta["metrics"] = {"command": out["command"], "split": args.split, "dense": r["dense"], "summary": s,
                                 "subtasks": r["subtasks"], "checks": out["checks"]}
        model.meta["source_checkpoint"] = str(ckpt)
        provenance = dict(model.meta.get("provenance") or {})
        provenance["metrics_command"] = out["command"]
        model.meta["provenance"] = provenance
        engine.save_pretrained(args.ship, force=True)  # the model and the statistics calibrated above
        print(f"shipped to {args.ship}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
