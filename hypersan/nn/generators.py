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


def mean_utility(raw: Dict[str, Tensor], sites: List[Site], prices: Dict[str, float] | None = None) -> Tensor:
    """Mean utility over every utility channel, per sample (B,): the L1 sparsity term. With `prices` (per site,
    what one channel costs, normalised to a mean of 1 over channels: `prune.budget.MacModel.prices`), each
    channel's utility is weighed by its price, so the term pushes hardest where channels cost most."""
    util = [s for s in sites if s.kind == "utility"]
    total = sum(raw[s.name].sum(dim=1) * (1.0 if prices is None else prices[s.name]) for s in util)
    count = sum(s.size for s in util)
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


NESTED_KNOTS = (0.0, 0.25, 0.5, 0.75)  # knots of the nested budget shift: a monotone piecewise-linear function of t


class NestedBudgetShift(nn.Module):
    """Per utility site, a log-scale g(class set, b) of every utility that never rises as the budget shrinks:
    g = c - sum_k softplus(w_k) relu(t - knot_k), with c and w_k read from the class set alone (not the budget,
    which would break the monotony), and t = log b / log b_min. Scaling a site's utilities by exp(g) keeps their
    order, and a smaller budget only lowers them, so the channels kept at a budget are kept at every larger one: a
    class set's nets are nested."""

    def __init__(self, num_sites: int, cond_dim: int, hidden: int = 64):
        super().__init__()
        self.num_sites = num_sites
        self.mlp = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_sites * (1 + len(NESTED_KNOTS))))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)  # c = 0 and softplus(0) slopes: every site shrinks with t from the start
        self.register_buffer("knots", torch.tensor(NESTED_KNOTS), persistent=False)

    def forward(self, condition: Tensor, t: Tensor) -> Tensor:
        """(B, num_sites) log-scales for class conditions (B, D) whose budgets have t (B,)."""
        p = self.mlp(condition).view(len(condition), self.num_sites, 1 + len(NESTED_KNOTS))
        ramps = torch.relu(t[:, None] - self.knots.to(t.dtype))  # (B, K), each non-decreasing in t
        return p[..., 0] - (nn.functional.softplus(p[..., 1:]) * ramps[:, None, :]).sum(dim=2)


class HyperNetwork(nn.Module):
    """MLP from a condition vector (multi-hot or text embedding) to utilities and scalings of every site.

    With `nested_budget` (a budget-conditioned model whose condition ends with the BUDGET_FEATURES of its
    budget), the MLP reads the class set alone, and a NestedBudgetShift scales each site's utilities by a factor
    that falls with the budget: one channel order per class set and site, and nets nested across budgets."""

    def __init__(self, sites: List[Site], cond_dim: int, hidden: int = 256, layers: int = 2, sigma: float = 1.0,
                 linear_skip: bool = True, nested_budget: bool = False):
        super().__init__()
        self.sites = list(sites)
        self.cond_dim = cond_dim
        self.nested = None
        if nested_budget:
            if cond_dim <= BUDGET_FEATURES:
                raise ValueError(f"a nested budget needs a class condition before the {BUDGET_FEATURES} budget "
                                 f"features; the condition has {cond_dim} entries")
            cond_dim -= BUDGET_FEATURES  # the MLP, the linear path and the shift read the class set only
            self.nested = NestedBudgetShift(sum(s.kind == "utility" for s in self.sites), cond_dim)
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
        shift = None
        if self.nested is not None:
            t = condition[:, -BUDGET_FEATURES]  # budget_features' first entry
            condition = condition[:, :-BUDGET_FEATURES]
            shift = self.nested(condition, t).exp()  # (B, utility sites)
        h = self.trunk(condition)  # (B, hidden)
        out = {}
        u = 0
        for i, (s, head) in enumerate(zip(self.sites, self.heads)):
            v = head(h)  # (B, C)
            if self.skips is not None:
                v = v + self.skips[i](condition)
            if s.kind == "utility":
                v = v.abs()
                if shift is not None:
                    v = v * shift[:, u:u + 1]
                u += 1
            out[s.name] = v
        return out
