"""onnxruntime's blocked convolutions (ORT_ENABLE_ALL: the NCHWc layout, hypersan's setting) against its plain ones
(ORT_ENABLE_EXTENDED: NCHW), for fmnist_b16's dense net and its 13 bench class sets at batch 256: the four sessions
timed in the same shuffled rounds (research.bench.time_turns, settled), native calls.

    python ort_levels.py 1 > avx512-t1.jsonl                                       # threads
    python -m hypersan.research.isa avx2 -- python ort_levels.py 1 > avx2-t1.jsonl  # the AVX2 kernels
"""
import json, statistics, sys, tempfile
from pathlib import Path
import torch
import onnxruntime as ort
from hypersan.cli.commands import tune_allocator
tune_allocator()
from hypersan.prune.engine import PruningEngine
from hypersan.training.evaluate import parse_subtasks
from hypersan.research.bench import DEFAULT_SUBTASKS, time_turns, paired_ratio, native_calls, machine, latency_bound
from hypersan.deploy.export import export_onnx
import numpy as np
from hypersan.deploy.runtimes import Runner
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
eng = PruningEngine.from_pretrained("fmnist_b16", seed=0)
subs = parse_subtasks(eng.model, DEFAULT_SUBTASKS, seed=0)
x = torch.rand(256, *eng.model.info.input_shape, generator=torch.Generator().manual_seed(0))
def sess(path, level):
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
    o.graph_optimization_level = level; o.log_severity_level = 3
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(str(path), sess_options=o, providers=["CPUExecutionProvider"])
    return Runner(lambda a: s.run(["logits"], {"images": a})[0],
                  prepare=lambda x: np.ascontiguousarray(x.numpy(), dtype=np.float32))
L = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "ext": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
rows = []
with tempfile.TemporaryDirectory() as tmp:
    dp = export_onnx(eng.subnet(None, fold_bn=True, seed=0), Path(tmp) / "dense.onnx")
    dense = {k: sess(dp, v) for k, v in L.items()}
    for i, t in enumerate(subs):
        net = eng.subnet(t, fold_bn=True, seed=0)
        r = eng.cost(net)["mac_ratio"]
        pp = export_onnx(net, Path(tmp) / f"p{i}.onnx")
        fns = {}
        for k, v in L.items():
            p = sess(pp, v)
            fns[("dense", k)] = native_calls(dense[k], x, 1); fns[("pruned", k)] = native_calls(p, x, 1)
        cold, times = time_turns(fns, 3, 10, 0, 2)
        ms = {f"{a}-{b}": 1e3 * statistics.median(v) for (a, b), v in times.items()}
        row = {"mac": r, "bound": latency_bound(r), "ms": ms,
               "all": paired_ratio(times[("pruned", "all")], times[("dense", "all")]),
               "ext": paired_ratio(times[("pruned", "ext")], times[("dense", "ext")]),
               "best": paired_ratio(times[("pruned", min(L, key=lambda k: ms[f"pruned-{k}"]))],
                                    times[("dense", min(L, key=lambda k: ms[f"dense-{k}"]))])}
        rows.append(row)
        print(json.dumps(row), flush=True)
print(json.dumps({"machine": machine(threads), "median_all": statistics.median(r["all"] for r in rows),
                  "median_ext": statistics.median(r["ext"] for r in rows),
                  "median_best": statistics.median(r["best"] for r in rows),
                  "met_all": sum(r["all"] <= r["bound"] for r in rows),
                  "met_best": sum(r["best"] <= r["bound"] for r in rows), "n": len(rows)}))
