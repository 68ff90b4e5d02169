"""Artifacts of pruned networks: config.json + model.safetensors (rebuilt from widths), TorchScript, ONNX.

Every exported network takes float32 images in [0, 1] of shape (B, C, H, W) (normalization is inside)
and returns one logit per kept class, in the order of config.json's "classes".
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from . import __version__
from .io import ArtifactError, atomic_dir, load_checked, load_tensors, read_json, save_tensors, write_json
from .subnet import build_plain

ARTIFACT_FORMAT = 1
FILES = {"safetensors": "model.safetensors", "torchscript": "model.pt", "onnx": "model.onnx"}
ONNX_OPSET = 17
_REQUIRED = ("arch", "site_widths", "classes", "input_shape", "bn_folded")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def subnet_config(net: nn.Module, subtask: Optional[Sequence[int]] = None, source: Optional[str] = None) -> dict:
    """The config.json of a plain net: architecture, per-layer widths, classes, input shape, provenance."""
    arch = {k: v for k, v in net.arch.items() if k not in ("site_widths", "num_classes")}
    src = Path(source) / "model.safetensors" if source else None
    return {
        "format": ARTIFACT_FORMAT,
        "hypersan_version": __version__,
        "arch": arch,
        "site_widths": dict(net.arch["site_widths"]),
        "classes": list(net.classes),
        "subtask": list(subtask) if subtask is not None else None,
        "input_shape": list(net.input_shape),
        "bn_folded": bool(net.bn_folded),
        "source_checkpoint": str(source) if source else None,
        "source_sha256": file_sha256(src) if src is not None and src.is_file() else None,
    }


def parse_formats(spec: str | Iterable[str]) -> list[str]:
    """Formats from "safetensors,torchscript,onnx" (or a list), validated and deduplicated."""
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in items if s not in FILES]
    if bad or not items:
        raise ValueError(f"unknown export format(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(FILES)}")
    return list(dict.fromkeys(items))


def _check_exportable(net: nn.Module) -> None:
    if len(net.input_shape) != 3:
        raise ValueError("the net has no input_shape [C, H, W]; build it with surgery.prune (or set net.input_shape)")


def export_torchscript(net: nn.Module, path: str | os.PathLike) -> Path:
    """Save a plain net as TorchScript, loadable with plain torch.jit.load (no hypersan needed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, yet still the portable format
        scripted = torch.jit.script(net.eval())
    scripted.save(str(path))
    return Path(path)


def export_onnx(net: nn.Module, path: str | os.PathLike) -> Path:
    """Save a plain net as ONNX (opset 17, dynamic batch: input "images", output "logits")."""
    import onnx

    _check_exportable(net)
    x = torch.zeros(2, *net.input_shape, device=next(net.parameters()).device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, but needs no onnxscript
        torch.onnx.export(net.eval(), (x,), str(path), opset_version=ONNX_OPSET, dynamo=False,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load(str(path))
    entry = m.metadata_props.add()
    entry.key, entry.value = "classes", json.dumps(list(net.classes))
    onnx.save(m, str(path))
    return Path(path)


def save_subnet(net: nn.Module, path: str | os.PathLike, formats: Iterable[str] = ("safetensors",),
                subtask: Optional[Sequence[int]] = None, source: Optional[str] = None,
                extra: Optional[dict] = None) -> dict[str, Path]:
    """Write an artifact directory atomically: config.json plus one file per format; returns {format: path}."""
    formats = parse_formats(list(formats))
    _check_exportable(net)
    net = net.eval()
    config = subnet_config(net, subtask, source)
    config.update(extra or {})
    config["files"] = {f: FILES[f] for f in formats}
    with atomic_dir(path) as tmp:
        write_json(tmp / "config.json", config)
        if "safetensors" in formats:
            save_tensors(tmp / FILES["safetensors"], net.state_dict())
        if "torchscript" in formats:
            export_torchscript(net, tmp / FILES["torchscript"])
        if "onnx" in formats:
            export_onnx(net, tmp / FILES["onnx"])
    return {f: Path(path) / FILES[f] for f in formats}


def load_subnet(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a plain net from an artifact directory's widths and load its weights (nothing is unpickled)."""
    p = Path(path)
    if not p.is_dir():
        raise ArtifactError(f"artifact directory {str(p)!r} not found")
    cfg = read_json(p / "config.json")
    fmt = cfg.get("format")
    if fmt != ARTIFACT_FORMAT:
        raise ArtifactError(f"{p / 'config.json'}: artifact format {fmt!r} is not supported (this hypersan "
                            f"{__version__} reads format {ARTIFACT_FORMAT}); re-export it, or use the hypersan "
                            "version that wrote it")
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise ArtifactError(f"{p / 'config.json'} lacks {', '.join(missing)}; the artifact is incomplete")
    classes = cfg["classes"]
    arch = dict(cfg["arch"], site_widths=cfg["site_widths"], num_classes=len(classes))
    try:
        net = build_plain(arch, classes, bool(cfg["bn_folded"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{p / 'config.json'}: cannot build the network it describes ({e!r})") from None
    net.input_shape = [int(d) for d in cfg["input_shape"]]
    weights = p / FILES["safetensors"]
    if not weights.is_file():
        raise ArtifactError(f"{weights} is missing; export the artifact with the safetensors format to load it "
                            "with load_subnet (model.pt and model.onnx load with torch.jit.load / onnxruntime)")
    load_checked(net, load_tensors(weights), str(weights))
    return net.to(map_location).eval()


def export_subtask(model, classes, out: str | os.PathLike, formats: Iterable[str] = ("safetensors",),
                   round_to: int = 0, fold_bn: bool = True, images: Optional[torch.Tensor] = None,
                   round_mode: str = "up", text: Optional[str] = None) -> dict:
    """Prune a SubtaskAdaptiveNet to a subtask and write its artifact; returns a JSON-able summary.
    `text` conditions a text-conditioned generator on that description (see surgery.prune)."""
    from .metrics import subnet_cost
    from .surgery import prune

    formats = parse_formats(list(formats) if not isinstance(formats, str) else formats)
    t = model.resolve(classes)
    net = prune(model, t, fold_bn=fold_bn, round_to=round_to, images=images, round_mode=round_mode, text=text)
    arch, shape = model.backbone.arch, model.info.input_shape
    dense_macs, dense_params = subnet_cost(arch, arch["site_widths"], len(model.classes), shape)
    macs, params = subnet_cost(arch, net.arch["site_widths"], len(t), shape)
    ratios = {"mac_ratio": macs / dense_macs, "param_ratio": params / dense_params}
    files = save_subnet(net, out, formats, subtask=list(t), source=getattr(model, "source", None),
                        extra=dict(ratios, round_to=round_to, round_mode=round_mode, conditioned_on=text))
    return {"classes": list(net.classes), "subtask": list(t), **ratios,
            "widths": dict(net.arch["site_widths"]), "files": {f: str(p) for f, p in files.items()},
            "bytes": {f: p.stat().st_size for f, p in files.items()}}
