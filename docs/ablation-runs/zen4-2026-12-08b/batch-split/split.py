"""(Run from the repository root.) Batch 256 on 2 cores: one session with 2 intra-op threads, against the batch split in 2 halves, each run by a
1-thread session call on its own Python thread (onnxruntime releases the GIL)."""
import sys, statistics, tempfile, json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np, torch
from hypersan.prune.engine import PruningEngine
from hypersan.deploy.runtimes import onnx_session
from hypersan.deploy.export import export_onnx
from hypersan.research.bench import time_turns, paired_ratio, machine_line, machine

torch.set_num_threads(2)
eng = PruningEngine.from_pretrained("fmnist_b16")
sets = [(0, 2), (5, 7), (8, 9), (1, 3), (4, 6), (0, 2, 4, 6, 8)]
B = int(sys.argv[1]) if len(sys.argv) > 1 else 256
rep = int(sys.argv[2]) if len(sys.argv) > 2 else 15
pool = ThreadPoolExecutor(2)
x = np.random.default_rng(0).random((B, 1, 28, 28), dtype=np.float32)
halves = np.array_split(x, 2)
def intra(s): return lambda: s.run(["logits"], {"images": x})[0]
def split(s):
    def f():
        futs = [pool.submit(s.run, ["logits"], {"images": h}) for h in halves]
        return np.concatenate([fu.result()[0] for fu in futs])
    return f
print(machine_line(machine(2)))
with tempfile.TemporaryDirectory() as tmp:
    def sess(net, name):
        p = export_onnx(net, Path(tmp) / f"{name}.onnx")
        return onnx_session(p, 2), onnx_session(p, 1)
    d2, d1 = sess(eng.subnet(None, fold_bn=True), "dense")
    assert np.allclose(intra(d2)(), split(d1)(), atol=1e-4)
    out = []
    for t in sets:
        net = eng.subnet(t, fold_bn=True)
        r = eng.cost(net)["mac_ratio"]
        p2, p1 = sess(net, "p" + "_".join(map(str, t)))
        fns = {"d_intra": intra(d2), "d_split": split(d1), "p_intra": intra(p2), "p_split": split(p1)}
        _, tm = time_turns(fns, 3, rep)
        ms = {k: 1e3 * statistics.median(v) for k, v in tm.items()}
        row = dict(set=t, mac=round(r, 3), goal=round(1.15 * r + 0.03, 3),
                   ratio_intra=round(paired_ratio(tm["p_intra"], tm["d_intra"]), 3),
                   ratio_split=round(paired_ratio(tm["p_split"], tm["d_split"]), 3),
                   ratio_best=round(paired_ratio(tm["p_split"] if ms["p_split"] < ms["p_intra"] else tm["p_intra"],
                                                 tm["d_split"] if ms["d_split"] < ms["d_intra"] else tm["d_intra"]), 3),
                   **{k: round(v, 2) for k, v in ms.items()})
        print(json.dumps(row), flush=True)
