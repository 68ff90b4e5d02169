"""Latency of one 3x3 convolution against its input and output widths, on this machine.

    python tools/conv_widths.py [--hw 28] [--batch 256] [--threads 2] [--widths 8,12,15,16,20,24,32] [--json]

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hw", type=int, default=28, help="height and width of the feature map")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--widths", default="8,12,15,16,20,24,32", help="comma-separated channel counts")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
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
