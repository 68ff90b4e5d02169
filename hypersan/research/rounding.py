"""Accuracy and compute of pruned nets with rounded widths, beside the unrounded pruned net.

    hypersan study rounding [--checkpoint DIR] [--round-to 16] [--subtasks size=2,n=6 ...] [--json]

For each subtask (default: the `hypersan bench` set) it builds the pruned net and the nets with every
kept width rounded to a multiple of --round-to, "up" (adds back the highest-utility pruned channels) and
"nearest" (may drop the lowest-utility kept channels), each with its own recalibrated BN statistics, and
scores them on the test images of the subtask's classes (|T|-way accuracy). Latency of the same nets:
`hypersan bench --round-to N --round-mode up|nearest`.
"""
from __future__ import annotations

import argparse
import json
import sys


import torch

from .bench import DEFAULT_SUBTASKS
from ..nn.checkpoint import resolve_checkpoint
from ..data.datasets import load_dataset
from ..prune.engine import PruningEngine
from ..training.evaluate import parse_subtasks, plain_accuracy


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="default: the shipped model")
    p.add_argument("--round-to", type=int, default=16)
    p.add_argument("--subtasks", nargs="+", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ckpt = resolve_checkpoint(a.checkpoint)
    engine = PruningEngine.from_pretrained(ckpt, seed=a.seed)
    model = engine.model
    d = model.config.data
    test_x, test_y, _ = load_dataset(d.dataset, "test", d.data_dir or None)
    rows = []
    for t in parse_subtasks(model, a.subtasks or DEFAULT_SUBTASKS, seed=a.seed):
        row = {"classes": [model.classes[c] for c in t]}
        for name, kw in (("pruned", {"round_to": 0}), ("up", {"round_to": a.round_to, "round_mode": "up"}),
                         ("nearest", {"round_to": a.round_to, "round_mode": "nearest"})):
            net = engine.subnet(t, **kw)
            row[name] = {"acc": plain_accuracy(net, t, test_x, test_y), "mac_ratio": engine.cost(net)["mac_ratio"],
                         "widths": net.arch["site_widths"]}
        rows.append(row)
        if not a.json:
            print(f"{','.join(row['classes'])[:40]:<40} " + "  ".join(
                f"{k} acc {row[k]['acc']:.4f} mac {row[k]['mac_ratio']:.3f}" for k in ("pruned", "up", "nearest")),
                flush=True)
    mean = {k: {m: sum(r[k][m] for r in rows) / len(rows) for m in ("acc", "mac_ratio")}
            for k in ("pruned", "up", "nearest")}
    if a.json:
        print(json.dumps({"checkpoint": str(ckpt), "round_to": a.round_to, "subtasks": rows, "mean": mean}))
    else:
        print("mean: " + "  ".join(f"{k} acc {v['acc']:.4f} mac {v['mac_ratio']:.3f}" for k, v in mean.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
