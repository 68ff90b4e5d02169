"""A net's BatchNorm running statistics, read and written by module name: what a subtask's own statistics
replace in a copy of the backbone (prune.stats computes and caches them; prune.surgery loads them into a subnet)."""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

BNStats = Dict[str, Tensor]  # "<bn module name>.running_mean" / ".running_var" -> tensor


def bn_modules(net: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of a net, by module name."""
    return {n: m for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def get_bn_stats(net: nn.Module) -> BNStats:
    """A copy of every BN layer's running mean and variance."""
    out = {}
    for n, m in bn_modules(net).items():
        out[f"{n}.running_mean"] = m.running_mean.detach().clone()
        out[f"{n}.running_var"] = m.running_var.detach().clone()
    return out


@torch.no_grad()
def set_bn_stats(net: nn.Module, stats: BNStats, prefix: str = "") -> None:
    """Load running statistics produced by get_bn_stats or recalibrate. prefix: the net's name inside the module
    the statistics were read from (e.g. "net." for a custom backbone's wrapped network)."""
    for n, m in bn_modules(net).items():
        m.running_mean.copy_(stats[f"{prefix}{n}.running_mean"])
        m.running_var.copy_(stats[f"{prefix}{n}.running_var"])


__all__ = ["BNStats", "bn_modules", "get_bn_stats", "set_bn_stats"]
