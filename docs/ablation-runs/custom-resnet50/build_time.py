"""How long hypersan takes to read and cut a torchvision-style ResNet-50 (tests/models/resnet50.py) for 3 x 224 x 224
images and 1,000 classes: the dependency graph's trace, the MAC model, and the surgery (first and later builds).

    python docs/ablation-runs/custom-resnet50/build_time.py [THREADS]      # from the repository root
"""
import json
import sys
import time

import torch

from hypersan.nn.custom import CustomBackbone
from hypersan.prune.budget import MacModel
from hypersan.prune.metrics import count_macs
from hypersan.prune.surgery import prune_backbone
from hypersan.research.bench import machine, uniform_masks

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
shape, classes = [3, 224, 224], list(range(1000))
row = {"machine": machine(threads), "shape": shape, "classes": len(classes)}
t = time.perf_counter()
bb = CustomBackbone("tests.models.resnet50:build", {}, 3, 1000, shape, [0.5] * 3, [0.25] * 3).eval()
row["trace_s"], row["groups"] = time.perf_counter() - t, len(bb.sites())
t = time.perf_counter()
mac = MacModel(bb, shape)
row["mac_model_s"] = time.perf_counter() - t
builds = []
for ratio in (0.25, 0.5, 0.25):
    masks = uniform_masks(bb, mac, ratio, 16)
    t = time.perf_counter()
    net = prune_backbone(bb, masks, classes, fold_bn=True)
    builds.append({"target_mac_ratio": ratio, "build_s": time.perf_counter() - t, "channels_last": net.channels_last})
dense = prune_backbone(bb, None, classes, fold_bn=True)
row["builds"] = builds
row["dense_gmacs"] = count_macs(dense, tuple(shape)) / 1e9
print(json.dumps(row))
