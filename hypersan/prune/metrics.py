"""Accuracy, average precision, and MAC / parameter counts of (sub)networks."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..nn.backbones import build_backbone


def subset_accuracy(logits: Tensor, labels: Tensor, classes: list[int]) -> float:
    """|T|-way accuracy on the samples whose label is in T: argmax over T's logits."""
    cls = torch.tensor(classes)
    keep = torch.isin(labels, cls)
    if not bool(keep.any()):
        raise ValueError("no sample has a label in the subtask")
    pred = cls[logits[keep][:, cls].argmax(dim=1)]
    return (pred == labels[keep]).float().mean().item()


@torch.no_grad()
def plain_logits(net: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Logits (N, len(net.classes)) of a plain net on uint8 images, on the CPU."""
    dev = next(net.parameters()).device
    out = [net(images[i:i + batch_size].to(dev).float().div_(255.0)).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def _plain_right(net, classes: Sequence[int], images: Tensor, labels: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """(which images have a label in T, whether the net's |T|-way answer on each of those is right)."""
    cls = torch.tensor(sorted(set(int(c) for c in classes)))
    keep = torch.isin(labels, cls)
    if not bool(keep.any()):
        raise ValueError("no sample has a label in the subtask")
    pred = plain_logits(net, images[keep], batch_size).argmax(1)
    return keep, cls[pred] == labels[keep]


def plain_accuracy(net, classes: Sequence[int], images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """|T|-way accuracy of a plain (pruned) net of the classes T on the uint8 images whose label is in T.
    The net's logits are T in ascending class-index order, as surgery builds them."""
    return _plain_right(net, classes, images, labels, batch_size)[1].float().mean().item()


def plain_accuracy_and_errors(net, classes: Sequence[int], images: Tensor, labels: Tensor,
                              batch_size: int = 256) -> tuple[float, list[int]]:
    """plain_accuracy, and the indices into `images` of the images of T the net gets wrong (so that two nets can
    be compared image by image)."""
    keep, right = _plain_right(net, classes, images, labels, batch_size)
    return right.float().mean().item(), keep.nonzero().flatten()[~right].tolist()


def average_precision(scores: Tensor, positives: Tensor, ties: str = "stable") -> float:
    """Average precision of a ranking by descending score: the mean, over positives, of the precision at
    the positive's rank.

    Tied scores: with ties="stable" (the default, used by every recorded metric) tied items keep their
    order in the input, the earlier one ranked first, whatever their labels. With ties="group" a run of
    tied items counts as one cut-off: every positive in it gets the precision at the run's end (as
    scikit-learn does), which does not depend on the input order. The two differ only on exactly equal
    scores (by about 1e-7 on the shipped models' logits).
    """
    if scores.ndim != 1 or positives.shape != scores.shape:
        raise ValueError(f"scores and positives must be 1-D of the same length, got {tuple(scores.shape)} "
                         f"and {tuple(positives.shape)}")
    if ties not in ("stable", "group"):
        raise ValueError(f"ties = {ties!r}; choose 'stable' or 'group'")
    order = scores.argsort(descending=True, stable=True)
    hits = positives[order].float()
    if hits.sum() == 0:
        raise ValueError("average precision needs at least one positive")
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    if ties == "group":
        ranked = scores[order]
        ends = torch.ones(len(ranked), dtype=torch.bool)
        ends[:-1] = ranked[1:] != ranked[:-1]  # last item of each run of equal scores
        end_of = torch.nonzero(ends).flatten()
        precision = precision[end_of][torch.searchsorted(end_of, torch.arange(len(ranked)))]
    return (precision * hits).sum().item() / hits.sum().item()


def one_vs_rest_ap(logits: Tensor, labels: Tensor, cls: int, ties: str = "stable") -> float:
    """AP of one class's logit over every sample (the others are negatives): the score of a one-class
    subtask, whose 1-way accuracy is always 1.0."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if isinstance(cls, bool) or not 0 <= int(cls) < logits.shape[1]:
        raise ValueError(f"class {cls!r} out of range 0..{logits.shape[1] - 1}")
    positives = labels == int(cls)
    if not bool(positives.any()):
        raise ValueError(f"no sample has label {int(cls)}: its average precision is undefined")
    return average_precision(logits[:, int(cls)], positives, ties)


def mean_average_precision(logits: Tensor, labels: Tensor, classes: list[int], ties: str = "stable") -> float:
    """mAP of T's classes over all samples (samples outside T are negatives for every class)."""
    return sum(one_vs_rest_ap(logits, labels, c, ties) for c in classes) / len(classes)


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
    """(MACs, params) of the network an architecture gives with the kept widths and a head of num_classes.
    MACs as count_macs counts them (convolutions and linear layers), from each conv's output size, which
    widths do not change (measured once per architecture), times its weights: no counted forward."""
    import json

    a = dict(arch, site_widths=widths, num_classes=num_classes)
    with torch.device("cpu"):  # small nets build in milliseconds; the meta device's first use costs seconds
        net = build_backbone(a)
    key = json.dumps([{k: v for k, v in arch.items() if k not in ("site_widths", "num_classes")}, list(input_shape)],
                     sort_keys=True, default=str)
    if key not in _COUNTERS:
        _COUNTERS[key] = MacCounter(net, tuple(input_shape))
    return _COUNTERS[key](net), count_params(net)


def output_pixels(net: nn.Module, input_shape) -> dict[str, int]:
    """{module name: output pixels per channel} of every conv (1 for linear layers), from one forward of a zero
    input on the net's device (the meta device too: only shapes are needed)."""
    out: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o[0, 0].numel()))
             for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, *input_shape, device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        net.train(was)
    return out


class MacCounter:
    """MACs of a net's convolutions and linear layers (what count_macs counts) from their current weights and
    the output sizes recorded once: channel pruning changes widths, never spatial sizes, so one counter serves
    a net through every pruning step, and every net of one architecture."""

    def __init__(self, net: nn.Module, input_shape):
        self.pixels = output_pixels(net, input_shape)

    def __call__(self, net: nn.Module) -> int:
        return sum(self.pixels[n] * m.weight.numel() for n, m in net.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear)))


_COUNTERS: dict[str, MacCounter] = {}  # per architecture and input shape


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


def containment_violations(kept_small: dict[str, Tensor], kept_large: dict[str, Tensor]) -> tuple[int, int]:
    """(violations, channels): kept channels of a subset's net (per site, index tensors or bool masks) that its
    superset's net does not keep, and the subset's kept channels in all. Per-task max combination is monotone
    in the utilities, but the keep rule (min_keep rescues, rounding to keep_multiple) can still drop a channel
    from the superset, so kept-channel monotonicity is measured, not assumed."""
    bad = total = 0
    for site, small in kept_small.items():
        s = _as_index_set(small)
        big = _as_index_set(kept_large[site])
        bad += len(s - big)
        total += len(s)
    return bad, total


def _as_index_set(t: Tensor) -> set[int]:
    t = torch.as_tensor(t)
    if t.dtype == torch.bool or (t.dim() >= 1 and t.numel() > 0 and set(t.flatten().tolist()) <= {0, 1}
                                 and t.dtype.is_floating_point):
        return set(t.flatten().nonzero().flatten().tolist())
    return set(int(i) for i in t.flatten().tolist())


def out_of_subtask_false_positive_rate(logits: Tensor, labels: Tensor, classes: list[int]) -> float:
    """Share of images whose label is outside the subtask T on which a T-net fires: some sigmoid output > 0.5
    (logit > 0). `logits` are (N, |T|) in the order of `classes`. A subtask net should not call a coat a
    sneaker."""
    if logits.shape[1] != len(classes):
        raise ValueError(f"logits have {logits.shape[1]} columns for {len(classes)} classes")
    outside = ~torch.isin(labels, torch.tensor(list(classes)))
    if not bool(outside.any()):
        raise ValueError("no image lies outside the subtask: the false-positive rate is undefined")
    return (logits[outside] > 0).any(dim=1).float().mean().item()
