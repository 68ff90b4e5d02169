"""How low the per-subset pruning baselines reach: Torch-Pruning (L1) of a checkpoint's dense net, cut to one
subset, pruned to each MAC budget; prints the MACs counted on the pruned net, its widths and the time taken.

    hypersan study reach [--checkpoint fmnist] [--classes Sneaker,Bag] [--ratios 0.03,0.05,0.08,0.10,0.18]
"""
from __future__ import annotations

import argparse
import sys
import time


from . import baselines
from ..prune.engine import PruningEngine
from ..prune.metrics import count_macs
from ..prune.surgery import prune_backbone


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="fmnist")
    p.add_argument("--classes", default="Sneaker,Bag")
    p.add_argument("--ratios", default="0.03,0.05,0.08,0.10,0.18")
    args = p.parse_args(argv)
    engine = PruningEngine.from_pretrained(args.checkpoint)
    model = engine.model
    t = model.resolve([c.strip() for c in args.classes.split(",")])
    shape = tuple(model.info.input_shape)
    base = prune_backbone(model.backbone, None, t, bn_stats=engine.statistics(None), input_shape=shape)
    dense = engine.dense_cost()[0]
    print("| target mac_ratio | measured | widths | seconds |\n|---|---|---|---|")
    for r in (float(x) for x in args.ratios.split(",")):
        t0 = time.perf_counter()
        net = baselines.magnitude_prune(base, r, dense)
        w = ", ".join(f"{k} {v}" for k, v in sorted(net.site_widths_kept.items()))
        print(f"| {r:.2f} | {count_macs(net, shape) / dense:.4f} | {w} | {time.perf_counter() - t0:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
