"""Artifacts of pruned networks: config.json + model.safetensors (rebuilt from widths), `.pt2` (torch.export),
ONNX (the dynamo exporter), optional INT8 ONNX, and TorchScript (legacy).

Every exported network takes float32 images in [0, 1] of shape (B, C, H, W) (normalization is inside)
and returns one logit per kept class, in the order of config.json's "classes". Each portable file carries
this contract itself (`input_contract`): ONNX as metadata_props, `.pt2` and TorchScript as an extra file
`hypersan.json`, so that a runtime without hypersan can read it.
"""
from __future__ import annotations

import collections
import copy
import hashlib
import itertools
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from ..version import __version__
from ..io import (ArtifactError, atomic_dir, check_safetensors, expected_tensors, load_tensors, read_json,
                 save_tensors, write_json)
from ..nn.subnet import build_plain, site_names, weights_layout
from .quantize import check_weight_bits

ARTIFACT_FORMAT = 1
ARTIFACT_KIND = "artifact"  # the marker kind of an artifact folder (see io.atomic_dir)
FILES = {"safetensors": "model.safetensors", "pt2": "model.pt2", "onnx": "model.onnx", "torchscript": "model.pt"}
INT8_FILE = "model.int8.onnx"  # written by save_subnet(..., int8_images=...) (see quantize.py)
DEFAULT_FORMATS = ("safetensors", "pt2")
ONNX_OPSET = 18  # the dynamo exporter's lowest; onnxruntime >= 1.14 runs it
CONTRACT_FILE = "hypersan.json"  # the extra file of .pt2 / TorchScript exports that holds input_contract()
MAX_BATCH = 1 << 20  # the dynamic batch dimension's upper bound in .pt2 / ONNX exports
_REQUIRED = ("arch", "site_widths", "classes", "input_shape", "bn_folded")
# Bounds on what an artifact's config.json may ask load_subnet to build; real nets stay far below them, and the
# safetensors header check then bounds the allocation by the file's size.
MAX_CONFIG_BYTES = 1 << 22
MAX_WIDTH = 1 << 16  # channels of one layer (and image channels)
MAX_LAYERS = 1 << 10  # blocks (ResNet) or convs (VGG) in all stages together
MAX_IMAGE_SIDE = 1 << 16
_ARCH_KEYS = ("arch", "in_channels", "widths", "blocks", "mean", "std")
# a custom network's arch: its factory and what rebuilds the pruned net from it (nn.custom.rebuild_subnet)
_CUSTOM_KEYS = ("arch", "factory", "kwargs", "in_channels", "input_shape", "mean", "std", "dense_num_classes", "kept",
                "classes_kept", "folded")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def subnet_config(net: nn.Module, subtask: Optional[Sequence[int]] = None, source: Optional[str] = None) -> dict:
    """The config.json of a plain net: architecture, per-layer widths, classes, input shape, provenance."""
    arch = {k: v for k, v in net.arch.items() if k not in ("site_widths", "num_classes", "scaling")}
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


def input_contract(net: nn.Module) -> dict:
    """What a runtime needs to feed the net and read its output, stored inside every portable export."""
    c, h, w = net.input_shape
    return {
        "producer": f"hypersan {__version__}",
        "input": {"name": "images", "dtype": "float32", "shape": ["batch", c, h, w], "layout": "NCHW",
                  "range": [0.0, 1.0]},
        "normalization": {"inside_net": True, "mean": list(net.arch["mean"]), "std": list(net.arch["std"]),
                          "note": "the net subtracts mean and divides by std itself: feed raw pixels / 255"},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", len(net.classes)],
                   "meaning": "one logit per class, in the order of `classes`; sigmoid gives each class's score"},
        "classes": list(net.classes),
    }


def parse_formats(spec: str | Iterable[str]) -> list[str]:
    """Formats from "safetensors,pt2,onnx,torchscript" (or a list), validated and deduplicated."""
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in items if s not in FILES]
    if bad or not items:
        raise ValueError(f"unknown export format(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(FILES)}")
    return list(dict.fromkeys(items))


def _check_exportable(net: nn.Module) -> None:
    if len(net.input_shape) != 3:
        raise ValueError("the net has no input_shape [C, H, W]; build it with surgery.prune (or set net.input_shape)")


def _example(net: nn.Module) -> torch.Tensor:
    # a batch of 2 to trace: batch 1 would let the exporters specialize the batch dimension to a constant
    return torch.zeros(2, *net.input_shape, device=next(net.parameters()).device)


def _batch_dim():
    return {"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}


def _traced_form(net: nn.Module, layout_free: bool = False) -> nn.Module:
    """What the exporters trace: a copy in eval mode with its weights in the default layout (a .pt2 archive stores
    each weight as its whole storage and warns about other strides). `layout_free` (ONNX): its activations in the
    default layout too. onnxruntime picks its own layout, and a custom network's channels-last copy before a
    flatten reached the ONNX graph as shape arithmetic (Shape, Range, Gather, Reshape: 9 nodes more in the test
    MobileNet); the built-in nets' graphs come out the same either way. `.pt2` and TorchScript run torch's kernels,
    so they keep the net's own layout."""
    out = copy.deepcopy(net)
    if layout_free and hasattr(out, "channels_last"):
        out.channels_last = False
    return weights_layout(out.eval(), torch.contiguous_format)


def export_pt2(net: nn.Module, path: str | os.PathLike) -> Path:
    """Save a plain net with torch.export (dynamic batch), loadable with plain torch.export.load; the input
    contract is the extra file hypersan.json."""
    _check_exportable(net)
    net = _traced_form(net)
    program = torch.export.export(net, (_example(net),), dynamic_shapes=_batch_dim())
    torch.export.save(program, str(path), extra_files={CONTRACT_FILE: json.dumps(input_contract(net))})
    return Path(path)


def export_torchscript(net: nn.Module, path: str | os.PathLike) -> Path:
    """Save a plain net as TorchScript (legacy: TorchScript is deprecated in torch; prefer `pt2`). torch's own
    deprecation warning is let through. The input contract is the extra file hypersan.json."""
    _check_exportable(net)
    scripted = torch.jit.script(_traced_form(net))
    scripted.save(str(path), _extra_files={CONTRACT_FILE: json.dumps(input_contract(net))})
    return Path(path)


def export_onnx(net: nn.Module, path: str | os.PathLike) -> Path:
    """Save a plain net as ONNX with torch's dynamo exporter (opset 18, dynamic batch: input "images", output
    "logits", weights inside the one file); the input contract is in metadata_props."""
    import logging

    import onnx

    _check_exportable(net)
    quiet = logging.getLogger("torch.onnx")  # it warns that torchvision's ops are not registered: not used here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_traced_form(net, layout_free=True), (_example(net),), str(path), dynamo=True,
                              opset_version=ONNX_OPSET, input_names=["images"], output_names=["logits"],
                              dynamic_shapes=_batch_dim(), external_data=False, verbose=False, optimize=True)
    finally:
        quiet.setLevel(level)
    m = onnx.load(str(path))
    global_pools(m)
    add_onnx_contract(m, input_contract(net))
    onnx.save(m, str(path))
    return Path(path)


def _constants(graph) -> dict:
    """The graph's constant tensors by name (initializers and Constant nodes' values) as numpy arrays."""
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def global_pools(m) -> int:
    """Rewrite every spatial mean of a 4-D map (ReduceMean over axes 2 and 3, as torch exports `x.mean((2, 3))`
    and `AdaptiveAvgPool2d(1)`) as GlobalAveragePool, followed by Flatten where the mean dropped the axes. The
    two compute the same mean. onnxruntime keeps GlobalAveragePool in its blocked channel layout (NCHWc), where a
    ReduceMean first converts the whole last feature map back to NCHW: on the MobileNetV2-style test net at
    batch 64 that conversion and the mean took 8% of a pruned net's time (docs/CUSTOM.md). Edits `m` in place and
    returns how many means it rewrote; constants left unused are dropped."""
    from onnx import helper, shape_inference

    g = m.graph
    inferred = shape_inference.infer_shapes(m).graph
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in (*inferred.value_info, *inferred.input)
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    consts = _constants(g)
    nodes, done = [], 0
    for node in g.node:
        attrs = {a.name: a.i for a in node.attribute}
        axes = consts.get(node.input[1]) if node.op_type == "ReduceMean" and len(node.input) > 1 else None
        if (axes is None or rank.get(node.input[0]) != 4 or attrs.get("noop_with_empty_axes", 0)
                or sorted(int(a) % 4 for a in axes.ravel()) != [2, 3]):
            nodes.append(node)
            continue
        keep = attrs.get("keepdims", 1)
        pooled = node.output[0] if keep else node.output[0] + "_pooled"
        nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name + "_pool"))
        if not keep:
            nodes.append(helper.make_node("Flatten", [pooled], [node.output[0]], name=node.name + "_flat", axis=1))
        done += 1
    if done:
        del g.node[:]
        g.node.extend(nodes)
        read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        kept = [c for c in g.initializer if c.name in read]
        del g.initializer[:]
        g.initializer.extend(kept)
        unused = [n for n in g.node if n.op_type == "Constant" and n.output[0] not in read]
        for n in unused:
            g.node.remove(n)
    return done


def add_onnx_contract(m, contract: dict) -> None:
    """Store the input contract in an ONNX model's metadata_props: the whole of it as `hypersan`, and the parts
    a runtime reaches for first as their own keys."""
    props = {"hypersan": json.dumps(contract), "classes": json.dumps(contract["classes"]),
             "input_range": json.dumps(contract["input"]["range"]), "input_layout": contract["input"]["layout"],
             "normalization": "inside the net"}
    kept = [(p.key, p.value) for p in m.metadata_props if p.key not in props]
    del m.metadata_props[:]
    for k, v in [*kept, *props.items()]:
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v


def save_subnet(net: nn.Module, path: str | os.PathLike, formats: Iterable[str] = DEFAULT_FORMATS,
                subtask: Optional[Sequence[int]] = None, source: Optional[str] = None,
                extra: Optional[dict] = None, force: bool = False,
                int8_images: Optional[torch.Tensor] = None, int8_weight_bits: int = 7,
                log: Optional[Callable[[str], None]] = None) -> dict[str, Path]:
    """Write an artifact directory atomically: config.json plus one file per format; returns {format: path}.
    `log`, when given, is called with one line per file before it is written.

    `int8_images` (float32 in [0, 1], shape (N, C, H, W)): also write a statically quantized ONNX model
    (model.int8.onnx, key "int8"), calibrated on these images, its weights in `int8_weight_bits` bits (7: the
    same outputs on CPUs with and without VNNI; 8: the full range, see quantize.quantize_int8); the float ONNX
    file is written too.

    `path` must be free or an empty folder; an artifact already there is replaced only with force=True, and
    anything else is never replaced (io.OutputExistsError, raised before any work is done).
    """
    formats = parse_formats(list(formats))
    check_weight_bits(int8_weight_bits)  # before any file is written
    _check_exportable(net)
    net = net.eval()
    config = subnet_config(net, subtask, source)
    config.update(extra or {})
    if int8_images is not None and "onnx" not in formats:
        formats.append("onnx")  # the INT8 model is quantized from the float one, which ships beside it
    config["files"] = {f: FILES[f] for f in formats}
    if int8_images is not None:
        config["files"]["int8"] = INT8_FILE
    out = {f: Path(path) / FILES[f] for f in formats}
    say = log or (lambda m: None)
    with atomic_dir(path, ARTIFACT_KIND, force) as tmp:
        write_json(tmp / "config.json", config)
        if "safetensors" in formats:
            say(f"writing {FILES['safetensors']}")
            save_tensors(tmp / FILES["safetensors"], net.state_dict())
        if "pt2" in formats:
            say(f"writing {FILES['pt2']} (torch.export)")
            export_pt2(net, tmp / FILES["pt2"])
        if "torchscript" in formats:
            say(f"writing {FILES['torchscript']} (TorchScript)")
            export_torchscript(net, tmp / FILES["torchscript"])
        if "onnx" in formats:
            say(f"writing {FILES['onnx']} (ONNX, dynamo exporter)")
            export_onnx(net, tmp / FILES["onnx"])
        if int8_images is not None:
            from .quantize import quantize_int8

            say(f"writing {INT8_FILE} (static INT8, calibrated on {len(int8_images)} images)")
            config["int8"] = quantize_int8(tmp / FILES["onnx"], tmp / INT8_FILE, int8_images,
                                           weight_bits=int8_weight_bits)
            out["int8"] = Path(path) / INT8_FILE
            write_json(tmp / "config.json", config)
    return out


def _pos_int(x, cap: int) -> bool:
    return type(x) is int and 1 <= x <= cap  # type(): a JSON true is not a width


def _number(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def _check_config(cfg, where: str) -> tuple[dict, list[str], bool, list[int]]:
    """(arch with site_widths and num_classes, classes, bn_folded, input_shape) of a config.json, every field
    type-checked and bounded; ArtifactError naming the first bad field."""
    def bad(field: str, what: str) -> ArtifactError:
        return ArtifactError(f"{where}: {field} {what}; the artifact is corrupt or was not written by hypersan "
                             "(re-export it with `hypersan prune`)")

    if not isinstance(cfg, dict):
        raise bad("the file", "is not a JSON object")
    fmt = cfg.get("format")
    if fmt != ARTIFACT_FORMAT or type(fmt) is not int:
        raise ArtifactError(f"{where}: artifact format {fmt!r} is not supported (this hypersan {__version__} reads "
                            f"format {ARTIFACT_FORMAT}); re-export it, or use the hypersan version that wrote it")
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise ArtifactError(f"{where} lacks {', '.join(missing)}; the artifact is incomplete")
    bn_folded = cfg["bn_folded"]
    if type(bn_folded) is not bool:
        raise bad("bn_folded", f"must be a JSON boolean (true or false), not {bn_folded!r}")
    classes = cfg["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "must be a non-empty list of class names (strings)")
    if len(set(classes)) != len(classes):
        dup = sorted(c for c, n in collections.Counter(classes).items() if n > 1)  # linear: the list may be long
        raise bad("classes", f"must name each class once; repeated: {', '.join(map(repr, dup[:8]))}")
    arch = cfg["arch"]
    if not isinstance(arch, dict):
        raise bad("arch", "must be a JSON object")
    if arch.get("arch") == "custom":
        return _check_custom(arch, cfg, classes, bad), list(classes), bn_folded, list(cfg["input_shape"])
    _check_keys(arch, _ARCH_KEYS, "must have exactly the keys", bad)
    if arch["arch"] not in ("resnet", "vgg"):
        raise bad("arch.arch", f"must be \"resnet\" or \"vgg\", not {arch['arch']!r}")
    c = arch["in_channels"]
    if not _pos_int(c, MAX_WIDTH):
        raise bad("arch.in_channels", f"must be an integer from 1 to {MAX_WIDTH}, not {c!r}")
    widths, blocks = arch["widths"], arch["blocks"]
    if not isinstance(widths, list) or not widths or not all(_pos_int(w, MAX_WIDTH) for w in widths):
        raise bad("arch.widths", f"must be a non-empty list of integers from 1 to {MAX_WIDTH}")
    if (not isinstance(blocks, list) or len(blocks) != len(widths) or not all(_pos_int(b, MAX_LAYERS) for b in blocks)
            or sum(blocks) > MAX_LAYERS):
        raise bad("arch.blocks", f"must be a list of positive integers, one per width, {MAX_LAYERS} in all at most")
    for key in ("mean", "std"):
        v = arch[key]
        if not isinstance(v, list) or len(v) not in (1, c) or not all(_number(x) for x in v):
            raise bad(f"arch.{key}", f"must be a list of 1 or {c} (in_channels) finite numbers")
    if not all(s > 0 for s in arch["std"]):
        raise bad("arch.std", "must be positive")
    sw = cfg["site_widths"]
    if not isinstance(sw, dict):
        raise bad("site_widths", "must be a JSON object {site: width}")
    known = set(site_names(arch))
    for name, w in sw.items():
        if name not in known:
            raise bad("site_widths", f"names {name!r}, which is no site of this {arch['arch']} (its sites: "
                      f"{', '.join(sorted(known)[:6])}, ...)")
        if not _pos_int(w, MAX_WIDTH):
            raise bad(f"site_widths[{name!r}]", f"= {w!r} is not a width from 1 to {MAX_WIDTH}")
    shape = cfg["input_shape"]
    if (not isinstance(shape, list) or len(shape) != 3 or not _pos_int(shape[0], MAX_WIDTH)
            or not all(_pos_int(d, MAX_IMAGE_SIDE) for d in shape[1:])):
        raise bad("input_shape", f"must be [channels, height, width], positive integers, not {shape!r}")
    if shape[0] != c:
        raise bad("input_shape", f"has {shape[0]} channels, but arch.in_channels is {c}")
    return dict(arch, site_widths=dict(sw), num_classes=len(classes)), list(classes), bn_folded, list(shape)


def _check_keys(arch: dict, keys: tuple, what: str, bad: Callable[[str, str], ArtifactError]) -> None:
    """An ArtifactError unless `arch` has exactly `keys`, naming the unknown and the missing ones."""
    unknown = sorted(set(arch) - set(keys))
    lacking = [k for k in keys if k not in arch]
    if unknown or lacking:
        raise bad("arch", f"{what} {', '.join(keys)}" + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                  + (f"; missing: {', '.join(lacking)}" if lacking else ""))


def _check_custom(arch: dict, cfg: dict, classes: list, bad: Callable[[str, str], ArtifactError]) -> dict:
    """The arch of a custom network's artifact, type-checked (the factory's own code checks the rest)."""
    _check_keys(arch, _CUSTOM_KEYS, "of a custom network must have the keys", bad)
    if not isinstance(arch["factory"], str) or ":" not in arch["factory"]:
        raise bad("arch.factory", "must name a function as 'package.module:function'")
    if not isinstance(arch["kwargs"], dict):
        raise bad("arch.kwargs", "must be a JSON object")
    shape = cfg["input_shape"]
    if (not isinstance(shape, list) or len(shape) != 3 or not all(_pos_int(d, MAX_IMAGE_SIDE) for d in shape)
            or arch["input_shape"] != shape or arch["in_channels"] != shape[0]):
        raise bad("input_shape", f"must be [channels, height, width] as arch.input_shape, not {shape!r}")
    n = arch["dense_num_classes"]
    kept_cls = arch["classes_kept"]
    if (not _pos_int(n, 10 ** 6) or not isinstance(kept_cls, list) or len(kept_cls) != len(classes)
            or not all(type(i) is int and 0 <= i < n for i in kept_cls)):
        raise bad("arch.classes_kept", f"must list one class index below {n!r} per class name")
    kept = arch["kept"]
    if not isinstance(kept, dict) or not all(isinstance(v, list) and v and all(type(i) is int and 0 <= i < MAX_WIDTH
                                                                             for i in v) for v in kept.values()):
        raise bad("arch.kept", "must map each channel group to a non-empty list of channel indices")
    folded = arch["folded"]
    if not isinstance(folded, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p)
                                               for p in folded):
        raise bad("arch.folded", "must list [conv, bn] module name pairs")
    if folded and not cfg["bn_folded"]:
        raise bad("arch.folded", "names folded BN layers, but bn_folded is false")
    return dict(arch, site_widths=dict(cfg["site_widths"]), num_classes=len(classes))


def _load_custom(p: Path, arch: dict, classes: list, map_location) -> nn.Module:
    """A custom network's pruned net, rebuilt by its factory and the kept channels, then its weights loaded."""
    from ..nn.custom import rebuild_subnet
    from ..nn.graph import GraphError

    weights = p / FILES["safetensors"]
    try:
        net = rebuild_subnet(arch, classes)
    except GraphError as e:
        raise ArtifactError(f"{p}: cannot rebuild the custom network: {e}") from None
    check_safetensors(weights, expected_tensors(net), str(weights))
    net.load_state_dict(load_tensors(weights), strict=True)
    return net.to(map_location).eval()


def load_subnet(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a plain net from an artifact directory's widths and load its weights (nothing is unpickled).

    Every config.json field and the safetensors header are checked before anything is allocated: what
    loading allocates is what config.json describes, and no more than the weights file holds.
    """
    p = Path(path)
    if not p.is_dir():
        raise ArtifactError(f"artifact directory {str(p)!r} not found")
    where = p / "config.json"
    arch, classes, bn_folded, input_shape = _check_config(read_json(where, max_bytes=MAX_CONFIG_BYTES), str(where))
    weights = p / FILES["safetensors"]
    if not weights.is_file():
        raise ArtifactError(f"{weights} is missing; export the artifact with the safetensors format to load it "
                            "with load_subnet (model.pt and model.onnx load with torch.jit.load / onnxruntime)")
    if arch["arch"] == "custom":  # rebuilt by the user's factory (code, not a pickle), then loaded
        return _load_custom(p, arch, classes, map_location)
    # built on the meta device: the shapes and dtypes to check the header against, with no memory behind them
    try:
        with torch.device("meta"):
            net = build_plain(arch, classes, bn_folded)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{where}: cannot build the network it describes ({e!r})") from None
    check_safetensors(weights, expected_tensors(net), str(weights))
    # assign: the loaded tensors become the net's, so the weights are allocated once, and never initialized
    net.load_state_dict(load_tensors(weights), strict=True, assign=True)
    left = [k for k, v in itertools.chain(net.named_parameters(), net.named_buffers()) if v.is_meta]
    if left:  # state the state dict does not cover: a bug here, not in the file
        raise RuntimeError(f"load_subnet: {', '.join(left[:4])} were not loaded from {weights}")
    net.input_shape = input_shape
    return net.to(map_location).eval()
