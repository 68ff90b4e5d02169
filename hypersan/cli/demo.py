"""`hypersan demo`: the main job end to end on the shipped model, in about a minute on 2 CPU cores.

For each example request: ground it in the model's classes, build its pruned net, measure its test accuracy
beside the dense net on the same classes, its MACs and its latency beside the dense net (side by side, in
one process), write its artifact (safetensors + ONNX), and draw the kept channels of every layer. Everything
goes into one output folder, written atomically.
"""
from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..research.bench import SETTLE, machine, machine_line, paired_ratio, time_rounds
from ..data.datasets import load_split
from ..prune.engine import PruningEngine
from ..training.evaluate import evaluate
from ..io import atomic_dir, check_output_dir, write_json

DEMO_KIND = "demo"
DEFAULT_REQUESTS = ("sneakers and bags", "shoes", "tops and outerwear")
# the demo's requests when none are given, by the model's data set
REQUESTS_BY_DATASET = {"fashion_mnist": DEFAULT_REQUESTS,
                       "glyphs": ("digits", "capital letters and digits", "Greek letters")}


REPEATS = 7  # timed rounds per request: the median of 7 per-round ratios; about 1.5 s of the demo per request


def slug(text: str) -> str:
    """A folder name for a request: lower-case words joined by dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "subtask"


def run_demo(out: str | os.PathLike, requests: Optional[Sequence[str]] = None, checkpoint: Optional[str] = None,
             force: bool = False, threads: int = 2, log: Callable[[str], None] = print,
             data_dir: Optional[str] = None, repeats: Optional[int] = None) -> dict:
    """Run the demo into `out` (a new folder, or an earlier demo's with force); returns the summary. `requests`:
    requests in words; None: the examples of the model's data set (REQUESTS_BY_DATASET). `data_dir`: the data set's
    folder, where it is not where the model's config says. `repeats`: timed rounds per request (after two warm-up
    rounds), whose per-round ratios give the latency ratio's median (None: REPEATS)."""
    if requests is not None and not requests:
        raise ValueError("give at least one request")
    repeats = REPEATS if repeats is None else repeats
    if repeats < 1:
        raise ValueError(f"--repeats takes a number of timing rounds >= 1, got {repeats}")
    check_output_dir(out, DEMO_KIND, force)  # before any work
    t_start = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        log(f"loading the model ({checkpoint or 'the shipped default, fmnist_b16'})")
        engine = PruningEngine.from_pretrained(checkpoint, data_dir=data_dir)
        model = engine.model
        if requests is None:
            requests = REQUESTS_BY_DATASET.get(model.info.name)
            if requests is None:
                example = " ".join(f'"{c}"' for c in model.classes[:2])  # its own classes, as requests
                raise ValueError(f"the demo has no example requests for the {model.info.name!r} data set: give "
                                 f"some, in words or class names (hypersan demo --checkpoint {checkpoint} {example})")
        log(f"reading the {model.config.data.dataset} test images")
        x, y, _ = load_split(model.config.data, "test", data_dir)
        subtasks, budgets = [], []
        for r in requests:
            words, b = engine.split_budget(r)  # "..., under 10% of the compute" (a budget-conditioned model)
            t, _ = engine.resolve(words)
            subtasks.append(t)
            budgets.append(b)
            log(f'"{r}" -> {", ".join(model.classes[i] for i in t)}' + ("" if b is None else f" at budget {b:g}"))
        nets = f"{len(subtasks)} subnet" + ("s" if len(subtasks) != 1 else "")
        log(f"building and evaluating {nets} on {len(x):,} test images (BN statistics are "
            "calibrated on training images the first time a class set is asked for)")
        ev = [None] * len(subtasks)
        for b in dict.fromkeys(budgets):  # one evaluation (one dense pass) per distinct budget
            at = [i for i, bi in enumerate(budgets) if bi == b]
            got = evaluate(engine, x, y, [subtasks[i] for i in at], progress=False, budgets=None if b is None else [b])
            for i, e in zip(at, got["subtasks"]):
                ev[i] = e
        dense = engine.subnet(None, fold_bn=True)
        batch = torch.rand(256, *model.info.input_shape, generator=torch.Generator().manual_seed(0))
        rows = []
        with atomic_dir(out, DEMO_KIND, force) as tmp:
            for r, t, b, e in zip(requests, subtasks, budgets, ev):
                net = engine.subnet(t, fold_bn=True, budget=b)
                log(f'timing "{r}" beside the dense net (batch 256, {threads} threads)')
                times = time_rounds({"dense": lambda: dense(batch), "pruned": lambda: net(batch)}, warmup=2,
                                    repeats=repeats, settle=SETTLE)
                summary = engine.export(list(t), tmp / slug(r), formats=["safetensors", "onnx"], budget=b)
                rows.append({"request": r, "budget": b, "classes": e["classes"], "acc": e["acc"],
                             "dense_acc": e["dense_acc"],
                             "mac_ratio": e["mac_ratio"], "param_ratio": e["param_ratio"],
                             "latency_ratio": paired_ratio(times["pruned"], times["dense"]),
                             "pruned_ms": 1e3 * statistics.median(times["pruned"]),
                             "dense_ms": 1e3 * statistics.median(times["dense"]),
                             "onnx_bytes": summary["bytes"]["onnx"], "folder": slug(r), "widths": e["widths"]})
            png = plot_kept_channels(rows, dict(model.backbone.arch["site_widths"]), tmp / "kept_channels.png")
            result = {"checkpoint": str(model.source), "machine": machine(threads), "repeats": repeats, "rows": rows,
                      "plot": "kept_channels.png" if png else None,
                      "seconds": time.perf_counter() - t_start}
            write_json(tmp / "summary.json", result)
        return result
    finally:
        torch.set_num_threads(old_threads)


def plot_kept_channels(rows: list[dict], full: dict, path: Path) -> Optional[Path]:
    """Bars of the kept fraction of every layer, one group per subnet; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sites = list(full)
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(sites), 3.6))
    w = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar([j + i * w for j in range(len(sites))], [r["widths"][s] / full[s] for s in sites], width=w,
               label=f"{r['request']} ({r['mac_ratio']:.2f} of the MACs)")
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(sites))], [f"{s}\n({full[s]})" for s in sites], fontsize=7)
    ax.set_ylabel("kept fraction of channels")
    ax.set_ylim(0, 1)
    ax.set_title("channels each subnet keeps, per layer (dense width in brackets)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_demo(result: dict, out: str) -> str:
    """The demo's table: one line per request."""
    w = max([22, *(len(r["request"]) for r in result["rows"])])  # the widest request sets the column
    head = (f"{'request':<{w}} {'classes':<36} {'acc':>6} {'dense acc':>9} {'MAC ratio':>9} {'latency ratio':>13} "
            f"{'ONNX size':>9}")
    lines = [head]
    for r in result["rows"]:
        cls = ", ".join(r["classes"])
        cls = cls if len(cls) <= 36 else cls[:33] + "..."
        lines.append(f"{r['request']:<{w}} {cls:<36} {100 * r['acc']:5.1f}% {100 * r['dense_acc']:8.1f}% "
                     f"{r['mac_ratio']:9.3f} {r['latency_ratio']:13.3f} {r['onnx_bytes'] / 1024:7.0f} KB")
    lines += ["acc: test accuracy of the subnet on its classes' test images (one-vs-rest for a single class); dense "
              "acc: the full net restricted to the same classes",
              "MAC ratio, latency ratio: the subnet's over the dense net's (latency: batch 256, median of per-round "
              "ratios, measured side by side, each net after a call of its own)"
              + (f", {machine_line(result['machine'])}" if "machine" in result else ""),
              f"written to {out}/: one artifact folder per request (model.safetensors, model.onnx, config.json), "
              + ("kept_channels.png, " if result.get("plot") else "(no plot: install matplotlib) ")
              + "summary.json",
              f"done in {result['seconds']:.0f} s"]
    return "\n".join(lines)


__all__ = ["run_demo", "format_demo", "DEFAULT_REQUESTS"]
