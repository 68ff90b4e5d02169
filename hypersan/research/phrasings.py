"""How a text-conditioned model responds to the wording of a request: canonical descriptions, training
phrasings and held-out phrasings of the same class sets.

    hypersan study phrasings --checkpoint runs/fmnist_text [--n 20] [--k 2] [--out results.json]

For each of --n sampled class sets (sizes 2..5, seeded), it conditions the hypernetwork on the canonical
description ("Sneaker and Bag"), on --k random training-phrasing descriptions and on --k held-out
phrasing descriptions (templates and list forms never used in training, `descriptions.describe(...,
split="heldout")`). Each mask set gets its own BN recalibration and is scored through its physically
pruned net (equal to the masked net) on the test images of the set's classes: |T|-way accuracy,
mac_ratio, and the overlap (IoU) of its kept channels with the canonical masks. It also grounds every
description with the request grounder and counts how often the grounded class set is the right one.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path


import torch
from tqdm import tqdm

from ..data.datasets import load_dataset
from ..language.descriptions import canonical_description, describe
from ..prune.engine import PruningEngine
from ..training.evaluate import plain_accuracy
from ..language.grounding import GroundingError
from ..prune.surgery import kept_channels


def mean(v):
    v = list(v)
    return sum(v) / len(v) if v else float("nan")


@torch.no_grad()
def score(engine, t, text, test_x, test_y):
    """Accuracy, mac_ratio and kept channels of the pruned net conditioned on `text` (what
    `engine.subnet(request)` builds: masks from the text, BN statistics calibrated for them)."""
    net = engine.subnet(t, text=text)
    masks, _ = engine.masks(t, text)
    return (plain_accuracy(net, t, test_x, test_y), engine.cost(net)["mac_ratio"],
            kept_channels(masks, engine.model.sites))


def iou(a, b):
    inter = sum(len(set(a[k].tolist()) & set(b[k].tolist())) for k in a)
    union = sum(len(set(a[k].tolist()) | set(b[k].tolist())) for k in a)
    return inter / union


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint trained with generator.conditioning = 'text'")
    p.add_argument("--n", type=int, default=20, help="class sets to sample (sizes 2..5)")
    p.add_argument("--k", type=int, default=2, help="descriptions per phrasing split and class set")
    p.add_argument("--seed", type=int, default=0, help="sampling of class sets and descriptions")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write per-description results as JSON")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    engine = PruningEngine.from_pretrained(a.checkpoint)
    model = engine.model
    if model.config.generator.conditioning != "text":
        p.error(f"{a.checkpoint} is conditioned on {model.config.generator.conditioning!r}, not on text")
    info, d = model.info, model.config.data
    test_x, test_y, _ = load_dataset(d.dataset, "test", d.data_dir or None)
    rng = random.Random(a.seed)
    sets = sorted({tuple(sorted(rng.sample(range(len(info.classes)), rng.randint(2, 5)))) for _ in range(a.n)})
    rows = []
    for t in tqdm(sets, desc="class sets"):
        texts = [("canonical", canonical_description(t, info))]
        texts += [(split, describe(t, info, rng, split=split)) for split in ("train", "heldout") for _ in range(a.k)]
        base = None
        for split, text in texts:
            acc, mac, keep = score(engine, t, text, test_x, test_y)
            base = keep if base is None else base
            try:
                grounded = list(engine.ground(text).indices) == list(t)
            except GroundingError:
                grounded = False
            rows.append({"classes": [info.classes[c] for c in t], "split": split, "text": text, "acc": acc,
                         "mac_ratio": mac, "iou_with_canonical": iou(keep, base), "grounded_right": grounded})
    summary = {}
    for split in ("canonical", "train", "heldout"):
        r = [x for x in rows if x["split"] == split]
        summary[split] = {"descriptions": len(r), "acc": mean(x["acc"] for x in r),
                          "mac_ratio": mean(x["mac_ratio"] for x in r),
                          "iou_with_canonical": mean(x["iou_with_canonical"] for x in r),
                          "grounded_right": sum(x["grounded_right"] for x in r)}
    print(f"{len(sets)} class sets (sizes 2..5), seed {a.seed}, {a.checkpoint}")
    print(f"{'phrasing':<10} {'n':>4} {'acc':>7} {'mac':>6} {'IoU':>6} {'grounded':>9}")
    for split, s in summary.items():
        print(f"{split:<10} {s['descriptions']:4d} {s['acc']:7.4f} {s['mac_ratio']:6.3f} {s['iou_with_canonical']:6.3f} "
              f"{s['grounded_right']:4d}/{s['descriptions']:<4d}")
    print(f"{time.perf_counter() - t0:.0f} s")
    if a.out:
        Path(a.out).write_text(json.dumps({"checkpoint": a.checkpoint, "command": " ".join(sys.argv),
                                           "summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
