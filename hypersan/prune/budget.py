"""Compute budgets: a differentiable MAC count from kept widths, and a budget met exactly at inference (the
generator's budget input is `nn.generators.budget_features`, the training term `nn.losses.budget_loss`).

A budget b is the largest MAC ratio a subnet may have to the dense net (b = 1: no limit). A subnet's MACs are a
polynomial of its kept widths: every conv costs (output pixels x kernel area) x input width x output width (a
depthwise conv: its width alone), the head input width x classes (what `metrics.count_macs` counts). A layer's
input or output width is a sum of kept widths of sites plus a fixed count (the image's channels; a concatenation
of several groups). `MacModel` holds those coefficients, read once from the backbone's structure: the built-in
backbones' `surgery.layer_plan`, or a custom network's channel groups (the dependency graph's, checked against
the counted MACs of the dense net). It evaluates the polynomial on integer widths (exactly) or on per-sample
kept counts (B,), which, summed from straight-through masks, are exact in the forward pass and carry the
surrogate gradient in the backward pass.
"""
from __future__ import annotations

import heapq
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..nn.custom import CustomBackbone
from ..nn.generators import BudgetError
from ..nn.graph import GraphError
from .metrics import count_macs, output_pixels
from .surgery import layer_plan

Width = tuple[tuple[str, ...], int]  # a layer's input or output width: the kept widths of these sites + a count


class MacModel:
    """MACs of a backbone's subnet from its kept widths per utility site and its number of classes."""

    def __init__(self, backbone: nn.Module, input_shape: Sequence[int]):
        self.sizes = {s.name: s.size for s in backbone.sites() if s.kind == "utility"}
        # (pixels x kernel area, input width, output width) per conv or linear layer; the head's input width
        self.terms: list[tuple[int, Width, Width]] = []
        if isinstance(backbone, CustomBackbone):
            self.head_in, self.num_classes = _graph_terms(backbone, tuple(input_shape), self.terms)
        else:
            layers, head_site = layer_plan(backbone)
            pixels = output_pixels(backbone, tuple(input_shape))
            for layer in layers:
                conv = backbone.get_submodule(f"{layer.prefix}.0")
                if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
                    raise TypeError(f"{layer.prefix}: MacModel counts plain convolutions, not {conv}")
                coef = pixels[f"{layer.prefix}.0"] * conv.kernel_size[0] * conv.kernel_size[1]
                into = ((layer.in_site,), 0) if layer.in_site is not None else ((), conv.in_channels)
                self.terms.append((coef, into, ((layer.out_site,), 0)))
            self.head_in, self.num_classes = ((head_site,), 0), backbone.head.out_features
        self.dense = int(self(self.sizes, self.num_classes))
        if isinstance(backbone, CustomBackbone):  # the polynomial must count what count_macs counts
            counted = count_macs(backbone.net, tuple(input_shape))
            if counted != self.dense:
                raise GraphError(f"{backbone.arch['factory']}: its MACs ({counted:,}) are not a polynomial of its "
                                 f"channel groups' widths (which give {self.dense:,}): a layer other than conv and "
                                 "linear ones multiplies; budgets and MAC prices cannot be computed for it")

    def width(self, w: Width, widths: Mapping[str, int | Tensor]):
        sites, fixed = w
        return sum((widths[s] for s in sites), fixed)

    def __call__(self, widths: Mapping[str, int | Tensor], classes: int | Tensor):
        """MACs of the subnet with these kept widths (ints, or tensors (B,)) and this many classes."""
        total = sum(coef * self.width(a, widths) * self.width(b, widths) for coef, a, b in self.terms)
        return total + self.width(self.head_in, widths) * classes

    def prices(self) -> dict[str, float]:
        """What one channel of each utility site costs: the MACs the dense net loses when that site loses one
        channel (the polynomial's derivative at the dense widths), divided by the mean over every channel, so a
        sparsity weight keeps its meaning across backbones (a mean price of 1 per channel)."""
        cost = {name: 0.0 for name in self.sizes}
        for coef, a, b in self.terms:
            for s in a[0]:
                cost[s] += coef * self.width(b, self.sizes)
            for s in b[0]:
                cost[s] += coef * self.width(a, self.sizes)
        for s in self.head_in[0]:
            cost[s] += self.num_classes
        mean = sum(cost[n] * self.sizes[n] for n in self.sizes) / sum(self.sizes.values())
        return {n: c / mean for n, c in cost.items()}

    def ratio(self, masks: Mapping[str, Tensor], classes: Tensor) -> Tensor:
        """MAC ratio to the dense net per sample (B,) of masks {site: (B, C)}: differentiable through the masks."""
        kept = {name: masks[name].sum(dim=1) for name in self.sizes}
        return self(kept, classes.to(next(iter(kept.values())).dtype)) / self.dense


def _graph_terms(backbone: CustomBackbone, input_shape: tuple, terms: list) -> tuple[Width, int]:
    """Fill `terms` with a custom network's conv and linear layers; returns the head's input width and classes.
    A layer's width on either side is the groups whose channels it reads (writes), each all of them exactly once,
    plus the channels no group holds (the image's); a GraphError names a layer that reads part of a group."""
    net, head = backbone.net, backbone.head_name
    pixels = output_pixels(net, input_shape)

    def side(name: str, attr: str, total: int) -> Width:
        sites, covered = [], 0
        for g in backbone.groups:
            pairs = getattr(g, attr).get(name)
            if not pairs:
                continue
            if sorted(r for _, r in pairs) != list(range(g.size)):
                raise GraphError(f"{name}: it {'reads' if attr == 'inputs' else 'writes'} channels of group {g.name} "
                                 "other than each once (a flatten before a linear layer?); budgets and MAC prices "
                                 "need layers that see a group's channels as channels")
            sites.append(g.name)
            covered += g.size
        return tuple(sites), total - covered

    head_in: Width = ((), 0)
    classes = 0
    for name, m in net.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if name == head:
            head_in, classes = side(name, "inputs", m.in_features), m.out_features
            if pixels[name] != 1:
                raise GraphError(f"{name}: the head runs on {pixels[name]} positions; budgets need a head on pooled "
                                 "features")
            continue
        kernel = int(torch.tensor(m.kernel_size).prod()) if isinstance(m, nn.Conv2d) else 1
        width_in = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
        out = side(name, "outputs", m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        if isinstance(m, nn.Conv2d) and m.groups > 1:  # depthwise: one input channel per output channel
            terms.append((pixels[name] * kernel, ((), 1), out))
        else:
            terms.append((pixels[name] * kernel, side(name, "inputs", width_in), out))
    return head_in, classes


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
                              f"these classes ({smallest:.4f}); ask for a budget of at least {smallest:.4f}"
                              + (f" (widths in multiples of {step}; round_to=0 allows smaller nets)" if step > 1
                                 else ""))
        _, name = heapq.heappop(heap)
        cut, order[name] = order[name][:step], order[name][step:]
        out[name][0, cut] = 0
        widths[name] -= len(cut)
        dropped += len(cut)
        if widths[name] - step >= floor[name] and order[name]:
            heapq.heappush(heap, (float(raw[name][0, order[name][0]]), name))
    return out, dropped


__all__ = ["MacModel", "BudgetError", "enforce_budget"]  # BudgetError: defined beside the budget features
