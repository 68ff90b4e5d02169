import time, torch
from hypersan import PruningEngine
from hypersan.data.datasets import load_fashion_mnist
torch.set_num_threads(2)
import sys
if len(sys.argv) > 1:
    from hypersan.cli.commands import tune_allocator; print(tune_allocator())
e = PruningEngine.from_pretrained()
x, y = load_fashion_mnist("test")
net = e.subnet(["Coat", "Bag"], fold_bn=True).eval()
dense = e.subnet(None, fold_bn=True).eval()
def run(n, mode, bs=256):
    ctx = torch.inference_mode() if mode != "nograd" else torch.no_grad()
    with ctx:
        out = []
        for i in range(0, len(x), bs):
            b = x[i:i + bs].float().div_(255.0)
            if mode == "cl": b = b.contiguous(memory_format=torch.channels_last)
            out.append(n(b))
        return torch.cat(out)
for mode in ("inference", "nograd", "inference", "nograd"):
    for name, n in (("pruned", net), ("dense", dense)):
        run(n, mode)
        ts = []
        for _ in range(3):
            t = time.perf_counter(); run(n, mode); ts.append(time.perf_counter() - t)
        print(mode, name, "%.2f s" % min(ts), flush=True)
t = time.perf_counter()
for i in range(0, len(x), 256): x[i:i+256].float().div_(255.0)
print("convert %.3f s" % (time.perf_counter() - t))
print(type(net), getattr(net, "channels_last", None))
