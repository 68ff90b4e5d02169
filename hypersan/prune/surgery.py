"""Surgery: one subtask's masks -> a physically smaller plain network, for every kind of backbone.

Pure functions of a backbone and one subtask's masks, with one entry point (`prune_backbone`) and one set of
rules for both kinds of backbone: the kept channels of every utility site (`kept_channels`: binary masks, at
least one channel per site), the subtask's BN statistics in place of the backbone's (checked against its BN
buffers), the head cut to the subtask's classes in ascending class-index order, `physical=False` for the masked
form at the dense widths, and `fold_bn`.

- Built-in backbones (ResNet, VGG): convs, BNs and the head are sliced to the kept channels; scaling masks are
  folded into the weight columns of the convs that consume them. Which site touches which conv is read from the
  backbone's own structure (`layer_plan`), so no layer list is written down twice.
- Custom backbones (`nn.custom.CustomBackbone`): each channel group's masked channels are removed by
  Torch-Pruning's group pruning (`nn.graph.prune_groups`), or zeroed at their producers for the masked form
  (`nn.graph.zero_groups`); the artifact records the kept channels, from which `nn.custom.rebuild_subnet`
  rebuilds the modules.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn.backbones import ResNet, VGG
from ..nn.custom import CustomBackbone, CustomSubnet, mask_of
from ..nn.graph import cut_head, fold_pairs, fold_scales, prune_groups, zero_groups
from ..io import load_checked
from .stats import BNStats
from ..nn.subnet import build_plain, fold_bn as fold_bn_into_convs


class Layer(NamedTuple):
    """One conv of a backbone and the sites around it."""

    prefix: str  # state-dict prefix of the ConvBN ("<prefix>.0.weight" is the conv, "<prefix>.1.*" the BN)
    in_site: Optional[str]  # utility site whose kept channels are this conv's inputs (None: the image)
    out_site: str  # utility site whose kept channels are this conv's outputs
    scale_site: Optional[str]  # scaling site on this conv's input


def layer_plan(backbone: nn.Module) -> tuple[list[Layer], str]:
    """Every conv of a backbone with its sites, and the utility site feeding the head."""
    if isinstance(backbone, ResNet):
        layers = [Layer("stem", None, backbone.stem_site, None)]
        prev = backbone.stem_site
        for m, blk in enumerate(backbone.blocks):
            p = f"blocks.{m}"
            layers.append(Layer(f"{p}.conv1", prev, blk.site_mid, blk.site_conv1_in))
            layers.append(Layer(f"{p}.conv2", blk.site_mid, blk.stream, blk.site_conv2_in))
            if blk.has_proj:
                layers.append(Layer(f"{p}.shortcut", prev, blk.stream, blk.site_short_in))
            elif prev != blk.stream:  # an identity shortcut must add tensors of one tied site
                raise ValueError(f"block {blk.prefix}: identity shortcut from site {prev} into site {blk.stream}")
            prev = blk.stream
        return layers, prev
    if isinstance(backbone, VGG):
        n = backbone.names
        layers = [Layer(f"convs.{k}", n[k - 1] if k else None, n[k], n[k] + ".in" if k else None)
                  for k in range(len(n))]
        return layers, n[-1]
    raise TypeError(f"surgery knows ResNet and VGG backbones, not {type(backbone).__name__}")


def _row(m: Tensor, name: str) -> Tensor:
    m = m.detach()
    if m.dim() == 2 and m.shape[0] == 1:
        m = m[0]
    if m.dim() != 1:
        raise ValueError(f"mask of site {name} has shape {tuple(m.shape)}; surgery needs one subtask's mask, "
                         "shape (1, C) or (C,)")
    return m.float().cpu()


def kept_channels(masks: Optional[Dict[str, Tensor]], sites) -> Dict[str, Tensor]:
    """Indices (ascending) of the kept channels of every utility site; a site without a mask keeps all."""
    out = {}
    for s in sites:
        if s.kind != "utility":
            continue
        if masks is None or s.name not in masks:
            out[s.name] = torch.arange(s.size)
            continue
        m = _row(masks[s.name], s.name)
        if m.numel() != s.size:
            raise ValueError(f"mask of site {s.name} has {m.numel()} channels, the site has {s.size}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"utility mask of site {s.name} is not binary 0/1; surgery needs hard utilities "
                             "(use model.subtask_masks, which binarizes them)")
        idx = m.nonzero().flatten()
        if idx.numel() == 0:
            raise ValueError(f"site {s.name} would keep 0 of {s.size} channels; every layer must keep at least "
                             "one (the keep rule, generator.min_keep >= 1, guarantees it for generated masks)")
        out[s.name] = idx
    return out


@torch.no_grad()
def prune_backbone(backbone: nn.Module, masks: Optional[Dict[str, Tensor]], classes: Sequence[int],
                   class_names: Optional[List[str]] = None, bn_stats: Optional[BNStats] = None,
                   fold_bn: bool = False, input_shape: Optional[Sequence[int]] = None,
                   physical: bool = True) -> nn.Module:
    """A plain net computing the masked backbone's logits of `classes` (sorted ascending), in eval mode.

    `masks` are one subtask's masks {site: (1, C)} (None: dense); `bn_stats` (from recalibration)
    replace the backbone's BN running statistics; the backbone itself is not modified.
    With `physical=False` nothing is sliced away: the net keeps the dense widths and its pruned channels
    are zeroed (BN scale and shift set to 0), the way weight-masking pruning tools leave a model. It
    computes the same logits as the physical net at the dense net's cost.
    """
    cls = sorted(set(int(c) for c in classes))
    num_all = backbone.arch["num_classes"]
    if not cls or cls[0] < 0 or cls[-1] >= num_all:
        raise ValueError(f"classes {list(classes)} must be a non-empty set of indices in 0..{num_all - 1}")
    names = list(class_names) if class_names is not None else [str(c) for c in cls]
    if len(names) != len(cls):
        raise ValueError(f"{len(names)} class names for {len(cls)} classes")
    sites = backbone.sites()
    keep = kept_channels(masks, sites)
    sd = _with_stats(backbone, bn_stats)
    scales = {s.name: _row(masks[s.name], s.name) for s in sites
              if s.kind == "scaling" and masks is not None and s.name in masks}
    if isinstance(backbone, CustomBackbone):
        return _prune_graph(backbone, keep, scales, cls, names, sd, fold_bn, physical)

    layers, head_in = layer_plan(backbone)
    # the channels each site keeps in the new net: the kept ones, or all of them (masked form)
    index = keep if physical else {s.name: torch.arange(s.size) for s in sites if s.kind == "utility"}
    new: Dict[str, Tensor] = {"norm.mean": sd["norm.mean"], "norm.std": sd["norm.std"]}
    for layer in layers:
        out_idx = index[layer.out_site].to(sd[f"{layer.prefix}.0.weight"].device)
        w = sd[f"{layer.prefix}.0.weight"]  # (Cout, Cin, k, k)
        if layer.in_site is not None:
            in_idx = index[layer.in_site].to(w.device)
            w = w[:, in_idx]
            if layer.scale_site in scales:
                # the scaling multiplies the conv's input channels: fold it into the weight columns
                s = scales[layer.scale_site].to(w.device, w.dtype)[in_idx]
                w = w * s[None, :, None, None]
        new[f"{layer.prefix}.0.weight"] = w[out_idx].clone()
        for k in ("weight", "bias", "running_mean", "running_var"):
            new[f"{layer.prefix}.1.{k}"] = sd[f"{layer.prefix}.1.{k}"][out_idx].clone()
        if not physical:  # a zero BN scale and shift make a pruned channel's output exactly 0
            off = torch.ones(out_idx.numel(), dtype=torch.bool, device=out_idx.device)
            off[keep[layer.out_site].to(out_idx.device)] = False
            for k in ("weight", "bias"):
                new[f"{layer.prefix}.1.{k}"][off] = 0.0
        new[f"{layer.prefix}.1.num_batches_tracked"] = sd[f"{layer.prefix}.1.num_batches_tracked"].clone()
    head_idx = index[head_in].to(sd["head.weight"].device)
    cls_idx = torch.tensor(cls, device=sd["head.weight"].device)
    new["head.weight"] = sd["head.weight"][cls_idx][:, head_idx].clone()
    new["head.bias"] = sd["head.bias"][cls_idx].clone()

    widths = {name: int(idx.numel()) for name, idx in index.items()}
    arch = dict(backbone.arch, site_widths=widths, num_classes=len(cls))
    net = build_plain(arch, names).to(sd["head.weight"].device)
    load_checked(net, new, "surgery")
    net.input_shape = [int(d) for d in input_shape] if input_shape is not None else []
    if fold_bn:
        net = fold_bn_into_convs(net)
    return net.eval()


def _with_stats(backbone: nn.Module, bn_stats: Optional[BNStats]) -> Dict[str, Tensor]:
    """The backbone's state dict (detached), with `bn_stats` (keyed as its own BN buffers) in place of its running
    statistics; a ValueError when they lack any."""
    sd = {k: v.detach() for k, v in backbone.state_dict().items()}
    if bn_stats is not None:
        missing = [k for k in sd if k.endswith((".running_mean", ".running_var")) and k not in bn_stats]
        if missing:
            raise ValueError(f"bn_stats lack {', '.join(missing[:4])}; they must come from the same backbone")
        sd.update({k: v.to(sd[k].device, sd[k].dtype) for k, v in bn_stats.items() if k in sd})
    return sd


def _prune_graph(backbone: CustomBackbone, keep: Dict[str, Tensor], scales: Dict[str, Tensor], cls: List[int],
                 names: List[str], sd: Dict[str, Tensor], fold_bn: bool, physical: bool) -> CustomSubnet:
    """A custom backbone's subnet: a copy of the user's network with the state `sd`, the scaling masks folded into
    the layers that read each group, every group's masked channels removed (or zeroed at their producers,
    physical=False), the head cut to `cls`; with fold_bn, every BN that directly follows a conv (and only it)
    folded into that conv (`arch["folded"]` names the pairs)."""
    net = copy.deepcopy(backbone.net).eval()
    load_checked(net, {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")}, "surgery")
    fold_scales(net, backbone.groups, scales)
    full = {g.name: mask_of(keep[g.name].tolist(), g.size) for g in backbone.groups}
    if physical:
        net = prune_groups(net, backbone.groups, full, backbone.example().to(next(net.parameters()).device),
                           backbone.head_name, cls)
        kept = {g: k.tolist() for g, k in keep.items()}
    else:  # the dense widths, every masked channel zeroed where it is produced
        cut_head(zero_groups(net, backbone.groups, full), backbone.head_name, cls)
        kept = {g.name: list(range(g.size)) for g in backbone.groups}
    pairs = backbone.bn_pairs() if fold_bn else []
    fold_pairs(net, pairs)
    arch = dict(backbone.arch, num_classes=len(cls), dense_num_classes=backbone.arch["num_classes"], kept=kept,
                classes_kept=list(cls), site_widths={g: len(k) for g, k in kept.items()}, folded=pairs)
    out = CustomSubnet(copy.deepcopy(backbone.norm), net, names, arch)
    out.bn_folded = fold_bn
    out.channels_last = backbone.channels_last_ok(out)
    return out.eval()


SUBNET_ATTRS = ("request", "grounding", "conditioned_on", "rounding", "budget", "guard", "finetuned")


def fold_subnet_bn(net: nn.Module, backbone: nn.Module) -> nn.Module:
    """A plain subnet built with BN kept (prune_backbone(..., fold_bn=False)), with its BN folded into the convs
    as prune_backbone(..., fold_bn=True) folds it: for a net whose weights changed after the build (fine-tuned,
    BN recalibrated). A copy; the engine's attributes of the subnet (its request, budget, ...) carry over. A net
    already folded comes back as a copy."""
    if net.bn_folded:
        out = copy.deepcopy(net)
    elif isinstance(net, CustomSubnet):
        out = copy.deepcopy(net)
        pairs = backbone.bn_pairs()
        fold_pairs(out.net, pairs)
        out.arch = dict(out.arch, folded=pairs)
        out.bn_folded = True
    else:
        out = fold_bn_into_convs(net)
    for attr in SUBNET_ATTRS:
        if hasattr(net, attr):
            setattr(out, attr, getattr(net, attr))
    return out.eval()


ROUND_MODES = ("up", "nearest")


def _check_round_mode(mode: str) -> None:
    if mode not in ROUND_MODES:
        raise ValueError(f"round mode must be one of {', '.join(ROUND_MODES)}, got {mode!r}")


def round_widths(masks: Dict[str, Tensor], raw: Dict[str, Tensor], sites, multiple: int,
                 mode: str = "up") -> Dict[str, Tensor]:
    """Masks whose kept width at every utility site is a multiple of `multiple` (or the site size).

    mode "up" rounds up, adding back the pruned channels of highest utility. Mode "nearest" rounds to the
    nearest multiple (halves up, never below one multiple), and when that is below the kept width it drops
    the kept channels of lowest utility: the net then differs from the subtask's masked net, and is
    exactly the masked net of the rounded masks.
    """
    if multiple < 1:
        raise ValueError(f"round_to must be a positive integer, got {multiple}")
    _check_round_mode(mode)
    out = dict(masks)
    for s in sites:
        if s.kind != "utility":
            continue
        m = _row(masks[s.name], s.name).clone()
        n = int((m != 0).sum())
        steps = math.ceil(n / multiple) if mode == "up" else max(1, math.floor(n / multiple + 0.5))
        target = min(steps * multiple, s.size)
        u = _row(raw[s.name], s.name).clone()
        if target > n:
            u[m != 0] = -math.inf  # only pruned channels compete
            m[u.topk(target - n).indices] = 1.0
        elif target < n:
            u[m == 0] = math.inf  # only kept channels compete
            m[(-u).topk(n - target).indices] = 0.0
        out[s.name] = m[None].to(masks[s.name].device, masks[s.name].dtype)
    return out


def expand_bn_stats(backbone: nn.Module, masks: Optional[Dict[str, Tensor]], pruned: BNStats) -> BNStats:
    """Full-width BN statistics of a backbone from those of its physically pruned net.

    The kept channels take the pruned net's values. A pruned channel's statistics never reach the output (its
    utility mask zeroes it after BN and ReLU), so it gets mean 0 and variance 1.
    """
    keep = kept_channels(masks, backbone.sites())
    layers, _ = layer_plan(backbone)
    ref = {k: v for k, v in backbone.state_dict().items() if k.endswith((".running_mean", ".running_var"))}
    out: BNStats = {}
    for layer in layers:
        idx = keep[layer.out_site]
        for stat, fill in (("running_mean", 0.0), ("running_var", 1.0)):
            name = f"{layer.prefix}.1.{stat}"
            full = torch.full_like(ref[name], fill, device="cpu")
            full[idx] = pruned[name].detach().to("cpu", full.dtype)
            out[name] = full
    if set(out) != set(ref):
        raise ValueError(f"the layer plan misses BN layers: {', '.join(sorted(set(ref) - set(out))[:4])}")
    return out
