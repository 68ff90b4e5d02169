"""Per-subset structured-pruning baselines: Torch-Pruning (L1 magnitude over coupled channel groups) and random
pruning of a plain dense net to a MAC budget, BN recalibration, and a short fine-tune.

These are what class-subset pruning looks like without a hypernetwork: prune the dense net for each subset with
the structured-pruning library users reach for, then recalibrate or fine-tune. Torch-Pruning's dependency graph
ties the channels that must go together (every tensor summed into a residual stream), as hypersan's sites do.
Needs the `baselines` extra: `pip install 'hypersan[baselines]'`.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from .data import augment, to_float
from .metrics import count_macs
from .stats import recalibrate
from .surgery import layer_plan

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
    from .backbones import build_backbone

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
    from .metrics import subnet_cost

    with torch.device("meta"):  # shapes only
        return subnet_cost(arch, widths, arch["num_classes"], shape)[0]


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


def recalibrate_bn(net: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Recompute a plain net's BN statistics exactly (momentum=None) on calibration batches, in place."""
    from .stats import set_bn_stats

    set_bn_stats(net, recalibrate(net, net, batches))  # recalibrate refuses a net without BN
    return net.eval()


def finetune(net: nn.Module, images: Tensor, labels: Tensor, classes: Sequence[int], steps: int, lr: float = 0.01,
             batch_size: int = 128, seed: int = 0, crop_padding: int = 2, hflip: bool = True,
             log: Optional[Callable[[str], None]] = None) -> dict:
    """Fine-tune a plain net of `classes` on those classes' training images for `steps` SGD steps (cross-entropy
    over its |T| logits, labels in ascending class order), in place; returns {"steps", "wall_s", "loss"}."""
    cls = torch.tensor(sorted(int(c) for c in classes))
    keep = torch.isin(labels, cls)
    if not bool(keep.any()):
        raise ValueError("no training image has a label in the subset")
    x, y = images[keep], torch.searchsorted(cls, labels[keep])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    t0 = time.perf_counter()
    net.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        xb = augment(to_float(x[idx]), crop_padding, hflip, gen)
        loss = nn.functional.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    return {"steps": steps, "wall_s": time.perf_counter() - t0, "loss": losses}
