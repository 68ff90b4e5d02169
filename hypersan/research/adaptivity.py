"""Does adaptivity pay? A checkpoint's per-subtask nets against its own all-classes net with the head cut.

    hypersan study adaptivity --checkpoint runs/ablation/models/hypernet-g4-s0 [--checkpoint fmnist ...] \
        [--split test|val] [--per-size 3] [--json out.json]

For each checkpoint: every pair of classes, and `--per-size` sampled subtasks of every other size (seeded), are
evaluated twice on the chosen split:

- adaptive: the subtask's own net (its masks, its BN statistics, its head), as `hypersan eval` builds it;
- agnostic: the checkpoint's all-classes net, built once, with only the head cut to the subtask's classes.

Per size it prints the mean accuracy and MAC ratio of both, their MAC ratio (adaptive over agnostic) and the
accuracy gap. Accuracy is absolute accuracy on the subtask's classes (single classes: one-vs-rest), as in
`hypersan eval` and the ablation. Pairs answer the ablation's question 3 for one training setting; run it on
the models of a sweep (or of remedies) to compare settings.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time



def measure(checkpoint: str, split: str, per_size: int, seed: int = 0, log=print,
            max_pairs: int | None = None) -> dict:
    """Rows of every pair (the first `max_pairs` of them, if given) and `per_size` subtasks of every other size,
    adaptive beside agnostic, and their means by size."""
    import itertools

    import torch

    from .ablate import cut_head
    from ..data.datasets import load_dataset
    from ..prune.engine import PruningEngine
    from ..training.evaluate import evaluate, plain_logits, subtask_metrics
    from ..data.subtasks import sample_combinations

    engine = PruningEngine.from_pretrained(checkpoint, seed=seed)
    model, cfg = engine.model, engine.model.config
    if split == "val":
        from ..training.train import split_training_data

        _, _, x, y, _ = split_training_data(cfg)
    else:
        x, y, _ = load_dataset(cfg.data.dataset, "test", cfg.data.data_dir or None)
    k = len(model.classes)
    subtasks = [tuple(p) for p in itertools.combinations(range(k), 2)][:max_pairs]
    for size in range(1, k + 1):
        if size != 2:
            subtasks += [model.classes_of(b) for b in sample_combinations(len(model.basic), size, per_size, seed)]
    t0 = time.perf_counter()
    adaptive = evaluate(engine, x, y, subtasks, progress=False, seed=seed,
                        log=lambda m: log(f"  {m}") if m.startswith("dense") or m.startswith(f"[{len(subtasks)}/")
                        else None)["subtasks"]
    every = engine.subnet(tuple(range(k)), fold_bn=True, seed=seed)
    agnostic_mac = engine.cost(cut_head(every, (0, 1)))["mac_ratio"]  # the body's MACs; the head differs by a row
    logits = plain_logits(every, x)
    rows = []
    for t, a in zip(subtasks, adaptive):
        full = torch.full_like(logits, float("-inf"))
        full[:, list(t)] = logits[:, list(t)]
        g = subtask_metrics(full, y, t)
        head = engine.cost(cut_head(every, t))["mac_ratio"]
        rows.append({"classes": a["classes"], "size": len(t), "seen": a["seen"], "acc": a["acc"],
                     "mac_ratio": a["mac_ratio"], "agnostic_acc": g["acc"], "agnostic_mac_ratio": head})
    return {"checkpoint": str(checkpoint), "split": split, "images": len(x), "agnostic_all_classes_mac": agnostic_mac,
            "seconds": time.perf_counter() - t0, "rows": rows, "by_size": by_size(rows)}


def by_size(rows: list[dict]) -> list[dict]:
    out = []
    for size in sorted({r["size"] for r in rows}):
        rs = [r for r in rows if r["size"] == size]
        m = {key: statistics.fmean(r[key] for r in rs) for key in ("acc", "mac_ratio", "agnostic_acc",
                                                                   "agnostic_mac_ratio")}
        out.append({"size": size, "n": len(rs), **m, "mac_vs_agnostic": m["mac_ratio"] / m["agnostic_mac_ratio"],
                    "acc_gap_pt": 100 * (m["acc"] - m["agnostic_acc"])})
    return out


def format_result(r: dict) -> str:
    lines = [f"{r['checkpoint']} ({r['split']} split, {r['images']:,} images; all-classes net at MAC ratio "
             f"{r['agnostic_all_classes_mac']:.3f})",
             f"{'size':>4} {'n':>3} {'adaptive acc':>12} {'MAC ratio':>9} {'agnostic acc':>12} {'MAC ratio':>9} "
             f"{'MACs adaptive/agnostic':>22} {'acc gap (pt)':>12}"]
    for s in r["by_size"]:
        lines.append(f"{s['size']:>4} {s['n']:>3} {s['acc']:>12.4f} {s['mac_ratio']:>9.3f} {s['agnostic_acc']:>12.4f} "
                     f"{s['agnostic_mac_ratio']:>9.3f} {s['mac_vs_agnostic']:>22.2f} {s['acc_gap_pt']:>+12.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", required=True, help="checkpoint folder or shipped name; repeat")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--per-size", type=int, default=3, help="sampled subtasks of every size other than 2 (all pairs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    results = []
    for ck in args.checkpoint:
        print(f"measuring {ck}", file=sys.stderr, flush=True)
        r = measure(ck, args.split, args.per_size, args.seed, log=lambda m: print(m, file=sys.stderr, flush=True))
        results.append(r)
        print(format_result(r), flush=True)
    if args.json:
        from ..io import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
