"""Reports of an ablation run: results.csv, a Markdown table, and PNG plots (matplotlib, optional extra)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

CSV_COLUMNS = ["method", "seed", "gamma", "classes", "size", "seen", "acc", "dense_acc", "map", "dense_map",
               "mac_ratio", "param_ratio", "fp_rate", "dense_fp_rate", "target_mac_ratio", "phrasing", "build_s",
               "train_s", "latency_ratio", "widths"]


SWEPT = ("hypernet", "pertask", "tp", "tp_ft", "random")  # methods with a row per gamma of the sweep


def _mean(v: Iterable[float]) -> float:
    v = [x for x in v if x is not None]
    return sum(v) / len(v) if v else math.nan


def _mean_std(per_seed: list[float]) -> str:
    per_seed = [v for v in per_seed if not math.isnan(v)]
    if not per_seed:
        return "—"
    if len(per_seed) == 1:
        return f"{per_seed[0]:.3f}"
    return f"{statistics.mean(per_seed):.3f} ± {statistics.stdev(per_seed):.3f}"


def write_csv(path: Path, rows: list[dict]) -> None:
    """results.csv: one row per (method, seed, subtask[, gamma, phrasing, target]), written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "widths": json.dumps(r.get("widths")) if r.get("widths") is not None else ""})
    _atomic_text(path, buf.getvalue())


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main_rows(rows: list[dict], gamma: float) -> list[dict]:
    """The main comparison: the main gamma, canonical phrasings, and the agnostic_tp sweep's every ratio."""
    return [r for r in rows if r["phrasing"] == "canonical" and (r["gamma"] == gamma)]


def _by(rows, *keys):
    out = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def summary_table(rows: list[dict], gamma: float) -> str:
    """Markdown: per method and seen / held-out, mean over subtasks (then mean ± std over seeds) of acc, the gap
    to the dense net on the same classes, mac_ratio, param_ratio and the out-of-subtask false-positive rate."""
    lines = ["| method | subtasks | n | acc | acc − dense (pt) | mac_ratio | param_ratio | fp_rate |",
             "|---|---|---|---|---|---|---|---|"]
    main = [r for r in main_rows(rows, gamma) if r["method"] != "agnostic_tp"]
    for (method, seen), group in sorted(_by(main, "method", "seen").items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        seeds = _by(group, "seed")

        def col(f):
            return _mean_std([_mean(f(r) for r in g) for g in seeds.values()])

        n = len(group) // max(1, len(seeds))
        lines.append(f"| {method} | {'seen' if seen else 'held-out'} | {n} | {col(lambda r: r['acc'])} | "
                     f"{col(lambda r: 100 * (r['acc'] - r['dense_acc']))} | {col(lambda r: r['mac_ratio'])} | "
                     f"{col(lambda r: r['param_ratio'])} | {col(lambda r: r['fp_rate'])} |")
    return "\n".join(lines)


def size_table(rows: list[dict], gamma: float, seen: bool) -> str:
    """Markdown: method × subtask size, cells "gap to dense (pt) / mac_ratio", means over subtasks and seeds."""
    main = [r for r in main_rows(rows, gamma) if r["seen"] == seen and r["method"] != "agnostic_tp"]
    if not main:
        return "(no such subtasks)"
    sizes = sorted({r["size"] for r in main})
    lines = ["| method | " + " | ".join(str(s) for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for method, group in sorted(_by(main, "method").items()):
        by_size = _by(group, "size")
        cells = []
        for s in sizes:
            g = by_size.get((s,), [])
            cells.append(f"{_mean(100 * (r['acc'] - r['dense_acc']) for r in g):+.2f} / "
                         f"{_mean(r['mac_ratio'] for r in g):.3f}" if g else "—")
        lines.append(f"| {method[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(rows: list[dict]) -> str:
    """Markdown: the gamma sweep (hypernet, pertask, and the per-subset baselines matched to the hypernet at each
    gamma) and the agnostic_tp MACs sweep, seen and held-out; on the sweep's seed (the first) only."""
    lines = ["| method | gamma / target | subtasks | acc − dense (pt) | mac_ratio |", "|---|---|---|---|---|"]
    first = min((r["seed"] for r in rows), default=0)
    swept = [r for r in rows if r["method"] in SWEPT and r["phrasing"] == "canonical" and r["seed"] == first]
    for (method, g, seen), group in sorted(_by(swept, "method", "gamma", "seen").items()):
        lines.append(f"| {method} | γ = {g:g} | {'seen' if seen else 'held-out'} | "
                     f"{_mean(100 * (r['acc'] - r['dense_acc']) for r in group):+.2f} | "
                     f"{_mean(r['mac_ratio'] for r in group):.3f} |")
    for (t, seen), group in sorted(_by([r for r in rows if r["method"] == "agnostic_tp" and r["seed"] == first],
                                       "target_mac_ratio",
                                       "seen").items()):
        lines.append(f"| agnostic_tp | mac {t:g} | {'seen' if seen else 'held-out'} | "
                     f"{_mean(100 * (r['acc'] - r['dense_acc']) for r in group):+.2f} | "
                     f"{_mean(r['mac_ratio'] for r in group):.3f} |")
    return "\n".join(lines)


def cost_table(rows: list[dict]) -> str:
    """Markdown: median build time of one subtask network and training time, per method."""
    lines = ["| method | median build (s) | median training (s) |", "|---|---|---|"]
    for (method,), group in sorted(_by(rows, "method").items()):
        b = [r["build_s"] for r in group if r["build_s"] is not None]
        t = [r["train_s"] for r in group if r["train_s"] is not None]
        lines.append(f"| {method} | {statistics.median(b):.4f} | " if b else f"| {method} | — | ")
        lines[-1] += f"{statistics.median(t):.1f} |" if t else "— |"
    return "\n".join(lines)


def monotonicity_table(extras: dict) -> str:
    lines = ["| step | subset–superset pairs | pairs with a channel the superset drops | channels |",
             "|---|---|---|---|"]
    for step, e in sorted(extras.items()):
        m = e.get("monotonicity")
        if m:
            lines.append(f"| {step} | {m['pairs']} | {m['pairs_violated']} | "
                         f"{m['channel_violations']} of {m['channels']} |")
    return "\n".join(lines)


def write_reports(out: Path, rows: list[dict], extras: dict, gamma: Optional[float] = None) -> dict:
    """results.csv, table.md and plots/*.png (plots skipped, with a note, when matplotlib is missing)."""
    out = Path(out)
    if gamma is None:
        cfg = json.loads((out / "ablation.json").read_text()) if (out / "ablation.json").is_file() else {}
        gamma = cfg.get("run", {}).get("gamma", 0.5)
    write_csv(out / "results.csv", rows)
    md = ["# Ablation results", "",
          f"Main comparison at γ = {gamma:g}; acc − dense is against the dense net on the same classes.", "",
          "## Summary", "", summary_table(rows, gamma), "",
          "## By subtask size, seen (gap to dense in pt / mac_ratio)", "", size_table(rows, gamma, True), "",
          "## By subtask size, held-out", "", size_table(rows, gamma, False), "",
          "## Sweeps", "", sweep_table(rows), "",
          "## Monotonicity of kept channels", "", monotonicity_table(extras), "",
          "## Cost of a subtask network", "", cost_table(rows), ""]
    _atomic_text(out / "table.md", "\n".join(md))
    plots = write_plots(out / "plots", rows, gamma)
    return {"csv": str(out / "results.csv"), "table": str(out / "table.md"), "plots": plots}


def write_plots(folder: Path, rows: list[dict], gamma: float) -> list[str]:
    """pareto.png, mac_vs_size.png, kept_channels.png; [] when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    main = [r for r in rows if r["phrasing"] == "canonical"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, seen in zip(axes, (True, False)):
        for (method,), group in sorted(_by([r for r in main if r["seen"] == seen], "method").items()):
            # a curve for the sweeps (gamma; agnostic_tp's MACs), one mean point for every other method
            key = "gamma" if method in SWEPT else "target_mac_ratio" if method == "agnostic_tp" else "method"
            pts = sorted(_by(group, key).items(), key=lambda kv: _mean(r["mac_ratio"] for r in kv[1]))
            xs = [_mean(r["mac_ratio"] for r in g) for _, g in pts]
            ys = [_mean(100 * r["acc"] for r in g) for _, g in pts]  # absolute: methods have their own dense nets
            ax.plot(xs, ys, marker="o", label=method)
        ax.set_title("seen combinations" if seen else "held-out combinations")
        ax.set_xlabel("mac_ratio (log scale)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("test accuracy on the subtask's classes (%)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
            break
    fig.tight_layout()
    paths.append(_save(fig, folder / "pareto.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for (method,), group in sorted(_by([r for r in main_rows(rows, gamma) if r["method"] != "agnostic_tp"],
                                       "method").items()):
        by_size = sorted(_by(group, "size").items())
        ax.plot([s for (s,), _ in by_size], [_mean(r["mac_ratio"] for r in g) for _, g in by_size], marker="o",
                label=method)
    ax.set_xlabel("subtask size (classes)")
    ax.set_ylabel("mac_ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(_save(fig, folder / "mac_vs_size.png"))
    plt.close(fig)

    with_widths = [r for r in main_rows(rows, gamma) if r.get("widths")]
    if with_widths:
        picks = sorted({r["classes"] for r in with_widths if r["size"] in (2, 5)})[:3]
        entries = [r for r in with_widths if r["classes"] in picks and r["seed"] == with_widths[0]["seed"]]
        sites = list(entries[0]["widths"])
        full = {s: max(r["widths"].get(s, 0) for r in with_widths) for s in sites}
        grid = [[r["widths"].get(s, 0) / max(1, full[s]) for s in sites] for r in entries]
        fig, ax = plt.subplots(figsize=(1 + 0.6 * len(sites), 0.5 + 0.35 * len(entries)))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(sites)), sites, rotation=60, fontsize=6)
        ax.set_yticks(range(len(entries)), [f"{r['method']}: {r['classes']}" for r in entries], fontsize=6)
        fig.colorbar(im, ax=ax, label="kept fraction")
        fig.tight_layout()
        paths.append(_save(fig, folder / "kept_channels.png"))
        plt.close(fig)
    return paths


def _save(fig, path: Path) -> str:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return str(path)
