"""A bounded load test of `hypersan serve`, on this machine only (127.0.0.1).

    python tools/loadtest.py --requests 2000 --concurrency 16            # starts its own server, then stops it
    python tools/loadtest.py --port 8000 --token T --requests 200         # a server already running on 127.0.0.1

Sends exactly --requests requests, at most --concurrency at a time, mixing: new subnets (POST /v1/subnets of a
class set not asked for before: calibrated and built), cached subnets (POST of one built earlier), v1 predictions
(nested arrays and PNG) and V2 infers, on random uint8 images (seeded). Prints one JSON object: errors (any
status but 200/201, or a failed connection), p50 / p99 latency per kind and overall, and the server's resident
memory (from /healthz) sampled through the run.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypersan.serve.wire import encode_png  # noqa: E402

KINDS = ("new_subnet", "cached_subnet", "predict", "infer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(xs, q):
    return round(float(np.percentile(xs, q)), 2) if xs else None


async def run(args) -> dict:
    import httpx

    rng = random.Random(args.seed)
    images = np.random.default_rng(args.seed).integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
    pngs = [base64.b64encode(encode_png(im)).decode() for im in images]
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    base = f"http://127.0.0.1:{args.port}"
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=args.timeout, limits=limits) as client:
        health = (await client.get("/healthz")).json()
        n_classes = len(health["classes"])
        asked: set[tuple] = set()
        built: list[str] = []
        # a few subnets first, so that every kind has something to work on
        for pair in ((7, 8), (5, 9), (0, 2), (1, 3))[:max(1, min(4, n_classes // 2))]:
            r = await client.post("/v1/subnets", json={"classes": list(pair)})
            r.raise_for_status()
            asked.add(pair)
            built.append(r.json()["id"])

        def new_set() -> tuple:
            for _ in range(1000):
                k = rng.randint(1, n_classes)
                t = tuple(sorted(rng.sample(range(n_classes), k)))
                if t not in asked:
                    asked.add(t)
                    return t
            return tuple(sorted(rng.sample(range(n_classes), 2)))

        weights = [args.new_share, args.cached_share, args.predict_share, args.infer_share]
        plan = rng.choices(KINDS, weights=weights, k=args.requests)
        lat = {k: [] for k in KINDS}
        errors: list[str] = []
        rss: list[int] = []
        sem = asyncio.Semaphore(args.concurrency)

        async def one(kind: str) -> None:
            async with sem:
                t0 = time.perf_counter()
                try:
                    if kind == "new_subnet":
                        r = await client.post("/v1/subnets", json={"classes": list(new_set())})
                        if r.status_code in (200, 201):
                            built.append(r.json()["id"])
                    elif kind == "cached_subnet":
                        sid = rng.choice(built)
                        r = await client.get(f"/v1/subnets/{sid}") if rng.random() < 0.5 else await client.post(
                            "/v1/subnets", json={"classes": list(rng.choice(sorted(asked)))})
                    elif kind == "predict":
                        n = rng.randint(1, args.batch)
                        idx = [rng.randrange(len(images)) for _ in range(n)]
                        imgs = [pngs[i] if rng.random() < 0.3 else images[i].tolist() for i in idx]
                        r = await client.post("/v1/predict", json={"subnet": rng.choice(built), "images": imgs})
                    else:
                        n = rng.randint(1, args.batch)
                        x = images[[rng.randrange(len(images)) for _ in range(n)]]
                        r = await client.post(f"/v2/models/{rng.choice(built)}/infer", json={"inputs": [
                            {"name": "images", "shape": list(x.shape), "datatype": "UINT8",
                             "data": x.reshape(-1).tolist()}]})
                    if r.status_code not in (200, 201):
                        errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(f"{kind}: {type(e).__name__}: {e}")
                lat[kind].append((time.perf_counter() - t0) * 1000)

        async def sample_rss(stop: asyncio.Event) -> None:
            while not stop.is_set():
                try:
                    rss.append((await client.get("/healthz")).json()["rss_bytes"])
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass

        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(stop))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in plan))
        wall = time.perf_counter() - t0
        stop.set()
        await sampler
        health = (await client.get("/healthz")).json()
    every = [x for v in lat.values() for x in v]
    return {
        "requests": args.requests, "concurrency": args.concurrency, "seconds": round(wall, 2),
        "requests_per_s": round(args.requests / wall, 1), "errors": len(errors), "error_samples": errors[:5],
        "latency_ms": {"all": {"p50": _percentile(every, 50), "p99": _percentile(every, 99)},
                       **{k: {"n": len(v), "p50": _percentile(v, 50), "p99": _percentile(v, 99)}
                          for k, v in lat.items()}},
        "server_rss_mb": {"min": round(min(rss) / 2**20, 1) if rss else None,
                          "max": round(max(rss) / 2**20, 1) if rss else None,
                          "end": round(health["rss_bytes"] / 2**20, 1) if health.get("rss_bytes") else None},
        "server": {"subnets_in_memory": health["subnets_in_memory"], "cache_size": health["cache_size"],
                   "counts": health["counts"]},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="requests to send in all (default 2000)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight at most (default 16)")
    p.add_argument("--port", type=int, default=None,
                   help="a server already running on 127.0.0.1:PORT (default: start one, with a temporary cache)")
    p.add_argument("--token", default=None, help="its bearer token, if it has one")
    p.add_argument("--checkpoint", default=None, help="checkpoint of the server this tool starts (default fmnist_b16)")
    p.add_argument("--cache-size", type=int, default=32, help="--cache-size of the server this tool starts")
    p.add_argument("--batch", type=int, default=8, help="images per prediction, at most (default 8)")
    p.add_argument("--new-share", type=float, default=0.02, help="share of new subnets (default 0.02)")
    p.add_argument("--cached-share", type=float, default=0.18, help="share of cached subnets (default 0.18)")
    p.add_argument("--predict-share", type=float, default=0.4, help="share of v1 predictions (default 0.4)")
    p.add_argument("--infer-share", type=float, default=0.4, help="share of V2 infers (default 0.4)")
    p.add_argument("--timeout", type=float, default=300, help="seconds a request may take (default 300)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        p.error("--requests must be 1..100000 and --concurrency 1..256: this is a bounded test")
    server = None
    tmp = None
    if args.port is None:
        args.port = _free_port()
        tmp = tempfile.mkdtemp(prefix="hypersan-loadtest-")
        cmd = [sys.executable, "-m", "hypersan.cli.commands", "serve", "--host", "127.0.0.1", "--port", str(args.port),
               "--cache-dir", str(Path(tmp) / "cache"), "--cache-size", str(args.cache_size)]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        if args.token:
            cmd += ["--token", args.token]
        server = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", args.port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None:
                    print(f"loadtest: the server exited with status {server.returncode}", file=sys.stderr)
                    return 1
                time.sleep(0.2)
    try:
        result = asyncio.run(run(args))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
