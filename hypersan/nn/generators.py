"""Mask generators: `generator(condition) -> {site_name: tensor}`.

Both generators return raw per-sample values: non-negative utilities (|u|) on utility sites and
signed scalings on scaling sites. `to_masks` turns them into channel multipliers.
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch
from torch import Tensor, nn

from .backbones import Site
from .masks import binarize, combine_max, combine_maxabs


class BudgetError(ValueError):
    """A budget no subnet can meet, one outside a model's range, or one given to a model that takes none."""


def budget_label(budget: float) -> str | None:
    """The name of a budget in statistics keys and subnet ids ("b0.1"); None for no limit (1)."""
    return None if budget >= 1.0 else f"b{budget:g}"


BUDGET_FEATURES = 7  # t, and sin / cos of pi k t for k = 1..3, with t = log b / log b_min in [0, 1]


def budget_features(budgets: Tensor, b_min: float) -> Tensor:
    """(B, BUDGET_FEATURES) generator input of budgets (B,) in [b_min, 1]: t = log b / log b_min (0 at no limit,
    1 at the smallest budget) and a few of its sines and cosines, so that the generator can interpolate."""
    if b_min >= 1.0:  # one budget only: nothing to tell apart
        t = torch.zeros_like(budgets).unsqueeze(1)
    else:
        t = (budgets.clamp(b_min, 1.0).log() / math.log(b_min)).unsqueeze(1)
    k = torch.arange(1, 4, device=budgets.device, dtype=budgets.dtype)
    return torch.cat([t, torch.sin(math.pi * k * t), torch.cos(math.pi * k * t)], dim=1)


def to_masks(raw: Dict[str, Tensor], sites: List[Site], threshold: float, temp: float, min_keep: int,
             multiple: int = 1) -> Dict[str, Tensor]:
    """Channel multipliers: binarized utilities on utility sites (keep rule applied), scalings as they are."""
    out = {}
    for s in sites:
        out[s.name] = binarize(raw[s.name], threshold, temp, min_keep, multiple) if s.kind == "utility" else raw[s.name]
    return out


def mean_utility(raw: Dict[str, Tensor], sites: List[Site]) -> Tensor:
    """Mean utility over every utility channel, per sample (B,): the L1 sparsity term."""
    total = sum(raw[s.name].sum(dim=1) for s in sites if s.kind == "utility")
    count = sum(s.size for s in sites if s.kind == "utility")
    return total / count


class PerTaskMasks(nn.Module):
    """Learned utility and scaling vectors per basic subtask, combined with max / MaxAbs."""

    def __init__(self, sites: List[Site], num_basic: int, sigma: float = 1.0):
        super().__init__()
        self.sites = list(sites)
        self.num_basic = num_basic
        self.values = nn.ParameterList()
        for s in self.sites:
            init = torch.randn(num_basic, s.size) * sigma if s.kind == "utility" else torch.ones(num_basic, s.size)
            self.values.append(nn.Parameter(init))

    def forward(self, condition: Tensor) -> Dict[str, Tensor]:
        select = condition > 0.5  # (B, K) multi-hot over basic subtasks
        if condition.shape[-1] != self.num_basic:
            raise ValueError(f"condition has {condition.shape[-1]} entries, expected {self.num_basic} basic subtasks")
        if not bool(select.any(dim=1).all()):
            raise ValueError("every condition must select at least one basic subtask")
        out = {}
        for s, v in zip(self.sites, self.values):
            out[s.name] = combine_max(v.abs(), select) if s.kind == "utility" else combine_maxabs(v, select)
        return out


class HyperNetwork(nn.Module):
    """MLP from a condition vector (multi-hot or text embedding) to utilities and scalings of every site."""

    def __init__(self, sites: List[Site], cond_dim: int, hidden: int = 256, layers: int = 2, sigma: float = 1.0,
                 linear_skip: bool = True):
        super().__init__()
        self.sites = list(sites)
        self.cond_dim = cond_dim
        trunk: List[nn.Module] = []
        d = cond_dim
        for _ in range(layers):
            trunk += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        self.trunk = nn.Sequential(*trunk)
        self.heads = nn.ModuleList(nn.Linear(d, s.size) for s in self.sites)
        # the linear path lets each basic subtask add its own channels: bigger subtasks can ask for more
        self.skips = nn.ModuleList(nn.Linear(cond_dim, s.size, bias=False) for s in self.sites) if linear_skip else None
        for sk in self.skips or []:
            nn.init.zeros_(sk.weight)
        for s, h in zip(self.sites, self.heads):
            nn.init.normal_(h.weight, std=0.01)
            if s.kind == "utility":
                nn.init.normal_(h.bias, std=sigma)  # utility ~ N(0, sigma)
            else:
                nn.init.ones_(h.bias)  # scaling ~ 1

    def forward(self, condition: Tensor) -> Dict[str, Tensor]:
        if condition.shape[-1] != self.cond_dim:
            raise ValueError(f"condition has {condition.shape[-1]} entries, expected {self.cond_dim}")
        h = self.trunk(condition)  # (B, hidden)
        out = {}
        for i, (s, head) in enumerate(zip(self.sites, self.heads)):
            v = head(h)  # (B, C)
            if self.skips is not None:
                v = v + self.skips[i](condition)
            out[s.name] = v.abs() if s.kind == "utility" else v
        return out
