"""Per-subtask BatchNorm recalibration."""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import Tensor, nn

BNStats = Dict[str, Tensor]  # "<bn module name>.running_mean" / ".running_var" -> tensor


def bn_modules(net: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {n: m for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def get_bn_stats(net: nn.Module) -> BNStats:
    """A copy of every BN layer's running mean and variance."""
    out = {}
    for n, m in bn_modules(net).items():
        out[f"{n}.running_mean"] = m.running_mean.detach().clone()
        out[f"{n}.running_var"] = m.running_var.detach().clone()
    return out


def set_bn_stats(net: nn.Module, stats: BNStats) -> None:
    """Load running statistics produced by get_bn_stats or recalibrate."""
    for n, m in bn_modules(net).items():
        m.running_mean.copy_(stats[f"{n}.running_mean"])
        m.running_var.copy_(stats[f"{n}.running_var"])


@torch.no_grad()
def recalibrate(net: nn.Module, forward: Callable[[Tensor], Tensor], batches) -> BNStats:
    """Recompute BN running statistics as the exact average over `batches` of forward(x).

    The net's own statistics and train/eval mode are restored afterwards; the new ones are returned.
    """
    bns = bn_modules(net)
    saved = get_bn_stats(net)
    was_training = net.training
    momenta = {n: m.momentum for n, m in bns.items()}
    for m in bns.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    net.train()
    try:
        for x in batches:
            forward(x)
        return get_bn_stats(net)
    finally:
        for n, m in bns.items():
            m.momentum = momenta[n]
        set_bn_stats(net, saved)
        net.train(was_training)
