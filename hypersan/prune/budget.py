"""Compute budgets: a differentiable MAC count from kept widths, and a budget met exactly at inference (the
generator's budget input is `nn.generators.budget_features`, the training term `nn.losses.budget_loss`).

A budget b is the largest MAC ratio a subnet may have to the dense net (b = 1: no limit). A subnet's MACs are a
polynomial of its kept widths: every conv costs (output pixels x kernel area) x input width x output width, the
head input width x classes (what `metrics.count_macs` counts). `MacModel` holds those coefficients, read once from
the backbone's structure (`surgery.layer_plan`), and evaluates the polynomial on integer widths (exactly) or on
per-sample kept counts (B,), which, summed from straight-through masks, are exact in the forward pass and carry
the surrogate gradient in the backward pass.
"""
from __future__ import annotations

import heapq
from typing import Mapping, Sequence

from torch import Tensor, nn

from ..nn.generators import BudgetError
from .metrics import output_pixels
from .surgery import layer_plan


class MacModel:
    """MACs of a backbone's subnet from its kept widths per utility site and its number of classes."""

    def __init__(self, backbone: nn.Module, input_shape: Sequence[int]):
        layers, head_site = layer_plan(backbone)
        pixels = output_pixels(backbone, tuple(input_shape))
        self.terms: list[tuple[int, object, str]] = []  # (pixels x kernel area, input site or channels, output site)
        for layer in layers:
            conv = backbone.get_submodule(f"{layer.prefix}.0")
            if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
                raise TypeError(f"{layer.prefix}: MacModel counts plain convolutions, not {conv}")
            coef = pixels[f"{layer.prefix}.0"] * conv.kernel_size[0] * conv.kernel_size[1]
            self.terms.append((coef, layer.in_site if layer.in_site is not None else conv.in_channels,
                               layer.out_site))
        self.head_site = head_site
        self.sizes = {s.name: s.size for s in backbone.sites() if s.kind == "utility"}
        self.num_classes = backbone.head.out_features
        self.dense = int(self(self.sizes, self.num_classes))

    def __call__(self, widths: Mapping[str, int | Tensor], classes: int | Tensor):
        """MACs of the subnet with these kept widths (ints, or tensors (B,)) and this many classes."""
        def w(site):
            return site if isinstance(site, int) else widths[site]

        total = sum(coef * w(a) * w(b) for coef, a, b in self.terms)
        return total + w(self.head_site) * classes

    def prices(self) -> dict[str, float]:
        """What one channel of each utility site costs: the MACs the dense net loses when that site loses one
        channel (the polynomial's derivative at the dense widths), divided by the mean over every channel, so a
        sparsity weight keeps its meaning across backbones (a mean price of 1 per channel)."""
        cost = {name: 0.0 for name in self.sizes}
        for coef, a, b in self.terms:
            wa = a if isinstance(a, int) else self.sizes[a]
            if not isinstance(a, int):
                cost[a] += coef * self.sizes[b]
            cost[b] += coef * wa
        cost[self.head_site] += self.num_classes
        mean = sum(cost[n] * self.sizes[n] for n in self.sizes) / sum(self.sizes.values())
        return {n: c / mean for n, c in cost.items()}

    def ratio(self, masks: Mapping[str, Tensor], classes: Tensor) -> Tensor:
        """MAC ratio to the dense net per sample (B,) of masks {site: (B, C)}: differentiable through the masks."""
        kept = {name: masks[name].sum(dim=1) for name in self.sizes}
        return self(kept, classes.to(next(iter(kept.values())).dtype)) / self.dense


def enforce_budget(masks: dict[str, Tensor], raw: dict[str, Tensor], mac: MacModel, budget: float, classes: int,
                   min_keep: int = 1, multiple: int = 1) -> tuple[dict[str, Tensor], int]:
    """Masks (1, C) of one subtask cut to meet `budget` exactly: while the subnet's MAC ratio exceeds it, the kept
    channel of lowest utility is dropped (among ties the higher index first, as the keep rule keeps lower indices),
    never below `min_keep` per site; with `multiple` > 1 a site drops `multiple` channels at a time, so widths stay
    multiples. Returns (masks, channels dropped); raises BudgetError when no subnet of these classes fits."""
    limit = budget * mac.dense
    widths = {name: int((masks[name][0] != 0).sum()) for name in mac.sizes}
    if mac(widths, classes) <= limit:
        return masks, 0
    step = max(1, multiple)
    floor = {name: min(size, -(-max(1, min_keep) // step) * step) for name, size in mac.sizes.items()}
    order = {}  # per site: kept channels, lowest utility first (ties: higher index first)
    for name in mac.sizes:
        kept = (masks[name][0] != 0).nonzero().flatten().tolist()
        u = raw[name][0].detach()
        order[name] = sorted(kept, key=lambda c: (float(u[c]), -c))
    heap = [(float(raw[n][0, order[n][0]]), n) for n in mac.sizes if widths[n] - step >= floor[n] and order[n]]
    heapq.heapify(heap)
    out = {k: v.clone() for k, v in masks.items()}
    dropped = 0
    while mac(widths, classes) > limit:
        if not heap:
            smallest = mac(floor, classes) / mac.dense
            raise BudgetError(f"a budget of {budget:g} of the dense net's MACs is below the smallest subnet of "
                              f"these classes ({smallest:.4f}); ask for a budget of at least {smallest:.4f}")
        _, name = heapq.heappop(heap)
        cut, order[name] = order[name][:step], order[name][step:]
        out[name][0, cut] = 0
        widths[name] -= len(cut)
        dropped += len(cut)
        if widths[name] - step >= floor[name] and order[name]:
            heapq.heappush(heap, (float(raw[name][0, order[name][0]]), name))
    return out, dropped


__all__ = ["MacModel", "BudgetError", "enforce_budget"]  # BudgetError: defined beside the budget features
