"""Static INT8 quantization of an exported ONNX net with onnxruntime's quantization tools.

Weights are quantized per output channel (int8 holding 7-bit values, symmetric), activations per tensor (uint8),
in the QDQ format that onnxruntime's CPU kernels fuse into integer convolutions. Activation ranges come from calibration images,
which for a subtask net are that subtask's own training images: a net pruned to Sneaker and Bag never sees a
coat's activations, so it should not spend its int8 range on them.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

CALIB_BATCH = 64


def check_weight_bits(bits: int) -> None:
    """Refuse weight widths other than 7 and 8 bits (see quantize_int8)."""
    if bits not in (7, 8):
        raise ValueError(f"int8 weights take 7 or 8 bits, not {bits!r}")


def quantize_int8(float_onnx: str | os.PathLike, out: str | os.PathLike, images: torch.Tensor,
                  method: str = "minmax", weight_bits: int = 7) -> dict:
    """Write a statically quantized copy of `float_onnx` to `out`, calibrated on `images` (float32 in [0, 1],
    (N, C, H, W)); the float model's metadata_props (the input contract) are copied over. Returns a summary:
    calibration images, method, formats.

    `weight_bits` 7 (the default) quantizes weights to 7 bits (onnxruntime's `reduce_range`), 8 to the full int8
    range. On x86 CPUs without VNNI (AVX2, and AVX-512 before
    Cascade Lake) onnxruntime's uint8 x int8 kernels add pairs of products in 16 bits, which can saturate; with
    7-bit weights they cannot, so the file gives the same outputs on every x86 CPU. Chosen on validation
    (`fmnist_b16`, 13 class sets, docs/RESULTS.md *INT8 and the CPU's kernels*): 8-bit weights lost 0.01 pt with
    VNNI and 0.20 pt (up to 1.0) with AVX2 kernels, 7-bit weights 0.08 pt on both."""
    try:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise ImportError(f"INT8 quantization needs onnx and onnxruntime ({e}); install the onnx extra: "
                          "pip install 'hypersan[onnx]'") from None
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    check_weight_bits(weight_bits)
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r}; choose from {', '.join(methods)}")
    if images.ndim != 4 or images.dtype != torch.float32 or len(images) == 0:
        raise ValueError(f"calibration images must be a non-empty float32 tensor (N, C, H, W) in [0, 1], got "
                         f"{tuple(images.shape)} {images.dtype}")
    arr = images.detach().cpu().numpy()

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(np.ascontiguousarray(arr[i:i + CALIB_BATCH]) for i in range(0, len(arr), CALIB_BATCH))

        def get_next(self):
            b = next(self._batches, None)
            return None if b is None else {"images": b}

    with tempfile.TemporaryDirectory(prefix="hypersan-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # shape inference and graph clean-up first, as onnxruntime recommends before static quantization
        quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], reduce_range=weight_bits == 7)
    src, q = onnx.load(str(float_onnx)), onnx.load(str(out))
    del q.metadata_props[:]
    for p in src.metadata_props:
        e = q.metadata_props.add()
        e.key, e.value = p.key, p.value
    e = q.metadata_props.add()
    weights = "int8 per channel" + (", 7-bit range" if weight_bits == 7 else "")
    e.key, e.value = "quantization", f"static int8 (QDQ, {weights} weights, {method} calibration on {len(arr)} images)"
    onnx.save(q, str(out))
    return {"calibration_images": int(len(arr)), "method": method, "weights": weights,
            "activations": "uint8 per tensor", "format": "QDQ"}


__all__ = ["check_weight_bits", "quantize_int8"]
