"""The pruning engine over HTTP: build, cache, download and run subtask networks (`hypersan serve`).

    app = create_app(PruningEngine.from_pretrained("fmnist_b16"), cache_dir="serve-cache")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Two APIs over one SubnetService (`service`), each in its own module (`v1`, `v2`):
- v1: POST /v1/subnets ({"request": "shoes and bags"} or {"classes": [...]}) builds a subnet and returns its id;
  GET /v1/subnets/{id}[/model.onnx|model.pt2|model.safetensors|config.json]; POST /v1/predict; GET /healthz.
- the Open Inference Protocol (KServe V2) REST API, a subnet's id being its model name.

This module puts them together: the guard (token, body size), the error answers, and `serve`. Ids, caches
and bounds: `service`. See docs/SERVING.md.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from contextlib import asynccontextmanager
from typing import Callable, Optional

try:
    from fastapi import FastAPI, Request, Security
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPBearer
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(f"hypersan serve needs the serve extra ({e.name} is missing): "
                      "pip install 'hypersan[serve]'") from e

from ..prune.engine import PruningEngine
from ..version import __version__
from . import v1, v2
from .service import CACHE_KIND, HEALTH_PATHS, ID_RE, ServeError, SubnetService, bearer_ok, checkpoint_fingerprint
from .wire import InputError


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
            if not bearer_ok(auth, self.token):
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

    app.include_router(v1.router(service, token, max_images, secured))
    app.include_router(v2.router(service, max_images, secured))

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
