"""What a training batch's augmentation costs: random resized crops (data.crop_scale) against padded crops
(data.crop_padding), both with flips, on photo-sized batches. Medians of 20 calls after 3, on the CPU.

    python docs/ablation-runs/zen4-2026-12-08/augment_cost.py [THREADS]
"""
import statistics
import sys
import time

import torch

from hypersan.data.datasets import augment
from hypersan.research.bench import machine

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
print(machine(threads))
for shape in ((64, 3, 224, 224), (128, 3, 32, 32), (128, 1, 28, 28)):
    x = torch.rand(*shape)
    for name, kw in (("padded crop 2", dict(padding=2)), ("padded crop 28", dict(padding=28)),
                     ("resized crop 0.08", dict(padding=2, crop_scale=0.08))):
        gen = torch.Generator().manual_seed(0)
        ts = []
        for i in range(23):
            t = time.perf_counter()
            augment(x, kw["padding"], True, gen, kw.get("crop_scale", 0.0))
            ts.append(time.perf_counter() - t)
        print(f"{tuple(shape)} {name}: {1e3 * statistics.median(ts[3:]):.2f} ms")
