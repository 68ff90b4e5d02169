"""hypersan's own HTTP API (v1): build a subnet from a class set, read it, download its files, run it."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from ..version import __version__
from .schemas import ErrorBody, PredictRequest, PredictResponse, SubnetInfo, SubnetRequest
from .service import FIRE_THRESHOLD, ServeError, Subnet, SubnetService, bearer_ok, rss_bytes
from .wire import InputError, parse_images

ERRORS = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 401: {"model": ErrorBody},
          413: {"model": ErrorBody}, 503: {"model": ErrorBody}}


def links(subnet_id: str) -> dict[str, str]:
    """The URLs of a subnet: its metadata, files, and both APIs' inference endpoints."""
    base = f"/v1/subnets/{subnet_id}"
    return {"self": base, "onnx": f"{base}/model.onnx", "pt2": f"{base}/model.pt2",
            "safetensors": f"{base}/model.safetensors", "config": f"{base}/config.json", "predict": "/v1/predict",
            "v2_model": f"/v2/models/{subnet_id}", "v2_infer": f"/v2/models/{subnet_id}/infer"}


def info(sub: Subnet) -> dict:
    """What GET /v1/subnets/{id} answers."""
    keys = ("classes", "mac_ratio", "param_ratio", "round_to", "budget", "guard", "macs", "params", "widths",
            "input_shape", "subtask", "request", "created", "build_seconds")
    return {"id": sub.id, **{k: sub.meta[k] for k in keys if k in sub.meta}, "links": links(sub.id)}


def router(service: SubnetService, token: Optional[str], max_images: int, secured: list) -> APIRouter:
    """The v1 routes over `service`; `secured` documents the bearer scheme (the guard enforces it)."""
    api = APIRouter()
    engine, shape = service.engine, service.input_shape

    @api.get("/healthz", tags=["health"])
    async def healthz(request: Request) -> dict:
        """Health: always 200 while the server runs (no token needed). What it holds (checkpoint fingerprint,
        subnets, memory) only with the token, when the server has one."""
        if token is not None and not bearer_ok(request.headers.get("authorization", ""), token):
            return {"status": "ok"}
        return {"status": "ok", "version": __version__, "checkpoint": service.fingerprint,
                "classes": list(engine.model.classes), "input_shape": list(shape),
                "subnets_in_memory": len(service.in_memory()), "cache_size": service.cache_size,
                "persistent_cache": service.persistent, "counts": dict(service.counts), "rss_bytes": rss_bytes(),
                "uptime_s": round(time.time() - service.started, 3)}

    @api.post("/v1/subnets", tags=["v1"], status_code=201, response_model=SubnetInfo, dependencies=secured,
              responses={200: {"model": SubnetInfo, "description": "the subnet existed already"}, **ERRORS})
    async def create_subnet(body: SubnetRequest) -> JSONResponse:
        """Build the subnet of a class set (a request in words, or class names / indices), or find it: 201 when
        built now, 200 when it was there. The same class set (and round_to) always gives the same id."""
        subtask, grounding, budget = await service.resolve(body.request, body.classes, body.budget)
        round_to = service.engine.round_multiple(body.round_to)
        round_to = round_to if round_to > 1 else 0
        sub, built = await service.create(subtask, round_to, grounding, budget, body.guard)
        out = info(sub)
        if grounding is not None:
            out["grounding"] = grounding
        return JSONResponse(out, status_code=201 if built else 200)

    @api.get("/v1/subnets/{subnet_id}", tags=["v1"], response_model=SubnetInfo, dependencies=secured,
             responses=ERRORS)
    async def subnetinfo(subnet_id: str) -> dict:
        """A subnet's metadata: classes, MAC and parameter ratios to the dense net, widths, links."""
        return info(await service.get(subnet_id))

    @api.get("/v1/subnets/{subnet_id}/{filename}", tags=["v1"], dependencies=secured, responses={
        200: {"content": {"application/octet-stream": {}, "application/json": {}},
              "description": "the file; model.onnx and model.pt2 are exported on their first download"}, **ERRORS})
    async def subnet_file(subnet_id: str, filename: str):
        """A subnet's file: model.onnx (opset 18), model.pt2 (torch.export), model.safetensors (load with
        hypersan.load_subnet and config.json) or config.json. Inputs are float32 images in [0, 1], (N, C, H, W)."""
        path = await service.file(subnet_id, filename)
        media = "application/json" if filename.endswith(".json") else "application/octet-stream"
        return FileResponse(path, media_type=media, filename=f"{subnet_id}-{filename}")

    @api.post("/v1/predict", tags=["v1"], response_model=PredictResponse, dependencies=secured,
              responses={400: {"model": ErrorBody}, **ERRORS})
    async def predict(body: PredictRequest) -> dict:
        """Classify images with a subnet (by id, or by its class set, built first when needed). Each prediction
        has the class of the highest score and every class's score (sigmoid of its logit)."""
        named = [k for k in ("subnet", "request", "classes") if getattr(body, k) is not None]
        if len(named) != 1:
            raise ServeError(422, 'give exactly one of "subnet" (an id), "request" (words) or "classes"'
                                  + (f"; got {', '.join(named)}" if named else ""))
        if body.subnet is not None and (body.budget is not None or body.guard):
            raise ServeError(422, 'a "budget" or "guard" goes with "request" or "classes": a subnet id names a built '
                                  "net, its budget included")
        if len(body.images) > max_images:  # before decoding any of them
            raise InputError(f"{len(body.images)} images in one request; at most {max_images} are accepted: split "
                             "the batch")
        x = parse_images(body.images, shape, max_images)
        if body.subnet is not None:
            sub = await service.get(body.subnet)
        else:
            subtask, grounding, budget = await service.resolve(body.request, body.classes, body.budget)
            default = service.engine.round_multiple(None)  # the model's default rounding, as /v1/subnets builds
            sub, _ = await service.create(subtask, default if default > 1 else 0, grounding, budget, body.guard)
        logits, ms = await service.forward(sub, x)
        classes = sub.meta["classes"]
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        # every class is a sigmoid: an image of none of them fires none ("class": null), never the least unlikely
        preds = [{"class": classes[int(np.argmax(row))] if row.max() > FIRE_THRESHOLD else None,
                  "scores": {c: float(p) for c, p in zip(classes, row)}} for row in probs]
        return {"subnet": sub.id, "classes": classes, "threshold": FIRE_THRESHOLD, "predictions": preds,
                "latency_ms": round(ms, 4)}

    return api
