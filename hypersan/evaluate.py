"""Evaluation of a subtask-adaptive net: accuracy, mAP and compute per subtask, beside the dense net."""
from __future__ import annotations

import re
import time
from typing import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from .metrics import kept_widths, mean_average_precision, subnet_cost, subset_accuracy
from .model import SubtaskAdaptiveNet
from .subtasks import Subtask, enumerate_size


@torch.no_grad()
def predict(model: SubtaskAdaptiveNet, images: Tensor, subtask: Subtask | None, batch_size: int = 1000) -> Tensor:
    """Logits (N, num_classes) of the masked net for a subtask (None: dense), with its calibrated BN statistics."""
    model.eval()
    masks = None if subtask is None else model.subtask_masks(subtask)
    dev = model._device()
    out = []
    with model.using_stats(subtask):
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(dev).float().div_(255.0)
            out.append(model.backbone(x, masks).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def plain_accuracy(net, classes: Sequence[int], images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """|T|-way accuracy of a plain (pruned) net of the classes T on the uint8 images whose label is in T.
    The net's logits are T in ascending class-index order, as surgery builds them."""
    cls = torch.tensor(sorted(set(int(c) for c in classes)))
    keep = torch.isin(labels, cls)
    if not bool(keep.any()):
        raise ValueError("no sample has a label in the subtask")
    x, y = images[keep], labels[keep]
    dev = next(net.parameters()).device
    pred = torch.cat([net(x[i:i + batch_size].to(dev).float().div_(255.0)).argmax(1).cpu()
                      for i in range(0, len(x), batch_size)])
    return (cls[pred] == y).float().mean().item()


def parse_subtasks(model: SubtaskAdaptiveNet, specs: Sequence[str], seed: int = 0) -> list[Subtask]:
    """Subtasks from specs: "Sneaker,Bag" (names or indices), "seen", "unseen", "all", "size=K[,n=M]"."""
    k = len(model.basic)
    out: list[Subtask] = []
    for spec in specs:
        s = spec.strip()
        m = re.fullmatch(r"size=(\d+)(?:,\s*n=(\d+))?", s)
        if m:
            size = int(m.group(1))
            if not 1 <= size <= k:
                raise ValueError(f"subtask spec {spec!r}: size must lie in 1..{k}")
            basics = enumerate_size(k, size, int(m.group(2)) if m.group(2) else None, seed)
            out += [model.classes_of(b) for b in basics]
        elif s in ("seen", "unseen"):
            held = set(model.holdout.listing())
            for size in range(1, k + 1):
                if s == "seen":
                    basics = enumerate_size(k, size, 5, seed, exclude=held)
                else:
                    basics = enumerate_size(k, size, 5, seed, only=held) if 2 <= size < k else []
                out += [model.classes_of(b) for b in basics]
        elif s == "all":
            out.append(tuple(range(len(model.classes))))
        else:
            names = [c for c in re.split(r"[,;]", s) if c.strip()]
            if not names:
                raise ValueError(f"empty subtask spec {spec!r}")
            out.append(model.resolve(int(c) if c.strip().isdigit() else c for c in names))
    seen, uniq = set(), []
    for t in out:
        if t not in seen:
            seen.add(t)
            uniq.append(t)
    return uniq


def evaluate(model: SubtaskAdaptiveNet, test_x: Tensor, test_y: Tensor, calib_x: Tensor,
             subtasks: Sequence[Subtask], progress: bool = True, seed: int = 0) -> dict:
    """Per-subtask acc / mAP / mac_ratio / param_ratio, beside the dense net restricted to each subtask."""
    t0 = time.perf_counter()
    info = model.info
    arch = model.backbone.arch
    dense_macs, dense_params = subnet_cost(arch, arch["site_widths"], len(info.classes), info.input_shape)
    model.calibrate(None, calib_x, seed=seed)
    dense_logits = predict(model, test_x, None)
    all_cls = list(range(len(info.classes)))
    result = {"dense": {"acc": subset_accuracy(dense_logits, test_y, all_cls),
                        "map": mean_average_precision(dense_logits, test_y, all_cls),
                        "macs": dense_macs, "params": dense_params},
              "subtasks": []}
    for t in tqdm(subtasks, desc="subtasks", disable=not progress, leave=False):
        model.calibrate(t, calib_x, seed=seed)
        logits = predict(model, test_x, t)
        widths = kept_widths(model.subtask_masks(t), model.sites)
        macs, params = subnet_cost(arch, widths, len(t), info.input_shape)
        cls = list(t)
        result["subtasks"].append({
            "classes": [info.classes[i] for i in t], "indices": cls, "size": len(t), "seen": model.is_seen(t),
            "acc": subset_accuracy(logits, test_y, cls) if len(t) > 1 else 1.0,
            "dense_acc": subset_accuracy(dense_logits, test_y, cls) if len(t) > 1 else 1.0,
            "map": mean_average_precision(logits, test_y, cls),
            "dense_map": mean_average_precision(dense_logits, test_y, cls),
            "mac_ratio": macs / dense_macs, "param_ratio": params / dense_params,
        })
    result["seconds"] = time.perf_counter() - t0
    return result
