"""The pruning engine over HTTP: build, cache, download and run subtask networks (`hypersan serve`).

    app = create_app(PruningEngine.from_pretrained("fmnist_b16"), cache_dir="serve-cache")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Two APIs over one SubnetService:
- v1: POST /v1/subnets ({"request": "shoes and bags"} or {"classes": [...]}) builds a subnet and returns its id;
  GET /v1/subnets/{id}[/model.onnx|model.pt2|model.safetensors|config.json]; POST /v1/predict; GET /healthz.
- the Open Inference Protocol (KServe V2) REST API, a subnet's id being its model name.

A subnet's id is a hash of the checkpoint's fingerprint (weights, config, calibration seed), the canonical class set
and the rounding, so the same request gives the same id, on every server of the same checkpoint. Built subnets
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
import logging
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

try:
    from fastapi import FastAPI, Request, Security
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.security import HTTPBearer
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(f"hypersan serve needs the serve extra ({e.name} is missing): "
                      "pip install 'hypersan[serve]'") from e

from .version import __version__
from .data import DatasetError
from .engine import PruningEngine
from .stats import masks_fingerprint
from .export import FILES, export_onnx, export_pt2, load_subnet, save_subnet
from .io import ArtifactError, MARKER, atomic_write_json, fsync_dir, fsync_file, host_tag, is_hypersan_dir, read_json, sweep_stale, write_json
from .wire import InputError, parse_images, parse_v2_images

SERVE_FORMAT = 1  # bump when what an id stands for changes
CACHE_KIND = "serve-cache"  # the marker kind of a cache folder (see io.atomic_dir)
ID_RE = re.compile(r"[0-9a-f]{24}")
DOWNLOADS = {"model.onnx": "onnx", "model.pt2": "pt2", "model.safetensors": "safetensors", "config.json": None}
HEALTH_PATHS = ("/healthz", "/v2/health/live", "/v2/health/ready")
FIRE_THRESHOLD = 0.5  # /v1/predict names a class only where its sigmoid probability exceeds this


def _bearer_ok(header: str, token: str) -> bool:
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


def _rss_bytes() -> Optional[int]:
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
        self._ids: dict[tuple, str] = {}  # (class set, round_to) -> subnet id
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
    def subnet_id(self, subtask: tuple[int, ...], round_to: int = 0) -> str:
        """The id of the subnet of a canonical class set (sorted indices) under this checkpoint: named by its
        masks, so that roundings that give the same widths give one id and one folder. Computed once per
        (class set, rounding); it runs the generator (the async paths call it on the id worker)."""
        key = (tuple(subtask), round_to)
        if key not in self._ids:
            masks, _ = self.engine.masks(tuple(subtask), round_to=round_to)
            blob = json.dumps({"checkpoint": self.fingerprint, "classes": list(subtask),
                               "masks": masks_fingerprint(masks)})
            self._ids[key] = hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()
        return self._ids[key]

    @staticmethod
    def check_id(subnet_id: str) -> str:
        """An id as given by this server (24 hex digits), or a 404: nothing else is ever joined to a path."""
        if not isinstance(subnet_id, str) or not ID_RE.fullmatch(subnet_id):
            raise ServeError(404, f"no subnet {subnet_id!r}: subnet ids are 24 lowercase hex digits, as returned by "
                                  "POST /v1/subnets")
        return subnet_id

    async def resolve(self, request: Optional[str] = None, classes: Optional[list] = None) -> tuple[tuple, Optional[dict]]:
        """(canonical subtask, grounding dict or None) of a request in words or a list of classes; 422 when the
        words cannot be grounded or a class is unknown."""
        if (request is None) == (classes is None):
            raise ServeError(422, 'give exactly one of "request" (words, e.g. "shoes and bags") or "classes" (a list '
                                  'of class names or indices)')
        if classes is not None:
            try:
                return self.engine.model.resolve(classes), None
            except ValueError as e:
                raise ServeError(422, str(e), known_classes=list(self.engine.model.classes)) from None
        if not request.strip():
            raise ServeError(422, 'the request is empty; name classes or groups in words, e.g. "shoes and bags"')
        from .grounding import GroundingError

        try:
            g = await self._run(self._ground_pool, self.engine.ground, request)
        except GroundingError as e:
            raise ServeError(422, str(e), grounding=e.to_dict()) from None
        return tuple(g.indices), g.to_dict()

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

    def _build(self, subnet_id: str, subtask: tuple, round_to: int, grounding: Optional[dict]) -> tuple[Subnet, bool]:
        """(subnet, built): loaded from its folder when there, else pruned, calibrated if needed, and written."""
        sub = self._cached(subnet_id) or self._load(subnet_id)
        if sub is not None:
            return sub, False
        t0 = time.perf_counter()
        engine = self.engine
        names = [engine.model.classes[i] for i in subtask]
        net = engine.subnet(names, fold_bn=True, round_to=round_to)
        cost = engine.cost(net)
        meta = {"id": subnet_id, "classes": list(net.classes), "subtask": list(subtask), "round_to": round_to,
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

    async def create(self, subtask: tuple, round_to: int = 0, grounding: Optional[dict] = None) -> tuple[Subnet, bool]:
        """(subnet, built now) of a class set: from memory, its folder, or built (once for concurrent callers)."""
        key = (tuple(subtask), round_to)
        subnet_id = self._ids.get(key) or await self._run(self._id_pool, self.subnet_id, subtask, round_to)
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
                                    round_to, grounding)
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


# ------------------------------------------------------------------ request and response models

_CLASS_NAME = Union[StrictStr, StrictInt]


class SubnetRequest(BaseModel):
    """Build (or find) the subnet of a class set."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"request": "shoes and bags"}, {"classes": ["Sneaker", "Bag"]}, {"classes": [7, 8], "round_to": 16}]})
    request: Optional[StrictStr] = Field(None, max_length=1000, description="the class set in words")
    classes: Optional[list[_CLASS_NAME]] = Field(None, max_length=10000, description="class names or indices")
    round_to: StrictInt = Field(0, ge=0, le=MAX_ROUND_TO,
                                description="round every kept width up to a multiple of this (0: the exact widths)")


class SubnetInfo(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "3f9c0a1b2c3d4e5f60718293", "classes": ["Sneaker", "Bag"], "mac_ratio": 0.177, "param_ratio": 0.134,
        "links": {"self": "/v1/subnets/3f9c0a1b2c3d4e5f60718293",
                  "onnx": "/v1/subnets/3f9c0a1b2c3d4e5f60718293/model.onnx"}}]})
    id: str
    classes: list[str]
    mac_ratio: float
    param_ratio: float
    links: dict[str, str]


class PredictRequest(BaseModel):
    """Classify a batch of images with a subnet, named by id or by its class set."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"subnet": "3f9c0a1b2c3d4e5f60718293", "images": [[[0, 0, 12, "...28 values"], "...28 rows"]]},
        {"request": "shoes and bags", "images": ["iVBORw0KGgo...(a base64 PNG)"]}]})
    subnet: Optional[StrictStr] = Field(None, description="a subnet id from POST /v1/subnets")
    request: Optional[StrictStr] = Field(None, max_length=1000, description="or the class set in words")
    classes: Optional[list[_CLASS_NAME]] = Field(None, max_length=10000, description="or class names / indices")
    images: list[Any] = Field(..., description="each a nested uint8 array [C][H][W] (or [H][W] for one channel), "
                                               "or a base64-encoded 8-bit grayscale / RGB PNG")


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: Optional[str] = Field(..., alias="class")  # null: no class's probability exceeds the threshold
    scores: dict[str, float]


class PredictResponse(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "subnet": "3f9c0a1b2c3d4e5f60718293", "classes": ["Sneaker", "Bag"],
        "predictions": [{"class": "Bag", "scores": {"Sneaker": 0.01, "Bag": 0.98}}], "latency_ms": 0.8}]})
    subnet: str
    classes: list[str]
    predictions: list[Prediction]
    latency_ms: float


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: Optional[dict[str, Any]] = None
    data: list[Any]


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: StrictStr
    parameters: Optional[dict[str, Any]] = None


class V2InferenceRequest(BaseModel):
    """An Open Inference Protocol inference request: one input tensor of images."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "id": "42", "inputs": [{"name": "images", "shape": [1, 1, 28, 28], "datatype": "UINT8",
                                "data": [0, 0, 12, "...784 values in row-major order"]}],
        "outputs": [{"name": "probabilities"}]}]})
    id: Optional[StrictStr] = None
    parameters: Optional[dict[str, Any]] = None
    inputs: list[V2Tensor] = Field(..., min_length=1)
    outputs: Optional[list[V2RequestedOutput]] = None


class V2InferenceResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    model_name: str
    model_version: Optional[str] = None
    id: str
    parameters: Optional[dict[str, Any]] = None
    outputs: list[V2Tensor]


class V2Error(BaseModel):
    error: str


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "error": "could not understand \"airplanes\" in 'airplanes': it matches no class or group of this model; ..."}]})
    error: str


V2_OUTPUTS = ("logits", "probabilities", "class")


# ------------------------------------------------------------------ the app

def _links(subnet_id: str) -> dict[str, str]:
    base = f"/v1/subnets/{subnet_id}"
    return {"self": base, "onnx": f"{base}/model.onnx", "pt2": f"{base}/model.pt2",
            "safetensors": f"{base}/model.safetensors", "config": f"{base}/config.json", "predict": "/v1/predict",
            "v2_model": f"/v2/models/{subnet_id}", "v2_infer": f"/v2/models/{subnet_id}/infer"}


def _info(sub: Subnet) -> dict:
    keys = ("classes", "mac_ratio", "param_ratio", "round_to", "macs", "params", "widths", "input_shape", "subtask",
            "request", "created", "build_seconds")
    return {"id": sub.id, **{k: sub.meta[k] for k in keys if k in sub.meta}, "links": _links(sub.id)}


def _error(status: int, message: str, **extra) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _validation_message(errors) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


class _Guard:
    """ASGI middleware: the bearer token (every path but the health ones) and the body size limit, checked before
    the app reads anything."""

    def __init__(self, app, token: Optional[str], max_body: int):
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.token is not None and scope.get("path") not in HEALTH_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not _bearer_ok(auth, self.token):
                why = "missing" if not auth else "wrong"
                return await _error(401, f"the bearer token is {why}: send the header 'Authorization: Bearer <token>' "
                                         "with the token the server was started with (--token)")(scope, receive, send)
        length = headers.get(b"content-length")
        too_big = _error(413, f"the request body is larger than this server's limit of {self.max_body} bytes: "
                              "send fewer images per request")
        if length is not None:
            try:
                if int(length) > self.max_body:
                    return await too_big(scope, receive, send)
            except ValueError:
                return await _error(400, "the Content-Length header is not a number")(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        # read the whole body (at most max_body bytes), then hand it to the app
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await too_big(scope, receive, send)
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def create_app(engine: PruningEngine, cache_dir: Optional[str | os.PathLike] = None, cache_size: int = 32,
               token: Optional[str] = None, max_body_bytes: int = 8 << 20, max_images: int = 256,
               predict_workers: int = 4, queue_size: int = 16, disk_items: int = 256, disk_bytes: int = 1 << 30,
               stats_entries: int = 64) -> FastAPI:
    """The FastAPI app of a SubnetService over `engine` (app.state.service). `token`: every endpoint but the
    health ones needs `Authorization: Bearer <token>`. `max_body_bytes`, `max_images`: bounds on one request;
    `queue_size`, `disk_items`, `disk_bytes`, `stats_entries`: bounds on what the server holds (SubnetService)."""
    if max_images < 1 or max_body_bytes < 1:
        raise ValueError("max_images and max_body_bytes must be positive")
    if token is not None and not token:
        raise ValueError("the token is empty; give a non-empty token, or none for an open server")
    service = SubnetService(engine, cache_dir, cache_size, predict_workers, queue_size, disk_items, disk_bytes,
                            stats_entries)

    @asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="hypersan", version=__version__, lifespan=lifespan,
                  description="Subtask-adaptive networks over HTTP: ask for classes, get a smaller network (built, "
                              "cached, downloadable) and run it. v1 endpoints, and the Open Inference Protocol "
                              "(KServe V2) with a subnet's id as its model name. See docs/SERVING.md.")
    app.state.service = service
    app.state.max_images = max_images
    secured = [Security(HTTPBearer(auto_error=False))] if token is not None else []  # documents the scheme
    shape = service.input_shape

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError):
        r = _error(e.status, e.message, **({} if request.url.path.startswith("/v2/") else e.extra))
        r.headers.update(e.headers or {})
        return r

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        msg = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        if e.status_code == 404 and msg == "Not Found":
            msg = f"no endpoint {request.method} {request.url.path}; see /docs for the API"
        return _error(e.status_code, msg)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            return _error(400, "the request body is not valid JSON; send a JSON object (Content-Type: "
                               "application/json)")
        msg = _validation_message(errors)
        if request.url.path.startswith("/v2/"):
            return _error(400, msg)
        detail = [{"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")} for err in errors]
        return _error(422, msg, detail=detail[:20])

    @app.exception_handler(InputError)
    async def _bad_input(request: Request, e: InputError):
        return _error(400 if request.url.path.startswith("/v2/") else 422, str(e))

    errors = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 401: {"model": ErrorBody},
              413: {"model": ErrorBody}, 503: {"model": ErrorBody}}

    # ------------------------------------------------------------ v1
    @app.get("/healthz", tags=["health"])
    async def healthz(request: Request) -> dict:
        """Health: always 200 while the server runs (no token needed). What it holds (checkpoint fingerprint,
        subnets, memory) only with the token, when the server has one."""
        if token is not None and not _bearer_ok(request.headers.get("authorization", ""), token):
            return {"status": "ok"}
        return {"status": "ok", "version": __version__, "checkpoint": service.fingerprint,
                "classes": list(engine.model.classes), "input_shape": list(shape),
                "subnets_in_memory": len(service.in_memory()), "cache_size": service.cache_size,
                "persistent_cache": service.persistent, "counts": dict(service.counts), "rss_bytes": _rss_bytes(),
                "uptime_s": round(time.time() - service.started, 3)}

    @app.post("/v1/subnets", tags=["v1"], status_code=201, response_model=SubnetInfo, dependencies=secured,
              responses={200: {"model": SubnetInfo, "description": "the subnet existed already"}, **errors})
    async def create_subnet(body: SubnetRequest) -> JSONResponse:
        """Build the subnet of a class set (a request in words, or class names / indices), or find it: 201 when
        built now, 200 when it was there. The same class set (and round_to) always gives the same id."""
        subtask, grounding = await service.resolve(body.request, body.classes)
        round_to = body.round_to if body.round_to > 1 else 0
        sub, built = await service.create(subtask, round_to, grounding)
        out = _info(sub)
        if grounding is not None:
            out["grounding"] = grounding
        return JSONResponse(out, status_code=201 if built else 200)

    @app.get("/v1/subnets/{subnet_id}", tags=["v1"], response_model=SubnetInfo, dependencies=secured,
             responses=errors)
    async def subnet_info(subnet_id: str) -> dict:
        """A subnet's metadata: classes, MAC and parameter ratios to the dense net, widths, links."""
        return _info(await service.get(subnet_id))

    @app.get("/v1/subnets/{subnet_id}/{filename}", tags=["v1"], dependencies=secured, responses={
        200: {"content": {"application/octet-stream": {}, "application/json": {}},
              "description": "the file; model.onnx and model.pt2 are exported on their first download"}, **errors})
    async def subnet_file(subnet_id: str, filename: str):
        """A subnet's file: model.onnx (opset 18), model.pt2 (torch.export), model.safetensors (load with
        hypersan.load_subnet and config.json) or config.json. Inputs are float32 images in [0, 1], (N, C, H, W)."""
        path = await service.file(subnet_id, filename)
        media = "application/json" if filename.endswith(".json") else "application/octet-stream"
        return FileResponse(path, media_type=media, filename=f"{subnet_id}-{filename}")

    @app.post("/v1/predict", tags=["v1"], response_model=PredictResponse, dependencies=secured,
              responses={400: {"model": ErrorBody}, **errors})
    async def predict(body: PredictRequest) -> dict:
        """Classify images with a subnet (by id, or by its class set, built first when needed). Each prediction
        has the class of the highest score and every class's score (sigmoid of its logit)."""
        named = [k for k in ("subnet", "request", "classes") if getattr(body, k) is not None]
        if len(named) != 1:
            raise ServeError(422, 'give exactly one of "subnet" (an id), "request" (words) or "classes"'
                                  + (f"; got {', '.join(named)}" if named else ""))
        if len(body.images) > max_images:  # before decoding any of them
            raise InputError(f"{len(body.images)} images in one request; at most {max_images} are accepted: split "
                             "the batch")
        x = parse_images(body.images, shape, max_images)
        if body.subnet is not None:
            sub = await service.get(body.subnet)
        else:
            subtask, grounding = await service.resolve(body.request, body.classes)
            sub, _ = await service.create(subtask, 0, grounding)
        logits, ms = await service.forward(sub, x)
        classes = sub.meta["classes"]
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        # every class is a sigmoid: an image of none of them fires none ("class": null), never the least unlikely
        preds = [{"class": classes[int(np.argmax(row))] if row.max() > FIRE_THRESHOLD else None,
                  "scores": {c: float(p) for c, p in zip(classes, row)}} for row in probs]
        return {"subnet": sub.id, "classes": classes, "threshold": FIRE_THRESHOLD, "predictions": preds,
                "latency_ms": round(ms, 4)}

    # ------------------------------------------------------------ Open Inference Protocol (KServe V2)
    v2_errors = {400: {"model": V2Error}, 401: {"model": V2Error}, 404: {"model": V2Error}, 413: {"model": V2Error}}

    @app.get("/v2/health/live", tags=["v2"])
    async def v2_live() -> dict:
        """Server live (200)."""
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"])
    async def v2_ready() -> dict:
        """Server ready (200): the engine is loaded and subnets can be built."""
        return {"ready": True}

    @app.get("/v2", tags=["v2"], dependencies=secured)
    async def v2_server() -> dict:
        """Server metadata."""
        return {"name": "hypersan", "version": __version__, "extensions": []}

    def model_metadata(sub: Subnet) -> dict:
        k = len(sub.meta["classes"])
        return {"name": sub.id, "versions": ["1"], "platform": "pytorch",
                "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, *shape]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, k]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
                            {"name": "class", "datatype": "BYTES", "shape": [-1]}],
                "parameters": {"classes": sub.meta["classes"], "input_datatypes": list(("FP32", "UINT8")),
                               "input_range": "FP32: pixels / 255 in [0, 1]; UINT8: pixels 0..255"}}

    @app.get("/v2/models/{model_name}", tags=["v2"], dependencies=secured, responses=v2_errors)
    async def v2_model(model_name: str) -> dict:
        """Model metadata: input and output tensors (a subnet's id is its model name)."""
        return model_metadata(await service.get(model_name))

    @app.get("/v2/models/{model_name}/ready", tags=["v2"], dependencies=secured, responses=v2_errors)
    async def v2_model_ready(model_name: str):
        """Model ready: 200 when the subnet is built (in memory or in the cache folder), 400 while it is being
        built, 404 when it is unknown."""
        service.check_id(model_name)
        if service.known(model_name):
            return {"name": model_name, "ready": True}
        if service.building(model_name):
            return JSONResponse({"name": model_name, "ready": False, "error": f"subnet {model_name} is being built"},
                                status_code=400)
        raise ServeError(404, f"no model {model_name}: build it first with POST /v1/subnets")

    @app.post("/v2/models/{model_name}/infer", tags=["v2"], response_model=V2InferenceResponse,
              response_model_exclude_none=True, dependencies=secured, responses=v2_errors)
    async def v2_infer(model_name: str, body: V2InferenceRequest) -> dict:
        """Inference: one input tensor of images, UINT8 (0..255) or FP32 (pixels / 255), shape [N, C, H, W];
        outputs logits, probabilities (FP32 [N, K]) and class (BYTES [N]), or those requested."""
        if len(body.inputs) != 1:
            raise InputError(f"{len(body.inputs)} input tensors; this model takes one, \"images\"")
        wanted = [o.name for o in body.outputs] if body.outputs else list(V2_OUTPUTS)
        bad = [n for n in wanted if n not in V2_OUTPUTS]
        if bad:
            raise InputError(f"unknown output(s) {', '.join(map(repr, bad))}; this model has {', '.join(V2_OUTPUTS)}")
        sub = await service.get(model_name)
        t = body.inputs[0]
        x = parse_v2_images({"name": t.name, "shape": t.shape, "datatype": t.datatype, "data": t.data}, shape,
                            max_images)
        logits, ms = await service.forward(sub, x)
        classes = sub.meta["classes"]
        n, k = logits.shape
        values = {"logits": ("FP32", [n, k], logits.reshape(-1).tolist()),
                  "probabilities": ("FP32", [n, k], (1.0 / (1.0 + np.exp(-logits))).reshape(-1).tolist()),
                  "class": ("BYTES", [n], [classes[int(i)] for i in logits.argmax(1)])}
        outputs = [{"name": o, "datatype": values[o][0], "shape": values[o][1], "data": values[o][2]} for o in wanted]
        return {"model_name": sub.id, "model_version": "1", "id": body.id or str(uuid.uuid4()),
                "parameters": {"classes": classes, "latency_ms": round(ms, 4)}, "outputs": outputs}

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        ref = uuid.uuid4().hex[:12]
        logging.getLogger("hypersan.serve").error("internal error %s on %s %s", ref, request.method,
                                                   request.url.path, exc_info=e)
        return _error(500, f"internal error (reference {ref}: the server's log has the details)")

    app.add_middleware(_Guard, token=token, max_body=max_body_bytes)
    return app


def serve(checkpoint: Optional[str] = None, host: str = "127.0.0.1", port: int = 8000, token: Optional[str] = None,
          cache_dir: Optional[str] = None, cache_size: int = 32, data_dir: Optional[str] = None,
          max_body_bytes: int = 8 << 20, max_images: int = 256, log: Callable[[str], None] = print,
          queue_size: int = 16, disk_items: int = 256, disk_bytes: int = 1 << 30) -> None:
    """Run the server with uvicorn until interrupted (the `hypersan serve` command)."""
    import uvicorn

    engine = PruningEngine.from_pretrained(checkpoint, data_dir=data_dir)
    app = create_app(engine, cache_dir, cache_size, token, max_body_bytes, max_images, queue_size=queue_size,
                     disk_items=disk_items, disk_bytes=disk_bytes, stats_entries=max(64, 2 * cache_size))
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        log(f"warning: serving on {host} without a token: anyone who can reach this port can build subnets and run "
            "them; give --token (or $HYPERSAN_SERVE_TOKEN)")
    log(f"hypersan serve: checkpoint {engine.model.source}, cache "
        f"{cache_dir or '(in memory; a temporary folder for files)'}, http://{host}:{port}/docs")
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["create_app", "serve", "SubnetService", "ServeError", "checkpoint_fingerprint", "ID_RE", "CACHE_KIND"]
