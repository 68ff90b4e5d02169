"""The subnet service behind the HTTP API: ids, the build queue, bounded caches in memory and on disk, exports
and forwards, each on its own threads so that nothing holds up the event loop.

A subnet's id is a hash of the checkpoint's fingerprint (weights, config, calibration seed), the canonical class set
and the widths, so the same request gives the same id, on every server of the same checkpoint. Built subnets
live in an LRU in memory and, as artifact folders (config.json + model.safetensors, written atomically), in the
cache folder; ONNX and .pt2 files are exported on their first download. See docs/SERVING.md.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..data.datasets import DatasetError
from ..deploy.export import FILES, export_onnx, export_pt2, load_subnet, save_subnet
from ..io import (MARKER, ArtifactError, atomic_write_json, fsync_dir, fsync_file, host_tag, is_hypersan_dir,
                  read_json, sweep_stale, write_json)
from ..prune.engine import PruningEngine
from ..prune.stats import masks_fingerprint

SERVE_FORMAT = 1  # bump when what an id stands for changes
CACHE_KIND = "serve-cache"  # the marker kind of a cache folder (see io.atomic_dir)
ID_RE = re.compile(r"[0-9a-f]{24}")
DOWNLOADS = {"model.onnx": "onnx", "model.pt2": "pt2", "model.safetensors": "safetensors", "config.json": None}
HEALTH_PATHS = ("/healthz", "/v2/health/live", "/v2/health/ready")
FIRE_THRESHOLD = 0.5  # /v1/predict names a class only where its sigmoid probability exceeds this


def bearer_ok(header: str, token: str) -> bool:
    """Whether an Authorization header carries this bearer token (compared in constant time)."""
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode())


MAX_ROUND_TO = 4096
_STAGING = "staging"  # temporaries of lazily exported files: `.staging.tmp-<host>-<pid>-<random>` in the cache


class ServeError(Exception):
    """An answer other than success: HTTP status, message, and extra JSON fields."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None, **extra):
        super().__init__(message)
        self.status, self.message, self.extra, self.headers = status, message, extra, headers


@dataclasses.dataclass
class Subnet:
    id: str
    meta: dict  # what GET /v1/subnets/{id} returns (without links)
    net: torch.nn.Module
    path: Path


def checkpoint_fingerprint(engine: PruningEngine) -> str:
    """What a subnet's weights depend on besides its classes: the model's weights, its config (calibration, data,
    generator), the engine's calibration seed and the serve format."""
    cfg = dataclasses.asdict(engine.model.config)
    cfg.get("data", {}).pop("data_dir", None)  # where the images are read from is not what they are
    cfg.pop("train", None)  # execution settings of training
    blob = json.dumps({"format": SERVE_FORMAT, "weights": engine.weights_fingerprint(), "config": cfg,
                       "seed": engine.seed, "classes": list(engine.model.classes)}, sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def rss_bytes() -> Optional[int]:
    """This process's resident memory in bytes (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class SubnetService:
    """Builds subnets with one engine, keeps them in an LRU and a folder, and runs them.

    Builds run on one worker thread (the engine is not thread-safe; on a small CPU parallel builds gain nothing),
    exports of ONNX / .pt2 on another, grounding on a third and forwards on a pool of their own, so that no build
    or export ever holds up a prediction on a built subnet, nor the event loop. Concurrent identical requests
    share one build.
    """

    def __init__(self, engine: PruningEngine, cache_dir: Optional[str | os.PathLike] = None, cache_size: int = 32,
                 predict_workers: int = 4, queue_size: int = 16, disk_items: int = 256, disk_bytes: int = 1 << 30,
                 stats_entries: int = 64):
        """`cache_size`: subnets kept in memory; `queue_size`: builds waiting or running at once (more get 503
        with Retry-After); `disk_items` / `disk_bytes`: artifact folders kept in the cache folder, the least
        recently used removed first; `stats_entries`: BN statistics the engine keeps in memory."""
        for name, v in (("cache size", cache_size), ("queue size", queue_size), ("disk items", disk_items),
                        ("disk bytes", disk_bytes), ("statistics entries", stats_entries)):
            if v < 1:
                raise ValueError(f"the {name} must be at least 1, got {v}")
        self.engine = engine
        self.cache_size = cache_size
        self.queue_size, self.disk_items, self.disk_bytes = queue_size, disk_items, disk_bytes
        # the engine's statistics are bounded too: what it was loaded with, plus stats_entries more
        engine.cache.max_entries = len(engine.cache) + stats_entries
        self._used: dict[str, float] = {}  # artifact folder -> last use (monotonic order of use)
        self._ids: dict[tuple, str] = {}  # (class set, round_to, budget, guard grid or False) -> subnet id
        self.fingerprint = checkpoint_fingerprint(engine)
        self.input_shape = tuple(int(d) for d in engine.model.info.input_shape)
        self.persistent = cache_dir is not None
        self.dir = _open_cache_dir(cache_dir) if cache_dir is not None else Path(
            tempfile.mkdtemp(prefix="hypersan-serve-"))
        self._lru: OrderedDict[str, Subnet] = OrderedDict()
        self._lock = threading.Lock()  # the LRU and counters, touched from worker threads
        self._inflight: dict[tuple, asyncio.Future] = {}
        self._build_pool = ThreadPoolExecutor(1, thread_name_prefix="hypersan-build")
        self._export_pool = ThreadPoolExecutor(1, thread_name_prefix="hypersan-export")
        self._ground_pool = ThreadPoolExecutor(1, thread_name_prefix="hypersan-ground")
        # ids run the generator (milliseconds): on a worker of their own, never queued behind a build; a built
        # subnet is found on disk at once after a restart, while another class set calibrates
        self._id_pool = ThreadPoolExecutor(1, thread_name_prefix="hypersan-ids")
        self._predict_pool = ThreadPoolExecutor(max(1, predict_workers), thread_name_prefix="hypersan-predict")
        self.counts = {"builds": 0, "loads": 0, "exports": 0, "predictions": 0, "images": 0}
        self.started = time.time()

    # ------------------------------------------------------------ ids
    def subnet_id(self, subtask: tuple[int, ...], round_to: int = 0, budget: Optional[float] = None,
                  guard: bool = False) -> str:
        """The id of the subnet of a canonical class set (sorted indices) under this checkpoint: named by its
        masks, so that roundings that give the same widths give one id and one folder, and by its budget (a
        budget-conditioned model's). Computed once per (class set, rounding, budget, guard); it runs the generator
        (the async paths call it on the id worker). A guarded request is named by its class set, rounding, budget
        and the guard's grid, not by masks: which net it serves is decided by calibrating several, on the build
        worker."""
        key = self._id_key(subtask, round_to, budget, guard)
        if key not in self._ids:
            if guard:
                named = {"checkpoint": self.fingerprint, "classes": list(subtask), "round_to": round_to,
                         "guard": list(self.engine.guard_grid)}
            else:
                masks, _ = self.engine.masks(tuple(subtask), round_to=round_to, budget=budget)
                named = {"checkpoint": self.fingerprint, "classes": list(subtask), "masks": masks_fingerprint(masks)}
            if budget is not None:
                named["budget"] = budget
            blob = json.dumps(named)
            self._ids[key] = hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()
        return self._ids[key]

    def _id_key(self, subtask: tuple, round_to: int, budget: Optional[float], guard: bool) -> tuple:
        """What an id is remembered by in memory: the request, and for a guarded one the grid it weighs."""
        return tuple(subtask), round_to, budget, guard and tuple(self.engine.guard_grid)

    @staticmethod
    def check_id(subnet_id: str) -> str:
        """An id as given by this server (24 hex digits), or a 404: nothing else is ever joined to a path."""
        if not isinstance(subnet_id, str) or not ID_RE.fullmatch(subnet_id):
            raise ServeError(404, f"no subnet {subnet_id!r}: subnet ids are 24 lowercase hex digits, as returned by "
                                  "POST /v1/subnets")
        return subnet_id

    async def resolve(self, request: Optional[str] = None, classes: Optional[list] = None,
                      budget: Optional[float] = None) -> tuple[tuple, Optional[dict], Optional[float]]:
        """(canonical subtask, grounding dict or None, budget or None) of a request in words or a list of classes,
        and a budget (given, or stated in the words); 422 when the words cannot be grounded, a class is unknown, or
        the budget is not one this model takes."""
        from ..language.grounding import GroundingError
        from ..nn.generators import BudgetError

        if (request is None) == (classes is None):
            raise ServeError(422, 'give exactly one of "request" (words, e.g. "shoes and bags") or "classes" (a list '
                                  'of class names or indices)')
        try:
            words, budget = self.engine.split_budget(request if request is not None else classes, budget)
        except GroundingError as e:
            raise ServeError(422, str(e), grounding=e.to_dict()) from None
        except BudgetError as e:
            raise ServeError(422, str(e)) from None
        if classes is not None:
            try:
                return self.engine.model.resolve(classes), None, budget
            except ValueError as e:
                raise ServeError(422, str(e), known_classes=list(self.engine.model.classes)) from None
        if not words.strip():
            raise ServeError(422, 'the request is empty; name classes or groups in words, e.g. "shoes and bags"')
        try:
            g = await self._run(self._ground_pool, self.engine.ground, words)
        except GroundingError as e:
            raise ServeError(422, str(e), grounding=e.to_dict()) from None
        return tuple(g.indices), g.to_dict(), budget

    # ------------------------------------------------------------ single flight and pools
    async def _run(self, pool: ThreadPoolExecutor, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _once(self, key: tuple, pool: ThreadPoolExecutor, fn: Callable, *args):
        """Run fn(*args) on the pool, once for every caller that asks with the same key while it runs."""
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().run_in_executor(pool, fn, *args)
            self._inflight[key] = fut

            def done(f, key=key):
                self._inflight.pop(key, None)
                if not f.cancelled():
                    f.exception()  # retrieved: a failure is reported to the waiters, not logged as unretrieved

            fut.add_done_callback(done)
        return await asyncio.shield(fut)  # a caller that goes away does not cancel the build the others wait for

    def building(self, subnet_id: str) -> bool:
        return ("subnet", subnet_id) in self._inflight

    def pending_builds(self) -> int:
        return sum(1 for k in self._inflight if k[0] == "subnet")

    # ------------------------------------------------------------ the LRU and the folder
    def _remember(self, sub: Subnet) -> Subnet:
        with self._lock:
            self._used[sub.id] = time.monotonic()
            self._lru[sub.id] = sub
            self._lru.move_to_end(sub.id)
            while len(self._lru) > self.cache_size:
                self._lru.popitem(last=False)  # its folder stays: a later request loads it again
        return sub

    def _cached(self, subnet_id: str) -> Optional[Subnet]:
        with self._lock:
            sub = self._lru.get(subnet_id)
            if sub is not None:
                self._lru.move_to_end(subnet_id)
                self._used[subnet_id] = time.monotonic()
            return sub

    def _trim_disk(self) -> None:
        """Remove the least recently used artifact folders beyond disk_items / disk_bytes; never one whose subnet
        is in memory (its files are still offered for download)."""
        folders = []
        for p in self.dir.iterdir():
            if ID_RE.fullmatch(p.name) and is_hypersan_dir(p, "artifact"):
                size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
                folders.append((self._used.get(p.name, p.stat().st_mtime - time.time() + time.monotonic()), p, size))
        folders.sort(key=lambda f: f[0])
        total = sum(f[2] for f in folders)
        with self._lock:
            keep = set(self._lru)
        for used, p, size in folders:
            if len(folders) <= self.disk_items and total <= self.disk_bytes:
                break
            if p.name in keep:
                continue
            shutil.rmtree(p, ignore_errors=True)
            self._used.pop(p.name, None)
            folders = [f for f in folders if f[1] != p]
            total -= size

    def in_memory(self) -> list[str]:
        with self._lock:
            return list(self._lru)

    def _on_disk(self, subnet_id: str) -> Optional[dict]:
        """The metadata of a complete artifact folder of this id and checkpoint, or None."""
        path = self.dir / subnet_id
        if not is_hypersan_dir(path, "artifact"):
            return None
        try:
            cfg = read_json(path / "config.json", max_bytes=1 << 22)
        except ArtifactError:
            return None
        meta = cfg.get("serve") if isinstance(cfg, dict) else None
        if not isinstance(meta, dict) or meta.get("id") != subnet_id or meta.get("checkpoint") != self.fingerprint:
            return None
        return meta

    def _load(self, subnet_id: str) -> Optional[Subnet]:
        """A subnet from its folder (no engine work), or None when there is none."""
        meta = self._on_disk(subnet_id)
        if meta is None:
            return None
        net = load_subnet(self.dir / subnet_id)
        with self._lock:
            self.counts["loads"] += 1
        return self._remember(Subnet(subnet_id, meta, net, self.dir / subnet_id))

    def _build(self, subnet_id: str, subtask: tuple, round_to: int, grounding: Optional[dict],
               budget: Optional[float] = None, guard: bool = False) -> tuple[Subnet, bool]:
        """(subnet, built): loaded from its folder when there, else pruned, calibrated if needed, and written."""
        sub = self._cached(subnet_id) or self._load(subnet_id)
        if sub is not None:
            return sub, False
        t0 = time.perf_counter()
        engine = self.engine
        names = [engine.model.classes[i] for i in subtask]
        net = engine.subnet(names, fold_bn=True, round_to=round_to, budget=budget, guard=guard)
        cost = engine.cost(net)
        meta = {"id": subnet_id, "classes": list(net.classes), "subtask": list(subtask), "round_to": round_to,
                "budget": budget, **({"guard": net.guard} if guard else {}),
                "mac_ratio": cost["mac_ratio"], "param_ratio": cost["param_ratio"], "macs": cost["macs"],
                "params": cost["params"], "widths": dict(net.arch["site_widths"]), "input_shape": list(self.input_shape),
                "checkpoint": self.fingerprint, "source": str(getattr(engine.model, "source", "") or ""),
                "build_seconds": round(time.perf_counter() - t0, 4), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime())}
        if grounding is not None:
            meta["request"] = grounding.get("request")
        path = self.dir / subnet_id
        # force only over an artifact folder (a stale or corrupt one of this id); anything else is never replaced
        save_subnet(net, path, ["safetensors"], subtask=list(subtask), extra={"serve": meta},
                    force=is_hypersan_dir(path, "artifact"))
        with self._lock:
            self.counts["builds"] += 1
            self._used[subnet_id] = time.monotonic()
        sub = self._remember(Subnet(subnet_id, meta, net, path))
        self._trim_disk()
        return sub, True

    async def create(self, subtask: tuple, round_to: int = 0, grounding: Optional[dict] = None,
                     budget: Optional[float] = None, guard: bool = False) -> tuple[Subnet, bool]:
        """(subnet, built now) of a class set (at a budget, guarded or not): from memory, its folder, or built
        (once for concurrent callers)."""
        if guard:
            try:
                self.engine.check_guard()
            except ValueError as e:  # BudgetError: the model takes no budget
                raise ServeError(422, str(e)) from None
        key = self._id_key(subtask, round_to, budget, guard)
        try:
            subnet_id = self._ids.get(key) or await self._run(self._id_pool, self.subnet_id, subtask, round_to, budget,
                                                              guard)
        except ValueError as e:  # a budget below the smallest subnet of these classes
            raise ServeError(422, str(e)) from None
        sub = self._cached(subnet_id)
        if sub is not None:
            return sub, False
        if ("subnet", subnet_id) not in self._inflight:
            try:  # built before (maybe before a restart): loaded on the predict pool, not behind the builds
                sub = await self._once(("load", subnet_id), self._predict_pool, self._load, subnet_id)
            except ArtifactError:
                sub = None  # unreadable: rebuilt below, over the broken folder
            if sub is not None:
                return sub, False
        if ("subnet", subnet_id) not in self._inflight and self.pending_builds() >= self.queue_size:
            raise ServeError(503, f"{self.queue_size} builds are queued already (--queue-size); retry in a few "
                                  "seconds", headers={"Retry-After": str(max(1, self.pending_builds()))})
        try:
            return await self._once(("subnet", subnet_id), self._build_pool, self._build, subnet_id, subtask,
                                    round_to, grounding, budget, guard)
        except DatasetError as e:
            raise ServeError(503, f"cannot build this subnet: {e}") from None
        except (ArtifactError, OSError) as e:
            raise ServeError(503, f"cannot write this subnet to the cache folder {self.dir}: {e}") from None
        except ValueError as e:
            raise ServeError(422, str(e)) from None

    async def get(self, subnet_id: str) -> Subnet:
        """A subnet by id: from memory or its folder; 404 when this checkpoint's server never built it."""
        self.check_id(subnet_id)
        sub = self._cached(subnet_id)
        if sub is None:
            pending = self._inflight.get(("subnet", subnet_id))
            if pending is not None:  # being built: wait for it
                return (await asyncio.shield(pending))[0]
            try:  # a folder load takes milliseconds: on the predict pool, not behind builds
                sub = await self._once(("load", subnet_id), self._predict_pool, self._load, subnet_id)
            except ArtifactError as e:
                raise ServeError(503, f"subnet {subnet_id}'s folder in the cache cannot be read: {e}") from None
        if sub is None:
            raise ServeError(404, f"no subnet {subnet_id}: build it first with POST /v1/subnets (ids depend on the "
                                  "checkpoint; one built by another checkpoint's server is unknown here)")
        return sub

    def known(self, subnet_id: str) -> bool:
        """Whether a subnet is ready to serve, in memory or in its folder (no loading)."""
        return ID_RE.fullmatch(subnet_id) is not None and (
            self._cached(subnet_id) is not None or self._on_disk(subnet_id) is not None)

    # ------------------------------------------------------------ files
    def _export(self, sub: Subnet, fmt: str) -> Path:
        """Export a format into the subnet's folder: written to a staging file, then renamed into place (a file
        there is always whole), and config.json's list of files updated the same way."""
        target = sub.path / FILES[fmt]
        if target.is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{_STAGING}.tmp-{host_tag()}-{os.getpid()}-", dir=self.dir))
        try:
            tmp = staging / FILES[fmt]
            {"onnx": export_onnx, "pt2": export_pt2}[fmt](sub.net, tmp)
            fsync_file(tmp)
            cfg = read_json(sub.path / "config.json")
            cfg.setdefault("files", {})[fmt] = FILES[fmt]
            write_json(staging / "config.json", cfg)
            fsync_file(staging / "config.json")
            os.replace(tmp, target)
            os.replace(staging / "config.json", sub.path / "config.json")
            fsync_dir(sub.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        with self._lock:
            self.counts["exports"] += 1
        return target

    async def file(self, subnet_id: str, name: str) -> Path:
        """The path of a downloadable file of a subnet, exported first when it is ONNX or .pt2 and not there."""
        if name not in DOWNLOADS:
            raise ServeError(404, f"no file {name!r}; a subnet has {', '.join(DOWNLOADS)}")
        sub = await self.get(subnet_id)
        fmt = DOWNLOADS[name]
        path = sub.path / name
        if path.is_file():
            return path
        return await self._once(("export", subnet_id, fmt), self._export_pool, self._export, sub, fmt)

    # ------------------------------------------------------------ inference
    def _forward(self, net: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            t = torch.from_numpy(x)
            t = t.float().div_(255.0) if t.dtype == torch.uint8 else t
            logits = net(t).float().numpy()
        ms = (time.perf_counter() - t0) * 1000
        with self._lock:
            self.counts["predictions"] += 1
            self.counts["images"] += len(x)
        return logits, ms

    async def forward(self, sub: Subnet, x: np.ndarray) -> tuple[np.ndarray, float]:
        """(logits (N, K), milliseconds of the forward) of a batch: uint8 pixels or float32 in [0, 1]."""
        return await self._run(self._predict_pool, self._forward, sub.net, x)

    # ------------------------------------------------------------ life
    def close(self) -> None:
        for pool in (self._build_pool, self._export_pool, self._ground_pool, self._id_pool, self._predict_pool):
            pool.shutdown(wait=True, cancel_futures=True)
        if not self.persistent:
            shutil.rmtree(self.dir, ignore_errors=True)  # a private temporary folder of this process


def _open_cache_dir(cache_dir: str | os.PathLike) -> Path:
    """The cache folder, created (with a marker) when absent or empty; one that holds anything else and has no
    serve-cache marker is refused. Leftovers of builds and exports killed midway are swept."""
    path = Path(os.path.abspath(cache_dir))
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ArtifactError(f"--cache-dir {path} is not a folder; name a folder for the subnet cache")
    path.mkdir(parents=True, exist_ok=True)
    if not is_hypersan_dir(path, CACHE_KIND):
        if any(path.iterdir()):
            raise ArtifactError(f"--cache-dir {path} is not empty and is not a hypersan serve cache (it has no "
                                f"{MARKER} of kind {CACHE_KIND!r}); it is left as it is: choose an empty or new folder")
        atomic_write_json(path / MARKER, {"kind": CACHE_KIND, "format": 1})
    _sweep_cache(path)
    return path


def _sweep_cache(path: Path) -> None:
    """Remove temporaries of dead processes: atomic_dir's `.<id>.tmp-*` folders and the staging folders."""
    sweep_stale(path / _STAGING)
    pattern = re.compile(r"\.([0-9a-f]{24})\.(tmp|old)-[A-Za-z0-9_]+-[0-9]+-[A-Za-z0-9_]+")
    for e in os.scandir(path):
        m = pattern.fullmatch(e.name)
        if m is not None:
            sweep_stale(path / m[1])


__all__ = ["SubnetService", "Subnet", "ServeError", "checkpoint_fingerprint", "bearer_ok", "rss_bytes", "CACHE_KIND",
           "ID_RE", "HEALTH_PATHS", "FIRE_THRESHOLD", "MAX_ROUND_TO"]
