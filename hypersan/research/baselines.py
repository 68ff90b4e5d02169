"""Per-subset structured-pruning baselines: Torch-Pruning of a plain dense net to a MAC budget, BN recalibration,
and fine-tuning with the hypernetwork's objective.

- `subset_prune`: Torch-Pruning at full strength, per subset: Taylor importance on the subset's loss, global
  allocation across layers with a per-layer floor, iterative pruning with fine-tuning between the stages
  (its `MetaPruner`);
- `magnitude_prune` / `random_prune` (`prune_to`): one-shot, uniform widths, L1 magnitude or random choice of
  channels (the same channels for every subset: class-agnostic);
- `finetune`: SGD on the subset's BCE with every other class's images as negatives (`subset_loss`).

These are what class-subset pruning looks like without a hypernetwork: prune the dense net for each subset with
the structured-pruning library users reach for, then recalibrate or fine-tune. Torch-Pruning's dependency graph
ties the channels that must go together (every tensor summed into a residual stream), as hypersan's sites do.
Needs the `baselines` extra: `pip install 'hypersan[baselines]'`.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import time
from typing import Sequence

import torch
from torch import Tensor, nn

from ..training.finetune import finetune, recalibrate_bn, subset_loss, subset_targets  # noqa: F401
from ..data.datasets import Augmentation
from ..training.optim import sgd_steps
from ..prune.metrics import MacCounter, count_macs, output_pixels
from ..prune.surgery import layer_plan

MAC_TOLERANCE = 0.02  # a baseline's MACs lie within 2% of its target, counted on the pruned net


def _tp():
    try:
        import torch_pruning
    except ImportError:
        raise ImportError("the pruning baselines need Torch-Pruning: pip install 'hypersan[baselines]' "
                          "(torch-pruning==1.6.1)") from None
    return torch_pruning


def _site_of_conv(net: nn.Module) -> dict[str, str]:
    """Module name of every conv of a plain net -> the utility site its output channels belong to."""
    from ..nn.backbones import build_backbone

    with torch.device("meta"):  # the structure alone: no weights allocated or initialized
        layers, _ = layer_plan(build_backbone(net.arch))
    return {f"{layer.prefix}.0": layer.out_site for layer in layers}


def prune_to(net: nn.Module, mac_ratio: float, dense_macs: int, importance: str = "l1", seed: int = 0,
             tolerance: float = MAC_TOLERANCE) -> nn.Module:
    """A copy of a plain net (BN kept) pruned with Torch-Pruning to `mac_ratio * dense_macs` MACs (within
    `tolerance`, counted on the pruned net). The head's outputs (the classes) and the image's channels are never
    pruned, and no channel group loses all its channels.

    Widths: every group keeps the same share of its channels, the largest share under the budget, then single
    channels are taken from the groups with the largest kept share until the budget is met (widths are searched
    on shapes alone). Which channels go: the lowest L1 magnitude of the whole coupled group (`importance="l1"`),
    or a seeded random choice ("random"). The result carries `kept_channels` {site: ascending original
    indices}, `site_widths_kept` and `macs`."""
    if importance not in ("l1", "random"):
        raise ValueError(f"importance must be 'l1' or 'random', got {importance!r}")
    if not 0 < mac_ratio <= 1:
        raise ValueError(f"mac_ratio must lie in (0, 1], got {mac_ratio}")
    shape = tuple(net.input_shape)
    full = dict(net.arch["site_widths"])
    widths = _search_widths(net.arch, full, mac_ratio * dense_macs, shape, tolerance)
    pruned, kept = _prune_widths(net, widths, importance, seed, shape)
    macs = count_macs(pruned, shape)
    if abs(macs / (mac_ratio * dense_macs) - 1) > tolerance:
        raise ValueError(f"could not prune to {mac_ratio:.4f} of the dense MACs within {tolerance:.0%} (got "
                         f"{macs / dense_macs:.4f}); the widths are too coarse for this budget")
    pruned.kept_channels = kept
    pruned.site_widths_kept = {s: len(v) for s, v in kept.items()}
    pruned.macs = macs
    return pruned.eval()


def _macs_of(arch: dict, widths: dict[str, int], shape) -> int:
    """MACs of the backbone at these site widths (what metrics.subnet_cost counts), from a per-architecture
    table of every conv's output size and kernel, built once: the width searches ask thousands of times."""
    table, head_site = _cost_table(json.dumps(arch, sort_keys=True), tuple(shape))
    img = arch.get("in_channels", shape[0])
    macs = sum(n * (img if i is None else widths[i]) // g * widths[o] for n, i, o, g in table)
    return macs + widths[head_site] * arch["num_classes"]


@functools.lru_cache(maxsize=32)
def _cost_table(arch_json: str, shape: tuple) -> tuple[list[tuple], str]:
    """[(output pixels x kernel area, in site (None: the image), out site, groups)] of every conv, and the site
    feeding the head."""
    from ..nn.backbones import build_backbone

    with torch.device("meta"):
        net = build_backbone(json.loads(arch_json))
    layers, head_site = layer_plan(net)
    convs = {layer.prefix: net.get_submodule(f"{layer.prefix}.0") for layer in layers}
    pixels = output_pixels(net, shape)
    sizes = {p: pixels[f"{p}.0"] for p in convs}
    table = [(sizes[layer.prefix] * convs[layer.prefix].kernel_size[0] * convs[layer.prefix].kernel_size[1],
              layer.in_site, layer.out_site, convs[layer.prefix].groups) for layer in layers]
    return table, head_site


def _search_widths(arch: dict, full: dict[str, int], target: float, shape, tolerance: float) -> dict[str, int]:
    """Site widths whose net has MACs within tolerance of target: a uniform share, then single channels."""
    def uniform(f):
        return {k: max(1, math.floor(n * f)) for k, n in full.items()}

    lo, hi = 0.0, 1.0
    for _ in range(30):  # the largest uniform share at or above the budget
        mid = (lo + hi) / 2
        if _macs_of(arch, uniform(mid), shape) >= target:
            hi = mid
        else:
            lo = mid
    widths = uniform(hi)
    macs = _macs_of(arch, widths, shape)
    while macs > target * (1 + tolerance):
        options = []
        for k in widths:
            if widths[k] > 1:
                w = dict(widths, **{k: widths[k] - 1})
                m = _macs_of(arch, w, shape)
                options.append((m < target * (1 - tolerance), -widths[k] / full[k], abs(m - target), k, w, m))
        if not options:
            break
        # prefer a step that stays within tolerance, then the group with the largest kept share
        _, _, _, _, widths, macs = min(options)
    return widths


def _prune_widths(net: nn.Module, widths: dict[str, int], importance: str, seed: int, shape
                  ) -> tuple[nn.Module, dict[str, list[int]]]:
    """A copy of net with every site cut to its width by Torch-Pruning, the least important channels first."""
    tp = _tp()
    cand = copy.deepcopy(net).eval()
    layout = cand.channels_last
    cand.channels_last = False  # trace in the default layout
    site_of = _site_of_conv(net)
    names = {m: n for n, m in cand.named_modules()}
    dg = tp.DependencyGraph().build_dependency(cand, example_inputs=torch.zeros(1, *shape))
    imp = tp.importance.MagnitudeImportance(p=1)
    gen = torch.Generator().manual_seed(seed)
    plan = []
    for group in dg.get_all_groups(ignored_layers=[cand.head], root_module_types=[nn.Conv2d]):
        root = group[0].dep.target.module
        site = site_of.get(names.get(root, ""))
        if site is None:
            continue
        n = root.out_channels
        scores = imp(group) if importance == "l1" else torch.rand(n, generator=gen)
        order = torch.argsort(scores, stable=True).tolist()  # least important first
        gone = sorted(order[:n - widths[site]])
        plan.append((root, group[0].dep.handler, site, n, gone))
    kept = {}
    for root, handler, site, n, gone in plan:
        if gone:
            dg.get_pruning_group(root, handler, gone).prune()
        kept[site] = [i for i in range(n) if i not in set(gone)]
    cand.channels_last = layout
    return cand, kept


def magnitude_prune(net: nn.Module, mac_ratio: float, dense_macs: int) -> nn.Module:
    """Torch-Pruning with L1 magnitude importance to a MAC budget (see prune_to)."""
    return prune_to(net, mac_ratio, dense_macs, "l1")


def random_prune(net: nn.Module, mac_ratio: float, dense_macs: int, seed: int = 0) -> nn.Module:
    """Random structured pruning (seeded) to a MAC budget (see prune_to)."""
    return prune_to(net, mac_ratio, dense_macs, "random", seed)


class _TieBroken:
    """A Torch-Pruning importance with its ties broken by L1 magnitude, scaled far below the importance's own
    resolution. Taylor scores are exactly 0 for every channel that is dead on the batch, and global pruning
    removes all channels at or below its threshold: without a tie-break, one step could take every dead
    channel at once and land far below the MAC budget."""

    def __init__(self, importance, tie_break):
        self.importance, self.tie_break = importance, tie_break

    def __call__(self, group):
        imp = self.importance(group)
        if imp is None:
            return imp
        mag = self.tie_break(group)
        if mag is None or mag.shape != imp.shape:
            return imp
        scale = imp.abs().max().clamp_min(1e-12) * 1e-6
        return imp + scale * mag / mag.abs().max().clamp_min(1e-12)


class _RatioSchedule:
    """An iterative_pruning_ratio_scheduler for MetaPruner whose next channel pruning ratio is set just before
    each step (`push`): the pruning steps follow the measured MACs instead of a fixed list of ratios."""

    def __init__(self):
        self.ratios = [0.0]

    def __call__(self, ratio: float, steps: int):
        return self if ratio > 0 else [0.0] * (steps + 1)  # MetaPruner asks a second time for attention heads

    def __getitem__(self, step: int) -> float:
        return self.ratios[min(step, len(self.ratios) - 1)]

    def push(self, ratio: float) -> None:
        self.ratios.append(ratio)


def next_ratio(p: float, macs: float, slope: float, goal: float, coarse: float = 0.15) -> float:
    """The channel pruning ratio of the next step: towards `goal` MACs, by at most a `coarse` share of the MACs
    per step, and 40% of the way when within 30% of it (the local slope d MACs / d ratio is an estimate), so the
    goal is approached from above in a few steps."""
    want = max(goal, macs * (1 - coarse))
    near = macs < 1.3 * goal
    if near:
        want = goal + 0.6 * (macs - goal)
    # a step that removed almost nothing (channels at their floor) measures a slope near 0: cap the next step, or
    # it would jump to the floor of every layer at once
    return p + min(max(1e-3, (macs - want) / max(slope, 1e-9)), 0.005 if near else 0.03)


def subset_prune(net: nn.Module, classes: Sequence[int], images: Tensor, labels: Tensor, mac_ratio: float,
                 dense_macs: int, stages: int = 5, stage_steps: int = 50, lr: float = 0.01, importance: str = "taylor",
                 max_pruning_ratio: float = 0.95, max_steps: int = 400, grad_batches: int = 4,
                 batch_size: int = 128, beta: float = 1.0, seed: int = 0, augmentation: Augmentation = Augmentation(),
                 tolerance: float = MAC_TOLERANCE) -> nn.Module:
    """Torch-Pruning as its own benchmarks use it, on the subset: a copy of a plain net of `classes` (BN kept)
    pruned with `MetaPruner` to at most `mac_ratio * dense_macs` MACs (+ `tolerance`), counted on the pruned net.
    A single step can remove a costly channel and land a few percent below the budget; `macs` says where.

    - Importance: data-driven on the subset's loss (subset_loss: the BCE the hypernetwork trains with):
      "taylor" (first-order Taylor, GroupTaylorImportance; the gradients of `grad_batches` fresh batches at the
      start of every stage, pruned along with the weights) or "l1" (GroupMagnitudeImportance, for comparison).
    - Allocation: global across layers (`global_pruning=True`), every layer keeping at least
      1 - `max_pruning_ratio` of its channels (and at least one).
    - Schedule: iterative, `stages` stages whose MAC targets fall geometrically to the budget, each followed by
      `stage_steps` fine-tuning steps (the last one is not: that is the separate fine-tune's job). Within a stage
      the pruner steps until the stage's target is met: each step's global channel ratio is set from the MACs
      measured after the last one (`next_ratio`), coarse far from the target and fine near it.

    The head's outputs (the classes) and the image's channels are never pruned. The result carries
    `kept_channels` {site: ascending original indices}, `site_widths_kept`, `macs` and `prune_log`
    (steps, images seen in fine-tuning, wall time)."""
    tp = _tp()
    if importance not in ("taylor", "l1"):
        raise ValueError(f"importance must be 'taylor' or 'l1', got {importance!r}")
    if not 0 < mac_ratio <= 1:
        raise ValueError(f"mac_ratio must lie in (0, 1], got {mac_ratio}")
    if stages < 1:
        raise ValueError(f"need stages >= 1, got {stages}")
    t0 = time.perf_counter()
    shape = tuple(net.input_shape)
    cand = copy.deepcopy(net)
    layout = getattr(cand, "channels_last", False)
    cand.channels_last = False  # trace in the default layout
    site_of = _site_of_conv(net)
    names = {m: n for n, m in cand.named_modules()}
    kept = {site_of[n]: list(range(m.out_channels)) for n, m in cand.named_modules() if n in site_of}
    imp = _TieBroken(tp.importance.TaylorImportance() if importance == "taylor"
                     else tp.importance.MagnitudeImportance(p=1), tp.importance.MagnitudeImportance(p=1))
    schedule = _RatioSchedule()
    pruner = tp.pruner.MetaPruner(cand, torch.zeros(1, *shape), importance=imp, global_pruning=True,
                                  pruning_ratio=max_pruning_ratio, max_pruning_ratio=max_pruning_ratio,
                                  iterative_steps=max_steps, iterative_pruning_ratio_scheduler=schedule,
                                  ignored_layers=[cand.head])
    loss_fn = subset_loss(cand, images, labels, classes, beta, augmentation)
    gen = torch.Generator().manual_seed(seed)
    target = mac_ratio * dense_macs
    counter = MacCounter(cand, shape)
    macs = counter(cand)
    p, slope = 0.0, 2.0 * macs  # a conv's MACs ~ (1 - p)^2: the slope at p = 0 until one is measured
    seen = 0
    for stage in range(1, stages + 1):
        goal = target * (1 + tolerance) if stage == stages else dense_macs * mac_ratio ** (stage / stages)
        if importance == "taylor" and macs > goal:  # the stage's importance: gradients of the subset's loss
            cand.train()
            cand.zero_grad(set_to_none=True)
            for _ in range(grad_batches):
                idx = torch.randint(0, len(images), (batch_size,), generator=gen)
                (loss_fn(idx, gen) / grad_batches).backward()
            seen += grad_batches * batch_size
            cand.eval()
        while macs > goal:
            nxt = min(next_ratio(p, macs, slope, goal), max_pruning_ratio)
            if pruner.current_step >= pruner.iterative_steps or nxt <= p:
                raise ValueError(f"could not prune to {mac_ratio:.4f} of the dense MACs: every layer is at its floor "
                                 f"(max_pruning_ratio = {max_pruning_ratio}) at {macs / dense_macs:.4f}")
            schedule.push(nxt)
            for group in pruner.step(interactive=True):  # Torch-Pruning's groups; the kept indices recorded
                root = group[0].dep.target.module
                site = site_of.get(names.get(root, ""))
                if site is not None and pruner.DG.is_out_channel_pruning_fn(group[0].dep.handler):
                    gone = set(int(i) for i in group[0].idxs)
                    kept[site] = [c for i, c in enumerate(kept[site]) if i not in gone]
                group.prune()  # weights and their gradients
            before, macs = macs, counter(cand)
            if before > macs:
                slope = (before - macs) / (nxt - p)
            p = nxt
        cand.zero_grad(set_to_none=True)
        if stage < stages and stage_steps:
            seen += sgd_steps(cand, loss_fn, len(images), stage_steps, lr, batch_size, seed + stage,
                              schedule="constant")["images_seen"]
    # never over budget; one pruning step may remove a costly channel (an early stage's) and land below it
    cand.channels_last = layout
    cand.kept_channels = kept
    cand.site_widths_kept = {s: len(v) for s, v in kept.items()}
    cand.macs = count_macs(cand, shape)
    cand.prune_log = {"pruning_steps": pruner.current_step, "images_seen": seen,
                      "wall_s": time.perf_counter() - t0}
    return cand.eval()
