"""A net for a new class set of the shipped fmnist_b16: the cold build (BN calibration on training images, then
the surgery) of five class sets, after one warm-up build of another, and the cached build (statistics in
memory) of the same five, three times each.

    python docs/ablation-runs/latency-zen4/build/build_time.py THREADS      # from the repository root
"""
import json
import os
import statistics
import sys
import tempfile
import time

os.environ["HYPERSAN_CACHE"] = tempfile.mkdtemp()  # the user's cache is neither read nor written
import torch  # noqa: E402

from hypersan import PruningEngine  # noqa: E402
from hypersan.research.bench import machine  # noqa: E402

threads = int(sys.argv[1])
torch.set_num_threads(threads)
sets = [(0, 1), (2, 4), (5, 7, 9), (1, 3, 6, 8), (0, 2, 4, 6, 8)]
eng = PruningEngine.from_pretrained("fmnist_b16")
eng.cache.clear()
eng.subnet((3, 5))  # warm-up: the training images read, the kernels loaded
cold, warm = [], []
for t in sets:
    start = time.perf_counter()
    eng.subnet(t)
    cold.append(time.perf_counter() - start)
for _ in range(3):
    for t in sets:
        start = time.perf_counter()
        eng.subnet(t)
        warm.append(time.perf_counter() - start)
print(json.dumps({"machine": machine(threads), "cold_s": cold, "cached_s_median": statistics.median(warm),
                  "cold_s_median": statistics.median(cold)}))
