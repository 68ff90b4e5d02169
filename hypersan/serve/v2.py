"""The Open Inference Protocol (KServe V2) REST API, a subnet's id being its model name."""
from __future__ import annotations

import uuid

import numpy as np
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..version import __version__
from .schemas import V2Error, V2InferenceRequest, V2InferenceResponse
from .service import ServeError, Subnet, SubnetService
from .wire import InputError, parse_v2_images

V2_OUTPUTS = ("logits", "probabilities", "class")
V2_ERRORS = {400: {"model": V2Error}, 401: {"model": V2Error}, 404: {"model": V2Error}, 413: {"model": V2Error}}


def model_metadata(sub: Subnet, shape: tuple) -> dict:
    """A subnet as an Open Inference Protocol model: its input and output tensors."""
    k = len(sub.meta["classes"])
    return {"name": sub.id, "versions": ["1"], "platform": "pytorch",
            "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, *shape]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, k]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
                        {"name": "class", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"classes": sub.meta["classes"], "input_datatypes": list(("FP32", "UINT8")),
                           "input_range": "FP32: pixels / 255 in [0, 1]; UINT8: pixels 0..255"}}


def router(service: SubnetService, max_images: int, secured: list) -> APIRouter:
    """The v2 routes over `service`; `secured` documents the bearer scheme (the guard enforces it)."""
    api = APIRouter()
    shape = service.input_shape

    @api.get("/v2/health/live", tags=["v2"])
    async def v2_live() -> dict:
        """Server live (200)."""
        return {"live": True}

    @api.get("/v2/health/ready", tags=["v2"])
    async def v2_ready() -> dict:
        """Server ready (200): the engine is loaded and subnets can be built."""
        return {"ready": True}

    @api.get("/v2", tags=["v2"], dependencies=secured)
    async def v2_server() -> dict:
        """Server metadata."""
        return {"name": "hypersan", "version": __version__, "extensions": []}

    @api.get("/v2/models/{model_name}", tags=["v2"], dependencies=secured, responses=V2_ERRORS)
    async def v2_model(model_name: str) -> dict:
        """Model metadata: input and output tensors (a subnet's id is its model name)."""
        return model_metadata(await service.get(model_name), shape)

    @api.get("/v2/models/{model_name}/ready", tags=["v2"], dependencies=secured, responses=V2_ERRORS)
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

    @api.post("/v2/models/{model_name}/infer", tags=["v2"], response_model=V2InferenceResponse,
              response_model_exclude_none=True, dependencies=secured, responses=V2_ERRORS)
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

    return api
