"""Pruning x INT8: for each subtask, the float pruned net against its INT8 copy (onnxruntime, static QDQ,
calibrated on the subtask's training images): test accuracy on the subtask's classes, file size, and latency
in onnxruntime at batch 1 and 256, beside the dense float net in the same runtime.

    python tools/bench_int8.py [--checkpoint fmnist_b16] [--subtasks size=2,n=6 size=3,n=4 size=5,n=2 all]
                               [--threads 2] [--repeats 10] [--settle 1] [--split test|val] [--weight-bits 7|8]
                               [--json out.json]

Accuracy is measured on the subtask's own test images (argmax over its classes). Latencies are medians over
timed rounds in which dense float, pruned float and pruned INT8 take turns in a seeded shuffled order, each
timed after --settle calls of its own (hypersan.research.bench.time_turns); ratios are medians of per-round
ratios (pruned / dense float).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from hypersan.research.bench import (DEFAULT_SUBTASKS, SETTLE, calls_per_round, machine, machine_line,  # noqa: E402
                                     paired_ratio, time_rounds)
from hypersan.data.datasets import load_dataset, to_float  # noqa: E402
from hypersan.prune.engine import PruningEngine  # noqa: E402
from hypersan.training.evaluate import parse_subtasks  # noqa: E402
from hypersan.training.train import split_training_data  # noqa: E402
from hypersan.deploy.export import FILES, INT8_FILE, export_onnx  # noqa: E402
from hypersan.deploy.quantize import quantize_int8  # noqa: E402
from hypersan.deploy.runtimes import onnx_session  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="fmnist_b16")
    p.add_argument("--subtasks", nargs="+", default=DEFAULT_SUBTASKS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--settle", type=int, default=SETTLE,
                   help="calls of a net before its timed call in each round (0: right after another net's)")
    p.add_argument("--calib-images", type=int, default=1024)
    p.add_argument("--weight-bits", type=int, choices=[7, 8], default=7,
                   help="7 (the default of hypersan.deploy.quantize.quantize_int8): no 16-bit saturation in the "
                        "kernels of CPUs without VNNI; 8: the full int8 range")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="images the accuracy is measured on: the test split, or the model's validation split")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    engine = PruningEngine.from_pretrained(args.checkpoint)
    model = engine.model
    if args.split == "val":
        x_test, y_test = split_training_data(model.config)[2:4]
        if not len(y_test):
            p.error("this model was trained without a validation split; use --split test")
    else:
        x_test, y_test, _ = load_dataset(model.config.data.dataset, "test", model.config.data.data_dir or None)
    subtasks = parse_subtasks(model, args.subtasks, seed=0)
    gen = torch.Generator().manual_seed(0)
    xs = {b: torch.rand(b, *model.info.input_shape, generator=gen).numpy() for b in (1, 256)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="hypersan-int8-") as tmp:
        dense_path = export_onnx(engine.subnet(None, fold_bn=True), Path(tmp) / "dense.onnx")
        dense = onnx_session(dense_path, args.threads)
        for i, t in enumerate(subtasks):
            folder = Path(tmp) / f"s{i}"
            folder.mkdir()
            net = engine.subnet(t, fold_bn=True)
            fp = export_onnx(net, folder / FILES["onnx"])
            q = folder / INT8_FILE
            quantize_int8(fp, q, engine.subtask_images(t, args.calib_images, 0), weight_bits=args.weight_bits)
            sessions = {"float": onnx_session(fp, args.threads), "int8": onnx_session(q, args.threads)}
            keep = torch.isin(y_test, torch.tensor(t))
            x = to_float(x_test[keep]).numpy()
            target = torch.searchsorted(torch.tensor(t), y_test[keep])
            acc = {k: (torch.from_numpy(s.run(["logits"], {"images": x})[0]).argmax(1) == target).float().mean().item()
                   for k, s in sessions.items()}
            row = {"classes": [model.classes[c] for c in t], "mac_ratio": engine.cost(net)["mac_ratio"],
                   "acc_float": acc["float"], "acc_int8": acc["int8"], "acc_delta_pt": 100 * (acc["int8"] - acc["float"]),
                   "bytes_float": fp.stat().st_size, "bytes_int8": q.stat().st_size}
            for b, xb in xs.items():
                n = calls_per_round(b)
                fns = {"dense": lambda: [dense.run(["logits"], {"images": xb}) for _ in range(n)],
                       "float": lambda: [sessions["float"].run(["logits"], {"images": xb}) for _ in range(n)],
                       "int8": lambda: [sessions["int8"].run(["logits"], {"images": xb}) for _ in range(n)]}
                times = time_rounds(fns, args.warmup, args.repeats, seed=i, settle=args.settle)
                for k in ("dense", "float", "int8"):
                    row[f"b{b}_{k}_ms"] = 1e3 * statistics.median(times[k]) / n
                row[f"b{b}_float_ratio"] = paired_ratio(times["float"], times["dense"])
                row[f"b{b}_int8_ratio"] = paired_ratio(times["int8"], times["dense"])
            rows.append(row)
            print(f"[{i + 1}/{len(subtasks)}] {','.join(row['classes'])}: mac {row['mac_ratio']:.3f} acc "
                  f"{row['acc_float']:.4f} -> {row['acc_int8']:.4f} ({row['acc_delta_pt']:+.2f} pt), size "
                  f"{row['bytes_int8'] / row['bytes_float']:.2f}x, b256 ratio float {row['b256_float_ratio']:.3f} "
                  f"int8 {row['b256_int8_ratio']:.3f}, b1 ms float {row['b1_float_ms']:.3f} int8 "
                  f"{row['b1_int8_ms']:.3f} dense {row['b1_dense_ms']:.3f}", file=sys.stderr, flush=True)
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    print(f"{len(rows)} subtasks, threads {args.threads}, onnxruntime, each net timed after {args.settle} call(s) of "
          f"its own, {machine_line(machine(args.threads))}; medians over subtasks (ranges):")
    print(f"  accuracy int8 - float ({args.split}, {args.weight_bits}-bit weights): "
          f"{med('acc_delta_pt'):+.2f} pt (worst {min(r['acc_delta_pt'] for r in rows):+.2f})")
    print(f"  size int8 / float: {med('bytes_int8') / med('bytes_float'):.2f}")
    for b in (1, 256):
        print(f"  batch {b}: dense float {med(f'b{b}_dense_ms'):.3f} ms, pruned float {med(f'b{b}_float_ms'):.3f} ms "
              f"({med(f'b{b}_float_ratio'):.3f} of dense), pruned int8 {med(f'b{b}_int8_ms'):.3f} ms "
              f"({med(f'b{b}_int8_ratio'):.3f} of dense)")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "settle": args.settle, "split": args.split,
                                               "weight_bits": args.weight_bits,
                                               "machine": machine(args.threads), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
