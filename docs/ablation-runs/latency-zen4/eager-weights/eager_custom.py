"""The test networks of tests/models (a user's own networks, random weights) in eager PyTorch, dense and pruned to a
MAC ratio (widths rounded up to 16), each in the default layout (custom nets as built before 2026-12-07) against
channels-last activations and weights (now, where the build's check finds the same outputs): the four nets timed in
the same shuffled rounds (research.bench.time_turns, settled), per batch size, BN folded as exports fold it.

    python docs/ablation-runs/latency-zen4/eager-weights/eager_custom.py 1 > custom-t1.jsonl   # threads; from the
                                                                                          # repository root
"""
import copy, json, statistics, sys
import torch
from hypersan.cli.commands import tune_allocator
tune_allocator()
from hypersan.nn.custom import CustomBackbone
from hypersan.prune.budget import MacModel
from hypersan.prune.metrics import count_macs
from hypersan.prune.surgery import prune_backbone
from hypersan.research.bench import time_turns, paired_ratio, native_calls, machine, uniform_masks
from hypersan.deploy.runtimes import Runner

threads = int(sys.argv[1])
torch.set_num_threads(threads)
shape = [3, 32, 32]
rows = []


def pair(net):  # (default layout, channels-last): the same values
    assert net.channels_last, "the build's check should turn channels-last on for the test networks"
    old = copy.deepcopy(net)
    old.channels_last = False
    return {"default": old.eval(), "cl": net.eval()}


for factory, width in (("mobilenet", 32), ("mobilenet", 64), ("resnet18", 32), ("densenet", None)):
    kwargs = {"in_channels": 3} if width is None else {"in_channels": 3, "width": width}
    torch.manual_seed(0)
    bb = CustomBackbone(f"tests.models.{factory}:build", kwargs, 3, 10, shape, [0.5] * 3, [0.25] * 3).eval()
    dense = prune_backbone(bb, None, range(10), fold_bn=True, input_shape=shape)
    mac = MacModel(bb, shape)
    for r in (0.25, 0.5):
        pruned = prune_backbone(bb, uniform_masks(bb, mac, r, 16), range(10), fold_bn=True, input_shape=shape)
        ratio = count_macs(pruned, tuple(shape)) / count_macs(dense, tuple(shape))
        nets = {"dense": pair(dense), "pruned": pair(pruned)}
        for b in (1, 64):
            x = torch.rand(b, *shape, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                for n in nets.values():
                    assert torch.allclose(n["default"](x), n["cl"](x), atol=1e-4)
            fns = {(n, k): native_calls(Runner(m[k]), x, 1) for n, m in nets.items() for k in ("default", "cl")}
            _, times = time_turns(fns, 3, 30 if b == 1 else 10, 0, 1)
            row = {"net": factory, "kwargs": kwargs, "mac": ratio, "batch": b,
                   "ms": {f"{a}-{k}": 1e3 * statistics.median(v) for (a, k), v in times.items()},
                   "ratio_default": paired_ratio(times[("pruned", "default")], times[("dense", "default")]),
                   "ratio_cl": paired_ratio(times[("pruned", "cl")], times[("dense", "cl")]),
                   "pruned_cl_over_default": paired_ratio(times[("pruned", "cl")], times[("pruned", "default")]),
                   "dense_cl_over_default": paired_ratio(times[("dense", "cl")], times[("dense", "default")])}
            rows.append(row)
            print(json.dumps(row), flush=True)
print(json.dumps({"machine": machine(threads), "shape": shape}))
