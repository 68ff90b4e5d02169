"""The request and response models of the HTTP API (v1 and the Open Inference Protocol v2)."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from .service import MAX_ROUND_TO

_CLASS_NAME = Union[StrictStr, StrictInt]


class SubnetRequest(BaseModel):
    """Build (or find) the subnet of a class set."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"request": "shoes and bags"}, {"classes": ["Sneaker", "Bag"]}, {"classes": [7, 8], "round_to": 16}]})
    request: Optional[StrictStr] = Field(None, max_length=1000, description="the class set in words")
    classes: Optional[list[_CLASS_NAME]] = Field(None, max_length=10000, description="class names or indices")
    round_to: Optional[StrictInt] = Field(None, ge=0, le=MAX_ROUND_TO,
                                          description="round every kept width up to a multiple of this (0: the exact "
                                                      "widths; default: the CPU's vector block for a custom network, "
                                                      "0 for the built-in backbones)")
    budget: Optional[float] = Field(None, gt=0, le=1, description="a budget-conditioned model: the largest MAC "
                                    "ratio to the dense net (met exactly); a request in words may also state it")
    guard: StrictBool = Field(False, description="a budget-conditioned model: serve the smallest of the nets at the "
                              "budget and at the smaller budgets 0.08, 0.12, 0.2, 0.3, 0.5 that is the most accurate "
                              "on the validation split (docs/BUDGETS.md, guarded budgets)")


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
    budget: Optional[float] = Field(None, gt=0, le=1, description="with request or classes: a budget-conditioned "
                                    "model's MAC budget")
    guard: StrictBool = Field(False, description="with request or classes: a guarded budget (see POST /v1/subnets)")
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
