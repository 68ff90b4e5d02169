"""Does AveragePool(1, s) + Conv1x1(s=1) beat Conv1x1(s) in onnxruntime NCHWc? fmnist_b16, batch 256, 1 thread.

    python strided_pointwise.py ROUNDS AveragePool
    python -m hypersan.research.isa avx2 -- python strided_pointwise.py ROUNDS AveragePool

Exports the dense net and two pruned nets, rewrites each strided 1x1 convolution (the shortcuts) as a 1x1
subsampling pool and a stride-1 convolution (the same outputs), and times all six sessions in shuffled rounds.
The fair ratio of a rewritten pruned net is against the original dense net (its ms over the dense 'orig' ms)."""
import sys, statistics, tempfile, json
from pathlib import Path
import numpy as np, torch, onnx
from onnx import helper
from hypersan import PruningEngine
from hypersan.deploy.export import export_onnx
from hypersan.deploy.runtimes import onnx_session
from hypersan.research.bench import time_turns, machine

def rewrite(m):
    g = m.graph
    init = {i.name: i for i in g.initializer}
    nodes, n = [], 0
    for node in g.node:
        a = {x.name: x for x in node.attribute}
        if node.op_type == "Conv" and node.input[1] in init and list(init[node.input[1]].dims[2:]) == [1, 1]:
            s = list(a["strides"].ints) if "strides" in a else [1, 1]
            pads = list(a["pads"].ints) if "pads" in a else [0, 0, 0, 0]
            grp = a["group"].i if "group" in a else 1
            if max(s) > 1 and not any(pads):
                pooled = node.input[0] + f"_sub{n}"
                nodes.append(helper.make_node(sys.argv[2], [node.input[0]], [pooled], kernel_shape=[1, 1], strides=s, name=node.name + "_sub"))
                new = helper.make_node("Conv", [pooled, *node.input[1:]], list(node.output), name=node.name,
                                       **{k: helper.get_attribute_value(v) for k, v in a.items() if k != "strides"})
                nodes.append(new); n += 1; continue
        nodes.append(node)
    del g.node[:]; g.node.extend(nodes)
    return n

torch.manual_seed(0)
eng = PruningEngine.from_pretrained()
torch.set_num_threads(1)
x = np.random.rand(256, 1, 28, 28).astype(np.float32)
tmp = Path(tempfile.mkdtemp())
sets = [None, ["Pullover", "Coat"], ["Dress", "Sandal"]]
fns = {}
for i, s in enumerate(sets):
    net = eng.subnet(s, fold_bn=True)
    p = export_onnx(net, tmp / f"n{i}.onnx")
    m = onnx.load(str(p)); k = rewrite(m); onnx.save(m, str(tmp / f"n{i}r.onnx"))
    a = onnx_session(p, 1); b = onnx_session(tmp / f"n{i}r.onnx", 1)
    ya, yb = a.run(None, {"images": x})[0], b.run(None, {"images": x})[0]
    print(i, "rewrote", k, "max diff", float(np.abs(ya - yb).max()), flush=True)
    fns[(i, "orig")] = (lambda a=a: a.run(["logits"], {"images": x}))
    fns[(i, "rew")] = (lambda b=b: b.run(["logits"], {"images": x}))
cold, times = time_turns(fns, 3, int(sys.argv[1]), 0, 1)
ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
print(machine(1))
for k, v in sorted(ms.items(), key=str): print(k, round(v, 2))
for i in (1, 2):
    for kind in ("orig", "rew"):
        r = statistics.median([p / d for p, d in zip(times[(i, kind)], times[(0, kind)])])
        print(sets[i], kind, "ratio", round(r, 4))
