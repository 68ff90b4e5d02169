"""Latency of one 3x3 convolution against its input and output widths, on this machine; or of a whole network
pruned to MAC ratios with widths as they fall or rounded to multiples.

    python tools/conv_widths.py [--hw 28] [--batch 256] [--threads 2] [--widths 8,12,15,16,20,24,32] [--json]
    python tools/conv_widths.py --custom tests.models.mobilenet:build --kwargs '{"width": 16}' --shape 1,28,28 \
        --mac-ratios 0.2,0.4 --multiples 8,16 --runtime eager,onnxruntime --batches 1,64 [--json]

The second form (hypersan.research.bench.run_width_bench) prunes a user's network (random weights) with the same
kept fraction in every channel group and times it against the dense net side by side, per runtime and batch.

Times conv2d(cin -> cout, 3x3, stride 1) on a (batch, cin, hw, hw) channels-last input for every pair of
widths (median of --repeats after warm-up) and prints ms and GMAC/s per pair. On CPUs whose kernels
compute output channels in vector blocks (oneDNN on AVX-512: 16 floats), latency steps with
ceil(cout / 16) rather than growing with cout: this is why a pruned layer with 20 output channels costs
about what a dense one with 32 does, and what `block16_mac_ratio` in `hypersan bench` accounts for.
"""
import argparse
import json
import statistics
import time

import torch


def time_conv(cin: int, cout: int, hw: int, batch: int, repeats: int, warmup: int) -> float:
    x = torch.rand(batch, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(cin, cout, 3, 1, 1).eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            conv(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def width_bench(a) -> None:
    from hypersan.deploy.runtimes import parse_runtimes
    from hypersan.research.bench import machine_line, run_width_bench

    floats = [float(v) for v in a.mac_ratios.split(",") if v.strip()]
    ints = [int(v) for v in a.multiples.split(",") if v.strip()]
    batches = [int(v) for v in a.batches.split(",") if v.strip()]
    r = run_width_bench(a.custom, json.loads(a.kwargs), [int(v) for v in a.shape.split(",")], a.classes, floats,
                        ints, parse_runtimes(a.runtime), batches, a.threads, a.repeats, a.warmup,
                        log=None if a.json else print, settle=a.settle)
    if a.json:
        print(json.dumps(r))
        return
    print(f"{a.custom} {a.kwargs}: latency ratio to the dense net ({machine_line(r['machine'])})")
    print(f"{'runtime':<12} {'batch':>5} {'multiple':>8} {'MAC ratio':>9} {'latency':>8} {'cold':>6} "
          f"{'<= 1.2r+0.05':>12} {'floor':>6}")
    for row in r["rows"]:
        print(f"{row['runtime']:<12} {row['batch']:>5} {row['multiple']:>8} {row['mac_ratio']:9.3f} "
              f"{row['latency_ratio']:8.3f} {row['cold_latency_ratio']:6.3f} {'yes' if row['bound_met'] else 'no':>12} "
              f"{'' if row['fixed_floor'] is None else format(row['fixed_floor'], '6.3f'):>6}")
    print(f"latency: each net timed after {a.settle} call(s) of its own in its round; cold: its first call, right "
          "after the other net's")
    print("floor: the ratio if the pruned net's kernels took exactly its MAC ratio of the dense net's kernel time, "
          "each net paying its fixed cost per call (its latency on one-pixel images); a reference, not a law")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--custom", default=None, metavar="FACTORY", help="a network factory, package.module:function: "
                   "time it pruned (the second form)")
    p.add_argument("--kwargs", default="{}", help="the factory's keyword arguments, as JSON")
    p.add_argument("--shape", default="1,28,28", help="input channels, height, width")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--mac-ratios", default="0.2,0.4")
    p.add_argument("--multiples", default="8,16", help="width multiples to round to, beside the widths as they fall")
    p.add_argument("--runtime", default="eager,onnxruntime")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--hw", type=int, default=28, help="height and width of the feature map")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--widths", default="8,12,15,16,20,24,32", help="comma-separated channel counts")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--settle", type=int, default=1,
                   help="--custom: calls of a net before its timed call in each round (0: right after the other net)")
    p.add_argument("--isa", choices=["avx2"], default=None,
                   help="the AVX2 kernels on an AVX-512 CPU (hypersan.research.isa)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.isa:
        import sys

        from hypersan.research.isa import IsaError, rerun

        try:
            status = rerun(a.isa, [sys.executable, *sys.argv])
        except IsaError as e:
            p.error(f"--isa {a.isa}: {e}")
        if status is not None:
            sys.exit(status)
    if a.custom:
        torch.set_num_threads(a.threads)
        width_bench(a)
        return
    widths = [int(w) for w in a.widths.split(",") if w.strip()]
    if not widths or min(widths) < 1:
        p.error("--widths needs positive channel counts, e.g. 8,16,24,32")
    torch.set_num_threads(a.threads)
    rows = []
    for cin in widths:
        for cout in widths:
            s = time_conv(cin, cout, a.hw, a.batch, a.repeats, a.warmup)
            macs = a.batch * a.hw * a.hw * cin * cout * 9
            rows.append({"cin": cin, "cout": cout, "ms": 1e3 * s, "gmac_per_s": macs / s / 1e9})
    if a.json:
        print(json.dumps({"hw": a.hw, "batch": a.batch, "threads": a.threads, "rows": rows}))
        return
    print(f"3x3 conv, batch {a.batch}, {a.hw}x{a.hw}, channels-last, {a.threads} threads: ms (GMAC/s)")
    print("cin\\cout " + "".join(f"{c:>13d}" for c in widths))
    for cin in widths:
        cells = [r for r in rows if r["cin"] == cin]
        print(f"{cin:8d} " + "".join(f"{r['ms']:7.2f} ({r['gmac_per_s']:3.0f})" for r in cells))


if __name__ == "__main__":
    main()
