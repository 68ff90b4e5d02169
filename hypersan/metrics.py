"""Accuracy, average precision, and MAC / parameter counts of (sub)networks."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .backbones import build_backbone


def subset_accuracy(logits: Tensor, labels: Tensor, classes: list[int]) -> float:
    """|T|-way accuracy on the samples whose label is in T: argmax over T's logits."""
    cls = torch.tensor(classes)
    keep = torch.isin(labels, cls)
    if not bool(keep.any()):
        raise ValueError("no sample has a label in the subtask")
    pred = cls[logits[keep][:, cls].argmax(dim=1)]
    return (pred == labels[keep]).float().mean().item()


def average_precision(scores: Tensor, positives: Tensor) -> float:
    """Average precision of a ranking: the mean precision at the rank of each positive."""
    order = scores.argsort(descending=True, stable=True)
    hits = positives[order].float()
    if hits.sum() == 0:
        raise ValueError("average precision needs at least one positive")
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return (precision * hits).sum().item() / hits.sum().item()


def mean_average_precision(logits: Tensor, labels: Tensor, classes: list[int]) -> float:
    """mAP of T's classes over all samples (samples outside T are negatives for every class)."""
    return sum(average_precision(logits[:, c], labels == c) for c in classes) / len(classes)


def count_macs(net: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward on a single input, from torch's flop counter."""
    was = net.training
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, *input_shape, device=next(net.parameters()).device))
    net.train(was)
    return fc.get_total_flops() // 2


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def kept_widths(masks: dict[str, Tensor], sites) -> dict[str, int]:
    """Kept channels per utility site, from masks of one subtask (row 0)."""
    return {s.name: int((masks[s.name][0] != 0).sum()) for s in sites if s.kind == "utility"}


def subnet_cost(arch: dict, widths: dict[str, int], num_classes: int, input_shape) -> tuple[int, int]:
    """(MACs, params) of the network an architecture gives with the kept widths and a head of num_classes."""
    a = dict(arch, site_widths=widths, num_classes=num_classes)
    net = build_backbone(a)
    return count_macs(net, input_shape), count_params(net)


def conv_macs(net: nn.Module, input_shape, block: int = 1) -> int:
    """MACs of a net's convolutions on one input, with each conv's output channels rounded up to a
    multiple of `block` (block=1: the plain count). CPU kernels that compute output channels in vector
    blocks (oneDNN on AVX-512: 16 floats) cost about the block-rounded count."""
    if block < 1:
        raise ValueError(f"block must be a positive integer, got {block}")
    total = [0]

    def hook(mod, args, out):
        cout = -(-mod.out_channels // block) * block
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total[0] += out.shape[-2] * out.shape[-1] * k * (mod.in_channels // mod.groups) * cout

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    was = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *input_shape, device=next(net.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        net.train(was)
    return total[0]
