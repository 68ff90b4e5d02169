"""Plain nets in eager PyTorch with their conv weights in the default layout (as built before 2026-12-07) against
channels-last weights (a plain net's eval mode now), activations channels-last in both: the dense net and the
bench's 13 class sets of a shipped model, the four nets timed in the same shuffled rounds (research.bench.time_turns,
settled), per batch size.

    python eager_weights.py fmnist_b16 2 > fmnist_b16-t2.jsonl    # model, threads[, batches]
    HYPERSAN_DEFAULT_ALLOCATOR=1 python eager_weights.py fmnist_b16 2 64,256 > ...   # glibc's malloc as it is:
                                                                    # a user's own process
"""
import json, os, statistics, sys, copy
import torch
from hypersan.cli.commands import tune_allocator
if not os.environ.get("HYPERSAN_DEFAULT_ALLOCATOR"):
    tune_allocator()
from hypersan.prune.engine import PruningEngine
from hypersan.training.evaluate import parse_subtasks
from hypersan.research.bench import DEFAULT_SUBTASKS, time_turns, paired_ratio, native_calls, machine
from hypersan.deploy.runtimes import Runner
from hypersan.nn.subnet import weights_layout

name, threads = sys.argv[1], int(sys.argv[2])
batches = [int(b) for b in (sys.argv[3] if len(sys.argv) > 3 else "1,64,256").split(",")]
torch.set_num_threads(threads)
eng = PruningEngine.from_pretrained(name, seed=0)
subs = parse_subtasks(eng.model, DEFAULT_SUBTASKS, seed=0)


def pair(net):  # (default-layout weights, channels-last weights): the same values
    net = net.eval()
    return {"default": weights_layout(copy.deepcopy(net), torch.contiguous_format), "cl": net}


dense = pair(eng.subnet(None, fold_bn=True, seed=0))
rows = []
for t in subs:
    pruned = eng.subnet(t, fold_bn=True, seed=0)
    r = eng.cost(pruned)["mac_ratio"]
    pruned = pair(pruned)
    for b in batches:
        x = torch.rand(b, *eng.model.info.input_shape, generator=torch.Generator().manual_seed(0))
        fns = {(n, k): native_calls(Runner(nets[k]), x, 1) for n, nets in (("dense", dense), ("pruned", pruned))
               for k in ("default", "cl")}
        reps = 30 if b == 1 else 10
        _, times = time_turns(fns, 3, reps, 0, 1)
        ms = {f"{a}-{k}": 1e3 * statistics.median(v) for (a, k), v in times.items()}
        row = {"classes": [eng.model.classes[i] for i in t], "mac": r, "batch": b, "ms": ms,
               "ratio_default": paired_ratio(times[("pruned", "default")], times[("dense", "default")]),
               "ratio_cl": paired_ratio(times[("pruned", "cl")], times[("dense", "cl")]),
               "pruned_cl_over_default": paired_ratio(times[("pruned", "cl")], times[("pruned", "default")]),
               "dense_cl_over_default": paired_ratio(times[("dense", "cl")], times[("dense", "default")])}
        rows.append(row)
        print(json.dumps(row), flush=True)
summary = {"machine": machine(threads), "model": name, "allocator_tuned": not os.environ.get("HYPERSAN_DEFAULT_ALLOCATOR")}
for b in batches:
    rb = [r for r in rows if r["batch"] == b]
    summary[f"batch{b}"] = {k: statistics.median(r[k] for r in rb) for k in
                            ("ratio_default", "ratio_cl", "pruned_cl_over_default", "dense_cl_over_default")}
print(json.dumps(summary))
