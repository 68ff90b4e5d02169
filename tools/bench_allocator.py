"""How the malloc configuration moves a pruned-vs-dense latency ratio, one fresh process at a time.

    python tools/bench_allocator.py [--checkpoint NAME|DIR] [--classes Pullover,Coat] [--processes 4]

Each child process loads the model, builds the dense and the pruned net, times them (with the masked
net) in seeded random order for --repeats rounds after warm-up, each timed after --settle calls of its own
(hypersan.research.bench.time_turns), and prints the median per-round ratio.
Half the children keep glibc's default malloc thresholds, half call `hypersan.cli.commands.tune_allocator()`
first; the children alternate. With the defaults, whether a forward page-faults its activations afresh
depends on the heap's history, so the ratio differs from process to process; tuned, it does not.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def child(args) -> dict:
    from hypersan.research.bench import SETTLE, paired_ratio, time_rounds
    from hypersan.cli.commands import tune_allocator

    allocator = tune_allocator() if args.tuned else "default"
    import torch

    from hypersan.prune.engine import PruningEngine

    torch.set_num_threads(args.threads)
    engine = PruningEngine.from_pretrained(args.checkpoint)
    t = engine.model.resolve(args.classes.split(","))
    nets = {"dense": engine.subnet(None, fold_bn=True), "masked": engine.subnet(t, fold_bn=True, physical=False),
            "pruned": engine.subnet(t, fold_bn=True)}  # the inference form hypersan bench times
    x = torch.rand(args.batch, *engine.model.info.input_shape, generator=torch.Generator().manual_seed(0))
    settle = SETTLE if args.settle is None else args.settle
    times = time_rounds({k: (lambda n=n: n(x)) for k, n in nets.items()}, args.warmup, args.repeats, settle=settle)
    return {"allocator": allocator, "settle": settle, "dense_ms": 1e3 * statistics.median(times["dense"]),
            "pruned_ms": 1e3 * statistics.median(times["pruned"]),
            "pruned_latency_ratio": paired_ratio(times["pruned"], times["dense"]),
            "masked_latency_ratio": paired_ratio(times["masked"], times["dense"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="checkpoint directory or shipped model name (default model)")
    p.add_argument("--classes", default="Pullover,Coat")
    p.add_argument("--processes", type=int, default=4, help="child processes per allocator setting")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--settle", type=int, default=None,
                   help="untimed calls of a net before its timed call, in each turn (default: hypersan bench's, "
                        "research.bench.SETTLE; 0: cold calls)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    base = [sys.executable, __file__, "--child", "--classes", args.classes, "--batch", str(args.batch),
            "--threads", str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if args.settle is not None:
        base += ["--settle", str(args.settle)]
    if args.checkpoint:
        base += ["--checkpoint", args.checkpoint]
    rows = []
    for i in range(2 * args.processes):
        tuned = i % 2 == 1
        out = subprocess.run(base + (["--tuned"] if tuned else []), capture_output=True, text=True, check=True)
        rows.append({"process": i, **json.loads(out.stdout.strip().splitlines()[-1])})
        if not args.json:
            r = rows[-1]
            print(f"process {i}: {r['allocator']:<50} dense {r['dense_ms']:6.1f} ms  pruned {r['pruned_ms']:5.1f} ms"
                  f"  pruned/dense {r['pruned_latency_ratio']:.3f}  masked/dense {r['masked_latency_ratio']:.3f}",
                  flush=True)
    if args.json:
        print(json.dumps({"classes": args.classes.split(","), "processes": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
