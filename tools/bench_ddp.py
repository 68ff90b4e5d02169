"""Training throughput (images/s) of one process against N data-parallel processes (torchrun, gloo on CPU).

Both runs train the same config for the same fixed number of global steps per epoch, with the same global batch
and the same total number of CPU threads (1 process x T threads against N processes x T/N threads). Each runs
`--epochs` epochs; the figure is taken from the last one (the first warms up allocators and caches), from the
epoch's training time that `hypersan train` logs (evaluation and checkpoint writing are not counted).

    python tools/bench_ddp.py [--config configs/fmnist_b16.toml] [--steps 40] [--batch-size 128] [--threads 2] \
        [--procs 2] [--epochs 2] [--set section.key=value ...] [--json out.json]

Prints one line per run and the ratio (N processes over one). Runs are written to a temporary folder, removed
at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(procs: int, args, folder: Path) -> dict:
    """Train once on `procs` processes; the last epoch's throughput."""
    threads = max(1, args.threads // procs)
    val = args.val_size
    sets = [f"data.train_limit={args.steps * args.batch_size + val}", f"data.val_size={val}",
            f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}", f"train.threads={threads}",
            "train.eval_every=0", "train.eval_subtasks=1", "train.progress=false", "calib.batches=1",
            "calib.batch_size=64", "train.device=cpu", *args.set]
    cmd = ["-m", "hypersan", "train", "--config", str(args.config), "--out", str(folder / f"p{procs}")]
    for s in sets:
        cmd += ["--set", s]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] + cmd
    else:
        cmd = [sys.executable] + cmd
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"bench_ddp: the {procs}-process run failed:\n{r.stderr[-3000:]}")
    epochs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    last = epochs[-1]
    images = args.steps * args.batch_size
    return {"processes": procs, "threads_per_process": threads, "global_batch": args.batch_size,
            "steps": args.steps, "epoch_seconds": last["seconds"], "images_per_s": images / last["seconds"],
            "wall_seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "fmnist_b16.toml"), help="TOML training config")
    p.add_argument("--steps", type=int, default=40, help="global steps per epoch (the images: steps x batch size)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch, split evenly among the processes")
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all, shared among the processes")
    p.add_argument("--procs", type=int, default=2, help="processes of the data-parallel run")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run; the last one is measured")
    p.add_argument("--val-size", type=int, default=64, help="validation images (evaluated at the end, not timed)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    if args.batch_size % args.procs:
        sys.exit(f"bench_ddp: --batch-size {args.batch_size} must be a multiple of --procs {args.procs}")
    folder = Path(tempfile.mkdtemp(prefix="bench_ddp_"))
    try:
        results = [run(1, args, folder), run(args.procs, args, folder)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for r in results:
        print(f"{r['processes']} process(es) x {r['threads_per_process']} thread(s): {r['images_per_s']:.1f} images/s "
              f"({r['steps']} steps of {r['global_batch']} in {r['epoch_seconds']:.2f} s)")
    ratio = results[1]["images_per_s"] / results[0]["images_per_s"]
    print(f"throughput ratio, {args.procs} processes / 1 process: {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "ratio": ratio, "config": str(args.config)}, indent=2))


if __name__ == "__main__":
    main()
