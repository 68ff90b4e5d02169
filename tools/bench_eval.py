"""Speed and fidelity of subtask evaluation: re-evaluate a checkpoint's recorded subtasks from scratch.

Every subtask is recalibrated (an empty statistics cache) and scored through its physically pruned net on the
full test set, and its figures are compared with those recorded in the checkpoint's meta.json.

    python tools/bench_eval.py [--checkpoint fmnist_b16] [--n 0] [--old-ref COMMIT --old-n 8]

--old-ref also times the evaluation code of an older commit (a git worktree of it) on the first --old-n
subtasks in the same process run, for a before/after ratio on the same machine state.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402

OLD_CODE = """
import sys, time, json, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from hypersan.data.datasets import load_dataset
from hypersan.training.evaluate import evaluate, predict
from hypersan.nn.model import SubtaskAdaptiveNet
m = SubtaskAdaptiveNet.from_pretrained({ckpt!r})
m.bn_cache.clear()
tx, _, _ = load_dataset("fashion_mnist", "train")
x, y, _ = load_dataset("fashion_mnist", "test")
evaluate(m, x, y, tx, [], progress=False)  # calibration and the dense pass, once
out = []
for t in {subtasks!r}:
    t0 = time.perf_counter()
    m.calibrate(tuple(t), tx)
    predict(m, x, tuple(t))
    out.append(time.perf_counter() - t0)
print(json.dumps(out))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="fmnist_b16")
    p.add_argument("--n", type=int, default=0, help="evaluate only the first N recorded subtasks (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--old-ref", default=None, help="git commit whose evaluation to time for comparison")
    p.add_argument("--old-n", type=int, default=8)
    p.add_argument("--out", default=None, help="write the JSON result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from hypersan.data.datasets import load_dataset
    from hypersan.prune.engine import PruningEngine
    from hypersan.training.evaluate import evaluate

    engine = PruningEngine.from_pretrained(args.checkpoint)
    engine.cache.clear()  # every subtask recalibrated: what evaluation of a fresh model costs
    rec = engine.model.meta["metrics"]
    subs = rec["subtasks"][:args.n or None]
    x, y, _ = load_dataset("fashion_mnist", "test")
    t0 = time.perf_counter()
    r = evaluate(engine, x, y, [tuple(s["indices"]) for s in subs], progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    multi = [(a, b) for a, b in zip(r["subtasks"], subs) if a["size"] > 1]
    diff = {k: max(abs(a[k] - b[k]) for a, b in multi) for k in ("acc", "dense_acc", "map", "mac_ratio")}
    result = {"checkpoint": args.checkpoint, "subtasks": len(subs), "wall_s": wall,
              "median_s_per_subtask": r["seconds_per_subtask"],
              "dense_acc": r["dense"]["acc"], "recorded_dense_acc": rec["dense"]["acc"],
              "max_abs_diff_vs_recorded (size >= 2)": diff,
              "mean_acc": statistics.mean(a["acc"] for a, _ in multi),
              "recorded_mean_acc": statistics.mean(b["acc"] for _, b in multi)}
    if args.old_ref:
        with tempfile.TemporaryDirectory() as tmp:
            wt = Path(tmp) / "old"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), args.old_ref],
                           check=True, capture_output=True)
            try:
                from hypersan.nn.checkpoint import resolve_checkpoint

                ckpt = str(resolve_checkpoint(args.checkpoint)).replace(str(ROOT), str(wt))
                code = OLD_CODE.format(root=str(wt), threads=args.threads, ckpt=ckpt,
                                       subtasks=[s["indices"] for s in subs[:args.old_n]])
                out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
                old = json.loads(out.stdout.strip().splitlines()[-1])
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False)
        new = r["seconds_per_subtask"]
        result["old"] = {"ref": args.old_ref, "subtasks": len(old), "median_s_per_subtask": statistics.median(old)}
        result["speedup_median"] = statistics.median(old) / new
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
