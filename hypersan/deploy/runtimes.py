"""Running a plain net where it is deployed: eager PyTorch, a torch.export program (.pt2), or ONNX Runtime.

`session(net, runtime, folder, threads)` exports the net to `folder` in that runtime's format (nothing for
eager), loads it back the way a deployment would (torch.export.load / onnxruntime.InferenceSession), and
returns a `Runner`: a callable from a float32 batch to logits, whose `native` call (the runtime's own input and
output types) is what `hypersan bench --runtime` times. `sessions(net, runtime, folder, counts)` exports once and
opens one runner per thread count (`hypersan bench --best-threads`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .export import FILES, INT8_FILE, export_onnx, export_pt2

RUNTIMES = ("eager", "pt2", "onnxruntime", "onnxruntime-int8")


def parse_runtimes(spec: str) -> list[str]:
    """Runtimes from "eager,onnxruntime" (validated, deduplicated, in the order given)."""
    items = [s.strip().lower() for s in spec.split(",") if s.strip()]
    bad = [s for s in items if s not in RUNTIMES]
    if bad or not items:
        raise ValueError(f"unknown runtime(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(RUNTIMES)}")
    return list(dict.fromkeys(items))


def onnx_session(path: str | os.PathLike, threads: int, spin: bool = False, profile: bool = False):
    """An onnxruntime CPU session with `threads` intra-op threads, one inter-op thread, all graph optimizations,
    and (unless `spin`) worker threads that sleep between ops instead of spinning. onnxruntime's default, spinning,
    keeps each worker busy-waiting on a core after every op: on a machine with as many cores as threads the
    spinning workers take cycles from the thread that has work, and on 2 cores a Fashion-MNIST net at batch 256
    ran 1.4x (dense) to 2.4x (pruned) slower with it (docs/RESULTS.md, *Deployment*). `profile`: onnxruntime's
    profiler records every node's kernel time, written to a JSON file in the temporary folder that
    `end_profiling()` names."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("the onnxruntime runtime needs onnxruntime: pip install 'hypersan[onnx]'") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        import tempfile

        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"hypersan-ort-profile-{os.getpid()}")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class Runner:
    """A net loaded in a deployment runtime. Called with a float32 torch batch, it returns torch logits, so every
    runtime can be checked against the eager net. `native(a)` is the runtime's own call on its own input type (a
    torch tensor for eager and pt2, a float32 numpy array for onnxruntime), returning that runtime's output, and
    `prepare(x)` turns a torch batch into that input. Benchmarks time `native` on prepared inputs: what a
    deployment in that runtime pays per call, without the conversions between torch and numpy that only a
    torch caller makes (in onnxruntime about 3 microseconds a call on the Zen 4 of docs/RESULTS.md: a twentieth of
    the width-32 test MobileNet's batch-1 latency once pruned to an eighth of its MACs, 0.055 ms)."""

    def __init__(self, native: Callable, prepare: Callable = lambda x: x, finish: Callable = lambda y: y):
        self.native, self.prepare, self._finish = native, prepare, finish

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(self.native(self.prepare(x)))


def sessions(net: nn.Module, runtime: str, folder: str | os.PathLike, threads: Sequence[int],
             int8_images: Optional[torch.Tensor] = None) -> dict[int, Runner]:
    """`net` running in `runtime` (see RUNTIMES) at each thread count of `threads`, as {count: Runner}; its files
    are written into `folder` once and every count's runner reads the same file. The torch runtimes use torch's
    intra-op thread count, which the caller sets (one runner serves every count); onnxruntime gets one session per
    count. onnxruntime-int8 needs `int8_images`, the calibration images of quantize.quantize_int8."""
    counts = list(dict.fromkeys(int(k) for k in threads))
    if not counts or min(counts) < 1:
        raise ValueError(f"thread counts must be >= 1, got {list(threads)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    if runtime in ("eager", "pt2"):
        run = Runner(net) if runtime == "eager" else \
            Runner(torch.export.load(str(export_pt2(net, folder / FILES["pt2"]))).module())
        return {k: run for k in counts}
    if runtime in ("onnxruntime", "onnxruntime-int8"):
        if runtime == "onnxruntime-int8" and int8_images is None:  # before any export: nothing is done in vain
            raise ValueError("the onnxruntime-int8 runtime needs calibration images (int8_images)")
        path = export_onnx(net, folder / FILES["onnx"])
        if runtime == "onnxruntime-int8":
            from .quantize import quantize_int8

            quantize_int8(path, folder / INT8_FILE, int8_images)
            path = folder / INT8_FILE
        return {k: _onnx_runner(onnx_session(path, k)) for k in counts}
    raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")


def _onnx_runner(sess) -> Runner:
    output = ["logits"]
    return Runner(lambda a: sess.run(output, {"images": a})[0],
                  prepare=lambda x: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32),
                  finish=torch.from_numpy)


def session(net: nn.Module, runtime: str, folder: str | os.PathLike, threads: int,
            int8_images: Optional[torch.Tensor] = None) -> Runner:
    """`net` running in `runtime` at `threads` threads, its files written into `folder` (see `sessions`)."""
    return sessions(net, runtime, folder, [threads], int8_images)[threads]


__all__ = ["RUNTIMES", "Runner", "parse_runtimes", "session", "sessions", "onnx_session"]
