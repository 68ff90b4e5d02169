"""Benchmark of physical pruning: dense, masked and pruned latency side by side, build time, artifact size.

Everything runs in one process with a fixed thread count; the forwards are timed interleaved (one of
each per round, in a seeded random order per round), and a latency ratio is the median of per-round
ratios, so drifting machine load affects the nets alike. The three nets compared share one
inference form (plain net, BN folded unless `fold_bn=False`, channels-last activations):

- dense: the net of all classes at full width;
- masked: the subtask's masks applied without removing anything (dense widths, pruned channels zeroed,
  scalings folded into the weights), the way weight-masking tools leave a model;
- pruned: the physically smaller net.

The training-time masked path (the maskable backbone multiplying activations by per-sample masks) is
timed too, against the same backbone without masks: `activation_masked_latency_ratio`.
"""
from __future__ import annotations

from collections import Counter
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..language.text import torch_threads
from ..prune.engine import PruningEngine
from ..deploy.export import export_onnx, save_subnet
from ..prune.metrics import conv_macs
from ..data.subtasks import Subtask

DEFAULT_SUBTASKS = ["size=2,n=6", "size=3,n=4", "size=5,n=2", "all"]
# conv MACs with output channels rounded up to 16, the vector block of oneDNN's AVX-512 kernels: on such
# CPUs a conv with 17-32 output channels costs what one with 32 does (see tools/conv_widths.py)
BLOCK = 16


def machine(threads: int | None = None) -> dict:
    """The CPU figures ran on: model name, the widest vector ISA torch's kernels use (AVX-512 or AVX2: convolution
    widths and latency ratios depend on it; under `research.isa`'s mask, the AVX2 kernels of an AVX-512 CPU),
    logical cores, and the threads used."""
    import os
    import platform

    from .isa import active, cpu_generation, cpu_info

    model, flags = cpu_info()
    model = model or platform.processor() or platform.machine()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else torch.backends.cpu.get_cpu_capability()
    masked = active()
    if masked == "avx2" and isa == "AVX-512":  # the kernels are AVX2's on an AVX-512 core (research.isa)
        isa = "AVX2 kernels, AVX-512 masked"
    return {"cpu": model, "generation": cpu_generation(), "isa": isa,
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_mask": masked, "cores": os.cpu_count(),
            "threads": threads if threads is not None else torch.get_num_threads()}


def machine_line(m: dict) -> str:
    """"on AMD EPYC (family 25, model 17; AVX-512), 2 threads of 2 cores": the line printed beside every time and
    ratio."""
    gen = f"{m['generation']}; " if m.get("generation") else ""
    return f"on {m['cpu']} ({gen}{m['isa']}), {m['threads']} thread(s) of {m['cores']} core(s)"


def round_orders(keys: Sequence[str], repeats: int, seed: int = 0) -> List[List[str]]:
    """The order in which each timing round calls the nets: a fresh seeded shuffle per round, so no net
    always runs first, or always right after the same other net (whose allocator and cache state it would
    inherit in every round)."""
    rng = random.Random(seed)
    orders = []
    for _ in range(repeats):
        order = list(keys)
        rng.shuffle(order)
        orders.append(order)
    return orders


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of fn takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.no_grad()
def dense_forward_seconds(engine: PruningEngine, repeats: int = 20, warmup: int = 3) -> float:
    """Median time of one batch-256 forward of the dense net (the yardstick of a subnet's build cost)."""
    net = engine.subnet(None, fold_bn=True)
    x = torch.rand(256, *engine.model.info.input_shape)
    return statistics.median([timed(lambda: net(x)) for _ in range(warmup + repeats)][warmup:])


def latency_bound(mac_ratio: float) -> float:
    """The pruned / dense latency a net of this mac_ratio should not exceed: 1.3 x mac_ratio + 0.05."""
    return 1.3 * mac_ratio + 0.05


def bound_applies(mac_ratio: float) -> bool:
    """Whether the latency bound is checked for a net of this mac_ratio: [0.15, 0.7]."""
    return 0.15 <= mac_ratio <= 0.7


def latency_bound_met(latency_ratio: float, mac_ratio: float) -> Optional[bool]:
    """pruned / dense latency <= latency_bound, where the bound applies (else None)."""
    return latency_ratio <= latency_bound(mac_ratio) if bound_applies(mac_ratio) else None


def speed_goal(mac_ratio: float) -> float:
    """The README's goal for a pruned net in onnxruntime at batch 256: pruned / dense <= 1.15 x mac_ratio + 0.03
    (`fmnist_b16`'s nets, median MAC ratio 0.177: 0.234). Tighter than `latency_bound`."""
    return 1.15 * mac_ratio + 0.03


def speed_goal_met(runtime: str, batch: int, latency_ratio: float, mac_ratio: float) -> Optional[bool]:
    """latency ratio <= speed_goal, for the float onnxruntime runtime at batch >= 256 (else None: not its goal)."""
    return latency_ratio <= speed_goal(mac_ratio) if runtime == "onnxruntime" and batch >= 256 else None


CRITERIA = {
    "pruned_latency": "pruned / dense latency <= 1.3 x MAC ratio + 0.05 (where the MAC ratio is in [0.15, 0.7])",
    "masked_latency": "masked / dense latency within [0.9, 1.1] (masks alone save nothing)",
    "build": "building a subnet (masks + surgery, statistics cached) takes at most one dense batch forward",
    "size": "artifact size / dense artifact size within 10% of the param ratio",
}


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS does not report it)."""
    import os

    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def busy_warning(load: Optional[float], threads: int) -> Optional[str]:
    """A warning when other work ran during a timing: the load average above the threads the bench used."""
    if load is not None and load > threads + 0.5:
        return (f"warning: the machine was busy (load average {load:.1f} with {threads} bench threads): other "
                "processes shared the cores, so latencies are noisy; rerun on an idle machine for figures to keep")
    return None


def check(row: dict) -> dict:
    """The issue's acceptance checks for one benchmarked subtask (None where a check does not apply)."""
    return {
        "pruned_latency": latency_bound_met(row["pruned_latency_ratio"], row["mac_ratio"]),
        # a plain net of dense widths with zeroed channels costs what the dense net costs
        "masked_latency": 0.9 <= row["masked_latency_ratio"] <= 1.1,
        "build": row["build_ratio"] <= 1.0,
        "size": abs(row["size_ratio"] / row["param_ratio"] - 1.0) <= 0.1,
    }


SETTLE = 1  # calls of a net before its settled (timed) call, in each of its turns (see time_turns)


@torch.inference_mode()
def time_turns(fns: dict[str, Callable[[], object]], warmup: int, repeats: int, seed: int = 0,
               settle: int = SETTLE) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per call of each function, in `repeats` rounds that each give every function one turn, in the
    orders of `round_orders`: (cold, settled). A turn calls its function 1 + `settle` times back to back; `cold`
    holds the first call's time, which follows another function's turn and inherits its cache and allocator
    state, and `settled` the last call's, which follows calls of the same function: a net serving batch after
    batch. With settle=0 the two are the same call.

    The difference is not small for a small net timed beside a large one: on the MobileNetV2-style test net
    (width 64, batch 64, onnxruntime, one thread) a pruned net's first call after the dense net took 12.4 ms and
    its next calls 9.7 ms; the dense net's 43.7 and 40.3 ms (docs/CUSTOM.md)."""
    if settle < 0:
        raise ValueError(f"settle is a number of untimed calls, >= 0 (got {settle})")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    cold: dict[str, list[float]] = {k: [] for k in fns}
    settled: dict[str, list[float]] = {k: [] for k in fns}
    for order in round_orders(list(fns), repeats, seed):
        for k in order:
            first = timed(fns[k])
            for _ in range(settle - 1):
                fns[k]()
            cold[k].append(first)
            settled[k].append(timed(fns[k]) if settle else first)
    return cold, settled


def time_rounds(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
                seed: int = 0, settle: int = SETTLE) -> dict[str, list[float]]:
    """Seconds per call of each function: the settled times of `time_turns` (with settle=0, one call per turn,
    each right after another function's: the cold times)."""
    return time_turns(fns, warmup, repeats, seed, settle)[1]


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of num[i] / den[i]: timings taken in the same round share the machine's state
    (load from elsewhere, clock speed), so their ratio is steadier than the ratio of two medians."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired_ratio needs two equally long, non-empty series (got {len(num)} and {len(den)})")
    return statistics.median(a / b for a, b in zip(num, den))


def run_bench(engine: PruningEngine, subtasks: Sequence[Subtask], batch: int = 256,
              threads: int = 2, repeats: int = 10, warmup: int = 3, round_to: int = 0, seed: int = 0,
              fold_bn: bool = True, round_mode: str = "up", log: Optional[Callable[[str], None]] = None,
              budget: Optional[float] = None, settle: int = SETTLE) -> dict:
    """Benchmark each subtask against the dense net (each subtask's net at `budget`, if given, as
    `engine.subnet` builds it), timing settled calls (`time_turns`); returns the JSON summary (see
    `hypersan bench --json`)."""
    if repeats < 1 or warmup < 0 or batch < 1 or threads < 1 or settle < 0:
        raise ValueError("bench needs repeats >= 1, warmup >= 0, batch >= 1, threads >= 1 and settle >= 0")
    with torch_threads(threads):
        return _run(engine, subtasks, batch, threads, repeats, warmup, round_to, round_mode, seed, fold_bn,
                    log or (lambda m: None), engine.check_budget(budget), settle)


def _run(engine, subtasks, batch, threads, repeats, warmup, round_to, round_mode, seed, fold_bn, log, budget,
         settle) -> dict:
    model = engine.model.eval()
    info, arch = model.info, model.backbone.arch
    x = torch.rand(batch, *info.input_shape, generator=torch.Generator().manual_seed(seed)).to(model.device)
    dense_macs, dense_params = engine.dense_cost()
    custom = arch["arch"] == "custom"
    dense = engine.subnet(None, fold_bn=fold_bn, seed=seed)
    dense_block = conv_macs(dense, info.input_shape, BLOCK)
    # first build every net (recalibrations included), then time: the big allocations of calibration
    # would otherwise change the allocator's state, and the timings, between the first subtasks and the rest
    built = []
    with tempfile.TemporaryDirectory(prefix="hypersan-bench-") as tmp:
        dense_size = save_subnet(dense, Path(tmp) / "dense", ["safetensors"])["safetensors"].stat().st_size
        for i, t in enumerate(subtasks):
            b = {"t": t, "calib_s": None}
            masks, label = engine.masks(t, budget=budget)
            if engine.key(t, rounding=label, seed=seed, masks=masks) not in engine.cache:  # reported, not in the build
                b["calib_s"] = timed(lambda: engine.statistics(t, seed=seed, budget=budget))
            b["builds"] = []
            for _ in range(3):  # masks + surgery (+ BN folding), statistics cached; the last build is timed too
                t0 = time.perf_counter()
                b["net"] = engine.subnet(t, fold_bn=fold_bn, seed=seed, budget=budget)
                b["builds"].append(time.perf_counter() - t0)
            b["masks"] = masks
            # the masked form: a plain net of dense widths with zeroed channels
            b["masked"] = engine.subnet(t, fold_bn=fold_bn, physical=False, seed=seed, budget=budget)
            if round_to and engine.round_multiple(round_to) > 1:
                b["rnet"] = engine.subnet(t, fold_bn=fold_bn, round_to=round_to, round_mode=round_mode, seed=seed,
                                          budget=budget)
            b["size"] = save_subnet(b["net"], Path(tmp) / f"s{i}", ["safetensors"])["safetensors"].stat().st_size
            built.append(b)
            log(f"built {i + 1}/{len(subtasks)}: {','.join(info.classes[c] for c in t)}")
    rows = []
    for i, b in enumerate(built):
        t, net, masked, masks = b["t"], b["net"], b["masked"], b["masks"]
        names = [info.classes[c] for c in t]
        fns = {"dense": lambda: dense(x), "masked": lambda: masked(x), "pruned": lambda: net(x)}
        if "rnet" in b:
            fns["rounded"] = lambda: b["rnet"](x)
        # the plain nets are timed among themselves: interleaving the maskable backbone (another memory
        # layout, several times the activations) would leave its cache and allocator state to whichever
        # plain net follows it
        times = time_rounds(fns, warmup, repeats, seed, settle)
        times.update(time_rounds({"backbone": lambda: model.backbone(x),
                                  "backbone_masked": lambda: model.backbone(x, masks)}, warmup, repeats, seed, settle))
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = {k: paired_ratio(times[k], times["dense"]) for k in ("masked", "pruned", "rounded") if k in times}
        cost = engine.cost(net)
        macs, params = cost["macs"], cost["params"]
        build = statistics.median(b["builds"])
        row = {"classes": names, "indices": list(t), "mac_ratio": macs / dense_macs,
               f"block{BLOCK}_mac_ratio": conv_macs(net, info.input_shape, BLOCK) / dense_block,
               "param_ratio": params / dense_params,
               "pruned_latency_ratio": ratio["pruned"],
               "latency_bound": latency_bound(macs / dense_macs),
               "masked_latency_ratio": ratio["masked"],
               "activation_masked_latency_ratio": paired_ratio(times["backbone_masked"], times["backbone"]),
               "build_ratio": build / med["dense"],
               "size_ratio": b["size"] / dense_size,
               "dense_ms": 1e3 * med["dense"], "masked_ms": 1e3 * med["masked"], "pruned_ms": 1e3 * med["pruned"],
               "backbone_ms": 1e3 * med["backbone"], "backbone_masked_ms": 1e3 * med["backbone_masked"],
               "build_ms": 1e3 * build, "calib_ms": None if b["calib_s"] is None else 1e3 * b["calib_s"],
               "widths": net.arch["site_widths"], "custom": custom, "budget": budget}
        if "rnet" in b:
            rmacs = engine.cost(b["rnet"])["macs"]
            row["rounded"] = {"round_to": engine.round_multiple(round_to), "mode": round_mode, "mac_ratio": rmacs / dense_macs,
                              "widths": b["rnet"].arch["site_widths"],
                              "latency_ratio": ratio["rounded"], "ms": 1e3 * med["rounded"]}
            row["rounded"]["pruned_latency_check"] = latency_bound_met(row["rounded"]["latency_ratio"],
                                                                       row["rounded"]["mac_ratio"])
        row["checks"] = check(row)
        rows.append(row)
        log(f"[{i + 1}/{len(subtasks)}] {','.join(names)}: mac {row['mac_ratio']:.3f} "
            f"pruned {row['pruned_latency_ratio']:.3f} masked {row['masked_latency_ratio']:.3f}")
    passed = summarize_checks(rows)
    return {"threads": threads, "batch": batch, "repeats": repeats, "warmup": warmup, "settle": settle,
            "bn_folded": fold_bn,
            "device": str(model.device), "subtasks": rows, "passed": passed, "load_average": load_average()}


def summarize_checks(rows: List[dict]) -> Dict[str, Optional[bool]]:
    """Per check: True if every subtask it applies to passed, None if it applied to none (e.g. no subtask
    with mac_ratio in [0.15, 0.7]), False otherwise."""
    out: Dict[str, Optional[bool]] = {}
    for k in (rows[0]["checks"] if rows else {}):
        applied = [r["checks"][k] for r in rows if r["checks"][k] is not None]
        out[k] = all(applied) if applied else None
    return out


def _verdict(passed: Optional[bool]) -> str:
    return "n/a (no subtask in range)" if passed is None else "pass" if passed else "FAIL"


def _flag(mac_ratio: float) -> str:
    return " " if bound_applies(mac_ratio) else "*"


def format_table(result: dict) -> str:
    """A plain-text table of a bench result."""
    rnd = any("rounded" in r for r in result["subtasks"])
    head = (f"{'classes':<40} {'MACs':>6} {'MAC16':>6} {'params':>6} {'pruned':>7} {'bound':>6} {'masked':>7} {'build':>6} {'size':>6}"
            + (f" {'rMACs':>6} {'round':>7}" if rnd else "") + f" {'act-mask':>8}   (ratios to dense)")
    form = "BN folded" if result.get("bn_folded", True) else "BN kept"
    lines = ([f"measured {machine_line(result['machine'])}"] if "machine" in result else []) + [
             f"threads {result['threads']}, batch {result['batch']}, {result['repeats']} rounds after "
             f"{result['warmup']} warm-up rounds, latency ratios: median of per-round ratios, {result['device']}, "
             f"{form}" + _settle_note(result)
             + (f"; allocator: {result['allocator']}" if "allocator" in result else ""), head]
    for r in result["subtasks"]:
        name = ",".join(r["classes"])
        name = name if len(name) <= 40 else name[:37] + "..."
        line = (f"{name:<40} {r['mac_ratio']:6.3f} {r.get(f'block{BLOCK}_mac_ratio', float('nan')):6.3f} "
                f"{r['param_ratio']:6.3f} {r['pruned_latency_ratio']:7.3f} "
                f"{r.get('latency_bound', latency_bound(r['mac_ratio'])):5.3f}{_flag(r['mac_ratio'])} "
                f"{r['masked_latency_ratio']:7.3f} {r['build_ratio']:6.3f} {r['size_ratio']:6.3f}")
        if rnd:
            line += (f" {r['rounded']['mac_ratio']:6.3f} {r['rounded']['latency_ratio']:7.3f}" if "rounded" in r
                     else f" {'':>6} {'':>7}")
        lines.append(line + f" {r.get('activation_masked_latency_ratio', float('nan')):8.3f}")
    if result["subtasks"]:
        med = lambda k: statistics.median(r.get(k, float("nan")) for r in result["subtasks"])  # noqa: E731
        lines.append(f"dense batch forward: {med('dense_ms'):.1f} ms, maskable backbone without masks "
                     f"{med('backbone_ms'):.1f} ms (medians over subtasks)")
        if rnd:
            r0 = next(r["rounded"] for r in result["subtasks"] if "rounded" in r)
            lines.append(f"rMACs, round: MACs and latency of the pruned net with widths rounded {r0['mode']} to "
                         f"multiples of {r0['round_to']}")
        lines.append("bound: 1.3 x MACs + 0.05, which pruned should not exceed; * where MACs lie outside "
                     "[0.15, 0.7] and the bound is not checked")
        lines.append(f"MAC{BLOCK}: conv MACs with output channels rounded up to multiples of {BLOCK}")
        lines.append("act-mask: the training-time masked path (activations multiplied by masks) over the same "
                     "backbone without masks")
        lines.append("checks: " + ", ".join(f"{k} {_verdict(v)}" for k, v in result["passed"].items()))
        for k, v in result["passed"].items():
            if v is False:
                bad = [",".join(r["classes"]) for r in result["subtasks"] if r["checks"].get(k) is False]
                lines.append(f"  {k} FAILED on {len(bad)} subtask(s): {'; '.join(bad)}")
                lines.append(f"    criterion: {CRITERIA.get(k, k)}")
                if k == "pruned_latency" and not rnd and any(
                        r["checks"].get(k) is False and r.get(f"block{BLOCK}_mac_ratio", 0) > 1.05 * r["mac_ratio"]
                        for r in result["subtasks"]):  # widths the kernels pad: what rounding would do
                    lines.append(f"    widths off the kernels' blocks (MAC{BLOCK} above MACs) run slower than their "
                                 "MACs say: try --round-to auto (docs/GUIDE.md, *Widths and speed*)")
    warn = busy_warning(result.get("load_average"), result["threads"])
    if warn:
        lines.append(warn)
    return "\n".join(lines)


# ---------------------------------------------------------------- deployment runtimes

def calls_per_round(batch: int, images: int = 64) -> int:
    """Forwards per timed call at a batch size: at least `images` images, so that a batch-1 forward (well under a
    millisecond) is timed over enough work for the clock and the machine's noise."""
    return max(1, -(-images // batch))


def native_calls(run, x: torch.Tensor, n: int) -> Callable[[], list]:
    """What the runtime benches time: `n` calls of a `runtimes.Runner` in its runtime's own types
    (`Runner.native`), on `x` converted once, before the clock starts."""
    a = run.prepare(x)
    return lambda: [run.native(a) for _ in range(n)]


def run_runtime_bench(engine: PruningEngine, subtasks: Sequence[Subtask], runtimes: Sequence[str],
                      batches: Sequence[int] = (1, 256), threads: int = 2, repeats: int = 10, warmup: int = 3,
                      seed: int = 0, log: Optional[Callable[[str], None]] = None, budget: Optional[float] = None,
                      round_to=None, round_mode: str = "up", best_threads: Sequence[int] = (),
                      settle: int = SETTLE) -> dict:
    """Dense vs pruned latency in each deployment runtime (runtimes.RUNTIMES), at each batch size: both nets run
    in the same runtime, timed in the same shuffled rounds; the ratio is the median of per-round ratios, of the
    settled calls (`time_turns`: each net's turn calls it 1 + `settle` times and times the last), with the ratio
    of the turns' first calls, each right after the other net's turn, as `cold_latency_ratio`. The
    int8 runtime quantizes each net on its own classes' training images. Each pruned net is built as
    `engine.subnet` builds it with `budget` and `round_to` / `round_mode`. Each runtime is called as its own
    deployments call it (`runtimes.Runner.native`: numpy arrays in and out of onnxruntime, tensors in torch), on
    inputs prepared before the clock starts. Returns the JSON summary.

    `best_threads` (onnxruntime runtimes only, whose sessions keep their own thread count): each net runs at each
    of these intra-op thread counts in the same rounds, and the ratio is taken at each net's fastest count (a
    small pruned net may run fastest on fewer threads than the dense net); each row records both counts and the
    ratio at every common count (`ratio_by_threads`)."""
    from ..deploy.runtimes import sessions

    log = log or (lambda m: None)
    if repeats < 1 or warmup < 0 or threads < 1 or not batches or min(batches) < 1 or settle < 0:
        raise ValueError("bench needs repeats >= 1, warmup >= 0, threads >= 1, batch sizes >= 1 and settle >= 0")
    best_threads = sorted(set(best_threads))
    if best_threads and (min(best_threads) < 1 or not all(rt.startswith("onnxruntime") for rt in runtimes)):
        raise ValueError("--best-threads takes thread counts >= 1 (e.g. 1,2) and the onnxruntime runtimes only, "
                         "whose sessions keep their own thread count; got "
                         f"{','.join(map(str, best_threads))} with {','.join(runtimes)}")
    counts = best_threads or [threads]
    budget = engine.check_budget(budget)
    round_to = engine.round_multiple(round_to)  # once: every row records the multiple its nets were built with
    model = engine.model.eval()
    info = model.info
    gen = torch.Generator().manual_seed(seed)
    xs = {b: torch.rand(b, *info.input_shape, generator=gen) for b in batches}
    rows = []
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="hypersan-runtimes-") as tmp:
        dense = engine.subnet(None, fold_bn=True, seed=seed)
        dense_s = {}
        for rt in runtimes:
            calib = engine.subtask_images(None, 256, seed) if rt.endswith("int8") else None
            dense_s[rt] = sessions(dense, rt, Path(tmp) / "dense" / rt, counts, calib)  # one export, every count
        for i, t in enumerate(subtasks):
            net = engine.subnet(t, fold_bn=True, seed=seed, budget=budget, round_to=round_to,
                                round_mode=round_mode)
            mac_ratio = engine.cost(net)["mac_ratio"]
            names = [info.classes[c] for c in t]
            with torch.inference_mode():
                want = net(xs[max(batches)])
            for rt in runtimes:
                calib = engine.subtask_images(t, 256, seed) if rt.endswith("int8") else None
                runs = sessions(net, rt, Path(tmp) / f"s{i}" / rt, counts, calib)
                with torch.inference_mode():
                    err = max((run(xs[max(batches)]) - want).abs().max().item() for run in runs.values())
                for b in batches:
                    x, n = xs[b], calls_per_round(b)
                    fns = {}
                    for k in counts:
                        d, p = dense_s[rt][k], runs[k]
                        fns[("dense", k)], fns[("pruned", k)] = native_calls(d, x, n), native_calls(p, x, n)
                    cold, times = time_turns(fns, warmup, repeats, seed, settle)
                    ms = {key: 1e3 * statistics.median(v) / n for key, v in times.items()}
                    kd = min(counts, key=lambda k: ms[("dense", k)])  # each net at its fastest thread count
                    kp = min(counts, key=lambda k: ms[("pruned", k)])
                    ratio = paired_ratio(times[("pruned", kp)], times[("dense", kd)])
                    row = {"runtime": rt, "batch": b, "classes": names, "indices": list(t),
                           "budget": budget, "round_to": round_to, "mac_ratio": mac_ratio, "latency_ratio": ratio,
                           "cold_latency_ratio": paired_ratio(cold[("pruned", kp)], cold[("dense", kd)]),
                           "dense_ms": ms[("dense", kd)], "pruned_ms": ms[("pruned", kp)],
                           "max_abs_diff_to_eager": err, "latency_bound": latency_bound(mac_ratio),
                           "bound_met": latency_bound_met(ratio, mac_ratio) if b >= 64 else None,
                           "speed_goal": speed_goal(mac_ratio),
                           "speed_goal_met": speed_goal_met(rt, b, ratio, mac_ratio)}
                    if best_threads:
                        row.update(dense_threads=kd, pruned_threads=kp,
                                   ms_by_threads={net_: {str(k): ms[(net_, k)] for k in counts}
                                                  for net_ in ("dense", "pruned")},
                                   ratio_by_threads={str(k): paired_ratio(times[("pruned", k)], times[("dense", k)])
                                                     for k in counts})
                    rows.append(row)
                    log(f"[{i + 1}/{len(subtasks)}] {rt} batch {b} {','.join(names)}: mac {mac_ratio:.3f} "
                        f"latency {ratio:.3f} ({row['pruned_ms']:.3f} / {row['dense_ms']:.3f} ms)")
    return {"mode": "runtimes", "threads": threads, **({"best_threads": best_threads} if best_threads else {}),
            "batches": list(batches), "repeats": repeats, "warmup": warmup, "settle": settle,
            "budget": budget, "round_to": round_to, "round_mode": round_mode,
            "runtimes": list(runtimes), "subtasks": rows, "summary": runtime_summary(rows),
            "load_average": load_average()}


def runtime_summary(rows: List[dict]) -> List[dict]:
    """Per runtime and batch: the median and range of latency ratios and milliseconds, and the bound's count."""
    out = []
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["runtime"], r["batch"]), []).append(r)
    for (rt, b), g in groups.items():
        checked = [r["bound_met"] for r in g if r["bound_met"] is not None]
        goals = [r["speed_goal_met"] for r in g if r.get("speed_goal_met") is not None]
        out.append({"runtime": rt, "batch": b, "subtasks": len(g),
                    "latency_ratio_median": statistics.median(r["latency_ratio"] for r in g),
                    "latency_ratio_min": min(r["latency_ratio"] for r in g),
                    "latency_ratio_max": max(r["latency_ratio"] for r in g),
                    **({"cold_latency_ratio_median": statistics.median(r["cold_latency_ratio"] for r in g)}
                       if "cold_latency_ratio" in g[0] else {}),
                    "mac_ratio_median": statistics.median(r["mac_ratio"] for r in g),
                    "dense_ms_median": statistics.median(r["dense_ms"] for r in g),
                    "pruned_ms_median": statistics.median(r["pruned_ms"] for r in g),
                    "bound_met": f"{sum(checked)}/{len(checked)}" if checked else "n/a",
                    "speed_goal_met": f"{sum(goals)}/{len(goals)}" if goals else "n/a",
                    "max_abs_diff_to_eager": max(r["max_abs_diff_to_eager"] for r in g)})
        if "dense_threads" in g[0]:  # --best-threads: the counts each net ran fastest at, and the ratio at each
            out[-1]["dense_threads"] = dict(Counter(str(r["dense_threads"]) for r in g))
            out[-1]["pruned_threads"] = dict(Counter(str(r["pruned_threads"]) for r in g))
            out[-1]["ratio_by_threads_median"] = {k: statistics.median(r["ratio_by_threads"][k] for r in g)
                                                  for k in g[0]["ratio_by_threads"]}
    return out


def format_runtime_table(result: dict) -> str:
    """A plain-text table of a runtime bench: one line per runtime and batch size, then one per subtask."""
    lines = ([f"measured {machine_line(result['machine'])}"] if "machine" in result else []) + [
             f"threads {result['threads']}, {result['repeats']} rounds after {result['warmup']} warm-up rounds; "
             "latency ratio = pruned / dense in the same runtime (median of per-round ratios)" + _settle_note(result),
             f"{'runtime':<17} {'batch':>5} {'n':>3} {'MAC ratio':>9} {'latency ratio (min-max)':>24} {'cold':>6} "
             f"{'dense ms':>9} {'pruned ms':>9} {'bound met':>9} {'goal met':>8} {'max |diff|':>10}"]
    for s in result["summary"]:
        cold = s.get("cold_latency_ratio_median")
        lines.append(f"{s['runtime']:<17} {s['batch']:>5} {s['subtasks']:>3} {s['mac_ratio_median']:9.3f} "
                     f"{s['latency_ratio_median']:8.3f} ({s['latency_ratio_min']:.3f}-{s['latency_ratio_max']:.3f})"
                     f" {'-' if cold is None else format(cold, '.3f'):>6}"
                     f" {s['dense_ms_median']:9.3f} {s['pruned_ms_median']:9.3f} {s['bound_met']:>9} "
                     f"{s.get('speed_goal_met', 'n/a'):>8} {s['max_abs_diff_to_eager']:10.2e}")
    lines.append("medians over subtasks; bound: pruned / dense <= 1.3 x MAC ratio + 0.05, checked at batch >= 64 "
                 "for MAC ratios in [0.15, 0.7]; goal (README): <= 1.15 x MAC ratio + 0.03, onnxruntime at batch "
                 ">= 256; max |diff|: largest logit difference to the eager pruned net")
    for s in result["summary"]:
        if "dense_threads" in s:
            at = ", ".join(f"{k} threads {v:.3f}" for k, v in s["ratio_by_threads_median"].items())
            lines.append(f"{s['runtime']} batch {s['batch']}: each net at its fastest thread count (dense "
                         f"{_counts(s['dense_threads'])}, pruned {_counts(s['pruned_threads'])}); both at the same "
                         f"count: {at}")
    for r in result["subtasks"]:
        if r["bound_met"] is False:
            lines.append(f"  bound missed: {r['runtime']} batch {r['batch']} {','.join(r['classes'])}: "
                         f"{r['latency_ratio']:.3f} > {r['latency_bound']:.3f}")
        if r.get("speed_goal_met") is False:
            lines.append(f"  goal missed: {r['runtime']} batch {r['batch']} {','.join(r['classes'])}: "
                         f"{r['latency_ratio']:.3f} > {r['speed_goal']:.3f}")
    warn = busy_warning(result.get("load_average"), result["threads"])
    if warn:
        lines.append(warn)
    return "\n".join(lines)


def _settle_note(result: dict) -> str:
    """How the timed calls relate to the other nets' (see time_turns), for a table's header line."""
    settle = result.get("settle", 0)
    if not settle:
        return "; each timed call right after another net's"
    cold = " (cold: its first call, right after another net's)" if result.get("mode") == "runtimes" else ""
    return f"; each net timed after {settle} call(s) of its own in its turn{cold}"


def _counts(picks: Dict[str, int]) -> str:
    """{"1": 12, "2": 1} -> "1 thread x12, 2 threads x1"."""
    ordered = sorted(picks.items(), key=lambda kv: int(kv[0]))
    return ", ".join(f"{k} thread{'s' if k != '1' else ''} x{n}" for k, n in ordered)


def uniform_masks(backbone, mac, target: float, multiple: int = 1) -> dict:
    """Masks {site: (1, C)} keeping the same fraction of every utility site (its first channels), the fraction
    found by bisection so that the net's MAC ratio (with all classes) is as close to `target` as it gets without
    passing it; with `multiple` > 1, each site's width is then rounded up to a multiple (or the site size)."""
    sizes = {s.name: s.size for s in backbone.sites() if s.kind == "utility"}

    def widths(f: float) -> dict[str, int]:
        out = {}
        for n, size in sizes.items():
            w = max(1, round(f * size))
            if multiple > 1:
                w = min(size, -(-w // multiple) * multiple)
            out[n] = w
        return out

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if mac(widths(mid), mac.num_classes) / mac.dense <= target:
            lo = mid
        else:
            hi = mid
    w = widths(lo)
    masks = {}
    for n, size in sizes.items():
        m = torch.zeros(1, size)
        m[0, :w[n]] = 1.0
        masks[n] = m
    return masks


def onnx_node_count(path, threads: int, x) -> int:
    """How many nodes onnxruntime runs for an ONNX file, after its graph optimizations (fused and layout nodes
    counted as it runs them)."""
    return len(onnx_node_times(path, threads, x, runs=2, warmup=1))


def one_pixel(net: torch.nn.Module) -> Optional[torch.nn.Module]:
    """A copy of a plain net that takes images of one pixel: the same nodes, kernels and weights, with next to no
    arithmetic, so that its latency is the net's fixed cost per call (the runtime's own work per call and per
    node, each kernel's setup). None for a net that cannot run on one pixel (a classifier on a fixed spatial
    size, say)."""
    import copy

    small = copy.deepcopy(net).eval()
    small.input_shape = [int(small.input_shape[0]), 1, 1]
    try:
        with torch.inference_mode():
            small(torch.zeros(2, *small.input_shape))
    except Exception:  # noqa: BLE001 - any failure means: no one-pixel form of this net
        return None
    return small


def fixed_floor(dense_ms: float, mac_ratio: float, dense_fixed_ms: float, pruned_fixed_ms: float) -> float:
    """The latency ratio a pruned net would have if its kernels' work took exactly `mac_ratio` of the dense net's,
    with each net's fixed cost (the latency of its `one_pixel` form) paid in full: (F_p + r (D - F_d)) / D. A
    reference, not a law: a pruned net whose narrow kernels run less efficiently per MAC than the dense net's
    lands above it, and one whose kernels run more efficiently (its activations fit a cache the dense net's do
    not) below it. Where a net lands well above it, the excess is in its kernels, not in the runtime's fixed
    costs."""
    return (pruned_fixed_ms + mac_ratio * max(0.0, dense_ms - dense_fixed_ms)) / dense_ms


def run_width_bench(factory: str, kwargs: dict, input_shape: Sequence[int], num_classes: int,
                    mac_ratios: Sequence[float], multiples: Sequence[int], runtimes: Sequence[str] = ("eager",),
                    batches: Sequence[int] = (1, 64), threads: int = 2, repeats: int = 10, warmup: int = 3,
                    seed: int = 0, log: Optional[Callable[[str], None]] = None, settle: int = SETTLE) -> dict:
    """A user's network (random weights: latency depends on widths only), pruned to each MAC ratio with the same
    kept fraction in every channel group, widths left as they fall (multiple 1) or rounded up to each of
    `multiples` at the same MAC ratio; each net's latency against the dense net's in each runtime and batch size,
    timed side by side in shuffled rounds (the median of per-round ratios of settled calls, and of first calls as
    `cold_latency_ratio`: see `time_turns`). BN is folded as exports fold it. Each row also has `fixed_ms`, both
    nets' latency on one-pixel images (`one_pixel`: their fixed costs per call, timed side by side), and
    `fixed_floor`, the ratio that kernels scaling exactly with MACs would give beside those costs (None for a net
    with no one-pixel form); in onnxruntime, `nodes`, how many nodes it runs of each net. Each runtime is called
    natively, as in `run_runtime_bench`."""
    from ..deploy.runtimes import session
    from ..nn.custom import CustomBackbone
    from ..prune.budget import MacModel
    from ..prune.metrics import count_macs
    from ..prune.surgery import prune_backbone

    log = log or (lambda m: None)
    c = int(input_shape[0])
    torch.manual_seed(seed)
    bb = CustomBackbone(factory, dict(kwargs), c, num_classes, list(input_shape), [0.5] * c, [0.25] * c).eval()
    mac = MacModel(bb, input_shape)
    gen = torch.Generator().manual_seed(seed)
    xs = {b: torch.rand(b, *input_shape, generator=gen) for b in batches}
    classes = list(range(num_classes))
    rows = []
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="hypersan-widths-") as tmp:
        dense = prune_backbone(bb, None, classes, fold_bn=True)
        dense_macs = count_macs(dense, tuple(input_shape))  # once: every pruned net's ratio is to it
        nets = {}
        for r in mac_ratios:
            for k in (1, *[m for m in multiples if m > 1]):
                net = prune_backbone(bb, uniform_masks(bb, mac, r, k), classes, fold_bn=True)
                nets[(r, k)] = net
        for rt in runtimes:
            d = session(dense, rt, Path(tmp) / "dense" / rt, threads)
            n_dense = _nodes_of(Path(tmp) / "dense" / rt, rt, threads, xs[batches[0]])
            d1 = _one_pixel_session(dense, rt, Path(tmp) / "dense-1px" / rt, threads)
            for (r, k), net in nets.items():
                p = session(net, rt, Path(tmp) / f"r{r}-m{k}" / rt, threads)
                n_pruned = _nodes_of(Path(tmp) / f"r{r}-m{k}" / rt, rt, threads, xs[batches[0]])
                p1 = _one_pixel_session(net, rt, Path(tmp) / f"r{r}-m{k}-1px" / rt, threads)
                got = count_macs(net, tuple(input_shape)) / dense_macs
                for b in batches:
                    n = calls_per_round(b)
                    cold, times = time_turns({"dense": native_calls(d, xs[b], n), "pruned": native_calls(p, xs[b], n)},
                                             warmup, repeats, seed, settle)
                    ratio = paired_ratio(times["pruned"], times["dense"])
                    dense_ms = 1e3 * statistics.median(times["dense"]) / n
                    fixed = floor = None
                    if d1 is not None and p1 is not None:  # the same nets on one pixel, in turns of their own
                        x1, n1 = torch.rand(b, c, 1, 1, generator=gen), 20
                        one = time_turns({"dense": native_calls(d1, x1, n1), "pruned": native_calls(p1, x1, n1)},
                                         warmup, repeats, seed, settle)[1]
                        fixed = {k_: 1e3 * statistics.median(v) / n1 for k_, v in one.items()}
                        floor = fixed_floor(dense_ms, got, fixed["dense"], fixed["pruned"])
                    rows.append({"runtime": rt, "batch": b, "target_mac_ratio": r, "multiple": k,
                                 "mac_ratio": got, "latency_ratio": ratio, "fixed_ms": fixed, "fixed_floor": floor,
                                 "nodes": None if n_dense is None else {"dense": n_dense, "pruned": n_pruned},
                                 "cold_latency_ratio": paired_ratio(cold["pruned"], cold["dense"]),
                                 "latency_bound": 1.2 * got + 0.05, "bound_met": ratio <= 1.2 * got + 0.05,
                                 "widths": dict(net.arch["site_widths"]),
                                 "dense_ms": dense_ms,
                                 "pruned_ms": 1e3 * statistics.median(times["pruned"]) / n})
                    log(f"{rt} batch {b} mac {got:.3f} (multiple {k}): latency {ratio:.3f}")
    return {"factory": factory, "kwargs": dict(kwargs), "input_shape": list(input_shape), "threads": threads,
            "repeats": repeats, "warmup": warmup, "settle": settle, "machine": machine(threads), "rows": rows,
            "load_average": load_average()}


def _one_pixel_session(net, runtime: str, folder: Path, threads: int):
    """`net`'s one-pixel form (`one_pixel`) running in `runtime`; None where it has none."""
    from ..deploy.runtimes import session

    small = one_pixel(net)
    return None if small is None else session(small, runtime, folder, threads)


def _nodes_of(folder: Path, runtime: str, threads: int, x: torch.Tensor) -> Optional[int]:
    """The node count onnxruntime runs for the ONNX file `session` wrote into `folder`; None for other runtimes."""
    if runtime != "onnxruntime":
        return None
    from ..deploy.export import FILES

    return onnx_node_count(folder / FILES["onnx"], threads, x[:1].numpy())


# ---------------------------------------------------------------- where the time goes, layer by layer
def _leaf_macs(module: torch.nn.Module, out: torch.Tensor) -> int:
    """Multiply-accumulates per image of a convolution or linear layer's forward, by prune.metrics' rule (output
    pixels per channel times the weight's size; 0 for any other module)."""
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
        return out[0, 0].numel() * module.weight.numel()
    return 0


class LayerClock:
    """Forward hooks on every leaf module of a net that record, per forward, each one's seconds (summed over its
    calls: a module called twice is timed twice), its MACs per image and its widths. Leaves run one after
    another on the CPU, so a leaf's seconds are its own kernels' time (the hooks add a few microseconds each: at
    batch 1 that is a large share, at batch 64 and up a small one). Call `tick` after each forward. `sync`: a
    function that waits for the device's queued work (torch.cuda.synchronize on a GPU), called at each hook."""

    def __init__(self, net: torch.nn.Module, sync: Callable[[], None] = lambda: None):
        self._sync = sync
        self.seconds: Dict[str, List[float]] = {}  # per forward
        self.info: Dict[str, dict] = {}
        self._round: Dict[str, float] = {}
        self._t0: Dict[str, float] = {}
        self._first = True
        self._handles = []
        for name, m in net.named_modules():
            if name and not any(True for _ in m.children()):
                self._handles.append(m.register_forward_pre_hook(self._start(name)))
                self._handles.append(m.register_forward_hook(self._stop(name, m)))

    def _start(self, name: str):
        def hook(module, args):
            self._sync()
            self._t0[name] = time.perf_counter()
        return hook

    def _stop(self, name: str, module: torch.nn.Module):
        def hook(mod, args, out):
            self._sync()
            self._round[name] = self._round.get(name, 0.0) + time.perf_counter() - self._t0.pop(name)
            if self._first and isinstance(out, torch.Tensor):
                widths = (f"{module.in_channels}->{module.out_channels}" if isinstance(module, torch.nn.Conv2d)
                          else f"{module.in_features}->{module.out_features}" if isinstance(module, torch.nn.Linear)
                          else "")
                info = self.info.setdefault(name, {"kind": type(module).__name__, "widths": widths, "macs": 0})
                info["macs"] += _leaf_macs(module, out)
        return hook

    def tick(self) -> None:
        """End of one forward: its per-module sums join the record."""
        for name, s in self._round.items():
            self.seconds.setdefault(name, []).append(s)
        self._round, self._first = {}, False

    def reset(self) -> None:
        self.seconds, self._round = {}, {}

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def layer_profile(engine: PruningEngine, subtasks: Sequence[Subtask], batch: int = 256, threads: int = 2,
                  repeats: int = 10, warmup: int = 3, seed: int = 0, budget: Optional[float] = None,
                  round_to=None, round_mode: str = "up", log: Optional[Callable[[str], None]] = None) -> dict:
    """Where a pruned net's time goes, layer by layer, against the dense net (eager PyTorch, BN folded): each
    leaf module's milliseconds in both nets (median over rounds that run one dense and one pruned forward, in
    a seeded order), its MAC ratio and time ratio, GMAC/s, and its *excess*: the milliseconds the pruned layer
    takes beyond its MAC ratio times the dense layer's time. Layers with a large excess are the ones that run
    slower per MAC once pruned (narrow convolutions, widths off the CPU's vector block)."""
    if repeats < 1 or warmup < 0 or batch < 1 or threads < 1:
        raise ValueError("the layer profile needs repeats >= 1, warmup >= 0, batch >= 1 and threads >= 1")
    log = log or (lambda m: None)
    budget = engine.check_budget(budget)
    round_to = engine.round_multiple(round_to)
    model = engine.model.eval()
    x = torch.rand(batch, *model.info.input_shape, generator=torch.Generator().manual_seed(seed)).to(model.device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    out = []
    with torch_threads(threads):
        dense = engine.subnet(None, fold_bn=True, seed=seed)
        for t in subtasks:
            net = engine.subnet(t, fold_bn=True, seed=seed, budget=budget, round_to=round_to, round_mode=round_mode)
            clocks = {"dense": LayerClock(dense, sync), "pruned": LayerClock(net, sync)}
            nets = {"dense": dense, "pruned": net}
            with torch.inference_mode():
                for _ in range(max(1, warmup)):  # at least one: the clocks read the widths and MACs there
                    for k, n in nets.items():
                        n(x)
                        clocks[k].tick()
                for c in clocks.values():
                    c.reset()
                totals: Dict[str, List[float]] = {"dense": [], "pruned": []}
                for order in round_orders(["dense", "pruned"], repeats, seed):
                    for k in order:
                        totals[k].append(timed(lambda: (nets[k](x), sync())))
                        clocks[k].tick()
            for c in clocks.values():
                c.close()
            out.append(_profile_rows(engine, t, clocks, totals, batch))
            log(f"profiled {','.join(model.info.classes[c] for c in t)}")
    return {"mode": "layers", "runtime": "eager", "batch": batch, "threads": threads, "repeats": repeats,
            "warmup": warmup, "budget": budget, "round_to": round_to, "subtasks": out, "load_average": load_average()}


def _profile_rows(engine: PruningEngine, t: Subtask, clocks: Dict[str, "LayerClock"], totals: Dict[str, List[float]],
                  batch: int) -> dict:
    d, p = clocks["dense"], clocks["pruned"]
    rows = []
    for name, info in d.info.items():
        dense_s = statistics.median(d.seconds[name])
        pi = p.info.get(name)
        pruned_s = statistics.median(p.seconds[name]) if name in p.seconds else 0.0
        mac_ratio = (pi["macs"] / info["macs"]) if pi and info["macs"] else None
        row = {"layer": name, "kind": info["kind"], "dense_widths": info["widths"],
               "pruned_widths": pi["widths"] if pi else "(removed)", "dense_macs": info["macs"],
               "pruned_macs": pi["macs"] if pi else 0, "mac_ratio": mac_ratio,
               "dense_ms": 1e3 * dense_s, "pruned_ms": 1e3 * pruned_s,
               "time_ratio": pruned_s / dense_s if dense_s > 0 else None,
               "dense_gmac_s": info["macs"] * batch / dense_s / 1e9 if info["macs"] and dense_s > 0 else None,
               "pruned_gmac_s": (pi["macs"] * batch / pruned_s / 1e9
                                 if pi and pi["macs"] and pruned_s > 0 else None)}
        # time beyond what the layer's MAC ratio would cost at the dense layer's speed
        row["excess_ms"] = (row["pruned_ms"] - mac_ratio * row["dense_ms"]) if mac_ratio is not None else None
        rows.append(row)
    dense_ms, pruned_ms = (1e3 * statistics.median(totals[k]) for k in ("dense", "pruned"))
    in_layers = {k: sum(r[f"{k}_ms"] for r in rows) for k in ("dense", "pruned")}
    dense_macs = sum(r["dense_macs"] for r in rows)
    return {"classes": [engine.model.info.classes[c] for c in t], "indices": list(t),
            "mac_ratio": sum(r["pruned_macs"] for r in rows) / dense_macs if dense_macs else None,
            "latency_ratio": paired_ratio(totals["pruned"], totals["dense"]),
            "dense_ms": dense_ms, "pruned_ms": pruned_ms,
            # time outside the leaf modules: the forward's own code, functional ops, hooks
            "outside_layers_ms": {"dense": dense_ms - in_layers["dense"], "pruned": pruned_ms - in_layers["pruned"]},
            "layers": rows}


def format_layer_profile(result: dict, top: int = 5) -> str:
    """Plain text: one table per subtask (every leaf module with MACs, then the rest summed), and the layers
    with the largest excess time."""
    lines = ([f"measured {machine_line(result['machine'])}"] if "machine" in result else []) + [
        f"eager PyTorch, BN folded, batch {result['batch']}, {result['threads']} threads, medians of "
        f"{result['repeats']} rounds after {result['warmup']}; excess = pruned ms - MAC ratio x dense ms"]
    for s in result["subtasks"]:
        lines += ["", f"{','.join(s['classes'])}: MAC ratio {s['mac_ratio']:.3f}, latency ratio "
                      f"{s['latency_ratio']:.3f} ({s['pruned_ms']:.2f} / {s['dense_ms']:.2f} ms)",
                  f"{'layer':<32} {'widths dense -> pruned':<24} {'MAC ratio':>9} {'time ratio':>10} "
                  f"{'dense ms':>9} {'pruned ms':>9} {'GMAC/s d/p':>12} {'excess ms':>9}"]
        rest = {"dense": 0.0, "pruned": 0.0}
        for r in s["layers"]:
            if not r["dense_macs"]:
                rest["dense"] += r["dense_ms"]
                rest["pruned"] += r["pruned_ms"]
                continue
            gm = (f"{r['dense_gmac_s']:.0f}/{r['pruned_gmac_s']:.0f}" if r["pruned_gmac_s"] is not None
                  else f"{r['dense_gmac_s']:.0f}/-")
            tr = "-" if r["time_ratio"] is None else f"{r['time_ratio']:.3f}"
            lines.append(f"{r['layer'][:32]:<32} {(r['dense_widths'] + ' -> ' + r['pruned_widths'])[:24]:<24} "
                         f"{r['mac_ratio']:9.3f} {tr:>10} {r['dense_ms']:9.3f} {r['pruned_ms']:9.3f} {gm:>12} "
                         f"{r['excess_ms']:9.3f}")
        out = s["outside_layers_ms"]
        lines.append(f"{'other leaves (no MACs)':<32} {'':<24} {'':>9} {'':>10} {rest['dense']:9.3f} "
                     f"{rest['pruned']:9.3f}")
        lines.append(f"{'outside the leaves':<32} {'':<24} {'':>9} {'':>10} {out['dense']:9.3f} {out['pruned']:9.3f}")
        worst = sorted((r for r in s["layers"] if r["excess_ms"] is not None), key=lambda r: -r["excess_ms"])[:top]
        if worst and worst[0]["excess_ms"] > 0:
            lines.append("largest excess: " + "; ".join(f"{r['layer']} {r['excess_ms']:+.2f} ms" for r in worst
                                                        if r["excess_ms"] > 0))
    warn = busy_warning(result.get("load_average"), result["threads"])
    if warn:
        lines.append(warn)
    return "\n".join(lines)


def onnx_node_times(path, threads: int, x, runs: int, warmup: int) -> Dict[str, dict]:
    """Each node of an ONNX file as onnxruntime runs it (after its graph optimizations: fused and blocked-layout
    nodes are what it times): {node name: {"op", "shape", "us"}}, `us` the median kernel time over `runs` runs
    after `warmup`, read from onnxruntime's own profiler."""
    from ..deploy.runtimes import onnx_session

    sess = onnx_session(path, threads, profile=True)
    feed = {"images": x}
    for _ in range(warmup + runs):
        sess.run(None, feed)
    events = Path(sess.end_profiling())
    try:
        per: Dict[str, List[float]] = {}
        info: Dict[str, dict] = {}
        for e in json.loads(events.read_text()):
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            name = e["name"][: -len("_kernel_time")]
            per.setdefault(name, []).append(float(e["dur"]))
            shape = (e.get("args", {}).get("output_type_shape") or [{}])[0]
            info[name] = {"op": e.get("args", {}).get("op_name", "?"), "shape": next(iter(shape.values()), [])}
    finally:
        events.unlink(missing_ok=True)
    if not per:
        raise RuntimeError(f"onnxruntime's profile of {path} holds no node timings (its event format may have "
                           "changed); profile eager PyTorch instead: leave out --runtime")
    return {n: {**info[n], "us": statistics.median(v[warmup:] or v)} for n, v in per.items()}


def _own_names(nodes: Dict[str, dict], net: str) -> Dict[str, dict]:
    """Node names that can be matched across two nets: the exporter's names stay, but the layout conversions
    onnxruntime adds (around widths off its channel block: `ReorderOutput`, then `ReorderOutput_token_N` in the
    order it made them) get the net's name, so that a conversion in one net is not paired with another one in
    the other."""
    return {(f"{n} ({net})" if "_token_" in n or v["op"].startswith("Reorder") else n): v for n, v in nodes.items()}


def onnx_layer_profile(engine: PruningEngine, subtasks: Sequence[Subtask], batch: int = 256, threads: int = 2,
                       repeats: int = 10, warmup: int = 3, seed: int = 0, budget: Optional[float] = None,
                       round_to=None, round_mode: str = "up", log: Optional[Callable[[str], None]] = None) -> dict:
    """Where a pruned net's time goes in onnxruntime, node by node, against the dense net: both nets exported as
    `hypersan prune --format onnx` writes them, each run `warmup + repeats` times back to back under onnxruntime's
    profiler, each node's median kernel time in both (nodes matched by name: pruning keeps the graph's shape),
    its time ratio, and its *excess*: the microseconds it takes beyond the whole net's MAC ratio times its dense
    time. A node found in one net only is a layout conversion onnxruntime added there (widths off its channel
    block) or the op that replaced one. Time outside the kernels (the session's own work per run) is not in
    these figures."""
    if repeats < 1 or warmup < 0 or batch < 1 or threads < 1:
        raise ValueError("the layer profile needs repeats >= 1, warmup >= 0, batch >= 1 and threads >= 1")
    log = log or (lambda m: None)
    budget = engine.check_budget(budget)
    round_to = engine.round_multiple(round_to)
    info = engine.model.info
    x = torch.rand(batch, *info.input_shape, generator=torch.Generator().manual_seed(seed)).numpy()
    out = []
    with tempfile.TemporaryDirectory(prefix="hypersan-onnx-profile-") as tmp:
        dense = _own_names(onnx_node_times(export_onnx(engine.subnet(None, fold_bn=True, seed=seed),
                                                       Path(tmp) / "dense.onnx"), threads, x, repeats, warmup), "dense")
        for i, t in enumerate(subtasks):
            net = engine.subnet(t, fold_bn=True, seed=seed, budget=budget, round_to=round_to, round_mode=round_mode)
            r = engine.cost(net)["mac_ratio"]
            pruned = _own_names(onnx_node_times(export_onnx(net, Path(tmp) / f"s{i}.onnx"), threads, x, repeats,
                                                warmup), "pruned")
            rows = []
            for name in list(dense) + [n for n in pruned if n not in dense]:
                d, p = dense.get(name), pruned.get(name)
                d_us, p_us = (d or {}).get("us", 0.0), (p or {}).get("us", 0.0)
                rows.append({"node": name, "op": (d or p)["op"], "dense_shape": (d or {}).get("shape"),
                             "pruned_shape": (p or {}).get("shape"), "dense_us": d_us, "pruned_us": p_us,
                             "time_ratio": p_us / d_us if d_us > 0 else None, "excess_us": p_us - r * d_us})
            totals = {k: sum(row[f"{k}_us"] for row in rows) for k in ("dense", "pruned")}
            out.append({"classes": [info.classes[c] for c in t], "indices": list(t), "mac_ratio": r,
                        "kernel_ratio": totals["pruned"] / totals["dense"], "dense_us": totals["dense"],
                        "pruned_us": totals["pruned"], "nodes": rows})
            log(f"profiled {','.join(info.classes[c] for c in t)}")
    return {"mode": "layers", "runtime": "onnxruntime", "batch": batch, "threads": threads, "repeats": repeats,
            "warmup": warmup, "budget": budget, "round_to": round_to, "subtasks": out, "load_average": load_average()}


def format_onnx_profile(result: dict, top: int = 5) -> str:
    """Plain text of onnx_layer_profile: one table per subtask, node by node, and the nodes of largest excess."""
    lines = ([f"measured {machine_line(result['machine'])}"] if "machine" in result else []) + [
        f"onnxruntime (its optimized graph, BN folded), batch {result['batch']}, {result['threads']} threads, "
        f"medians of {result['repeats']} runs after {result['warmup']}, each net's runs back to back; "
        "excess = pruned us - MAC ratio of the net x dense us"]
    for s in result["subtasks"]:
        lines += ["", f"{','.join(s['classes'])}: MAC ratio {s['mac_ratio']:.3f}, kernel time ratio "
                      f"{s['kernel_ratio']:.3f} ({s['pruned_us'] / 1e3:.2f} / {s['dense_us'] / 1e3:.2f} ms in kernels)",
                  f"{'node':<28} {'op':<18} {'output dense -> pruned':<34} {'dense us':>9} {'pruned us':>9} "
                  f"{'ratio':>6} {'excess us':>9}"]
        for r in s["nodes"]:
            shapes = f"{r['dense_shape'] or '-'} -> {r['pruned_shape'] or '-'}".replace(" ", "").replace("->", " -> ")
            ratio = "-" if r["time_ratio"] is None else f"{r['time_ratio']:.3f}"
            lines.append(f"{r['node'][:28]:<28} {r['op'][:18]:<18} {shapes[:34]:<34} {r['dense_us']:9.0f} "
                         f"{r['pruned_us']:9.0f} {ratio:>6} {r['excess_us']:9.0f}")
        worst = sorted(s["nodes"], key=lambda r: -r["excess_us"])[:top]
        if worst and worst[0]["excess_us"] > 0:
            lines.append("largest excess: " + "; ".join(f"{r['node']} ({r['op']}) {r['excess_us']:+.0f} us"
                                                        for r in worst if r["excess_us"] > 0))
    warn = busy_warning(result.get("load_average"), result["threads"])
    if warn:
        lines.append(warn)
    return "\n".join(lines)
