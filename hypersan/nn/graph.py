"""Mask sites of any CNN, found by Torch-Pruning's dependency graph: masks applied by hooks, surgery by group pruning.

A user's network is traced once from an example input (`torch_pruning.DependencyGraph`). Every coupled channel
group (the channels that a residual add, a concatenation or a depthwise conv ties together) becomes one utility
site: one mask entry per channel of the group's root conv. The classifier's outputs are no group: the head is cut
to the subtask's classes by surgery.

- **Masks in training and evaluation** (`GraphMasks`): forward hooks multiply the outputs of every conv,
  normalization and linear layer of a group by the group's mask (scattered to where the group's channels sit in
  that layer: a concatenation shifts them). Masking every producer, a BN after its conv included, makes a masked
  channel exactly zero wherever it flows, as its removal would. A group's scaling mask (site `<group>.scale`)
  multiplies the group's channels where a conv or linear layer reads them (forward pre-hooks), as the built-in
  backbones scale a conv's inputs; surgery folds it into those layers' weight columns (`fold_scales`). The
  user's module is not rewritten.
- **Surgery** (`prune_groups`): a deep copy, each group's masked channels removed with Torch-Pruning's group
  pruning, and the head's rows cut to the subtask's classes. Pruned and masked nets agree (tested within 1e-4).

What Torch-Pruning cannot follow, this cannot either (docs/DESIGN.md, *Custom models*): a channel shuffle ties
channels across groups in a way its graph does not record; a custom autograd function is opaque to it; a frozen
BN (its statistics as buffers of another module type) is not pruned with its conv. Such layers are named in a
`GraphError` where they can be detected.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from .backbones import bn_scale_shift

_MASKED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)  # layers whose outputs carry a group's channels
# layers with tensors of their own that group pruning cuts consistently; any other layer holding parameters or
# buffers (a frozen BN written as a plain module, a learned per-channel scale) would keep its full width
_PRUNABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


class GraphError(ValueError):
    """A network that Torch-Pruning's dependency graph cannot turn into channel groups, with the layer and why."""


@dataclasses.dataclass
class ChannelGroup:
    """One coupled channel group: a utility site of `size` channels (those of its root conv)."""

    name: str  # the root module's name
    size: int
    outputs: Dict[str, List[tuple[int, int]]]  # module name -> (channel in that module, channel of the group)
    consumers: List[str]  # modules that read these channels as inputs (for the record)
    # conv and linear layers that read these channels: module name -> (input channel there, channel of the group)
    inputs: Dict[str, List[tuple[int, int]]] = dataclasses.field(default_factory=dict)


SCALE = ".scale"  # a group's scaling site is named "<group>.scale"


def _tp():
    try:
        import torch_pruning as tp
    except ImportError as e:  # pragma: no cover - the message is the point
        raise ImportError("custom models need Torch-Pruning's dependency graph: pip install 'hypersan[baselines]' "
                          f"(torch-pruning==1.6.1); {e}") from e
    return tp


def find_head(model: nn.Module, example_input: Tensor) -> str:
    """The classifier: the last nn.Linear (or 1x1 nn.Conv2d) whose outputs are the model's outputs, by name."""
    with torch.no_grad():
        out = model.eval()(example_input)
    if not isinstance(out, Tensor) or out.dim() != 2:
        raise GraphError(f"{type(model).__name__} returns {type(out).__name__}"
                         f"{'' if not isinstance(out, Tensor) else ' of shape ' + str(tuple(out.shape))}; a custom "
                         "model must map (B, C, H, W) images to (B, num_classes) logits")
    k = out.shape[1]
    heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == k]
    if not heads:
        raise GraphError(f"{type(model).__name__} has no nn.Linear with {k} outputs (its number of classes): the "
                         "head must be a linear layer, or name it with head=")
    return heads[-1]


def find_groups(model: nn.Module, example_input: Tensor, head: Optional[str] = None) -> tuple[list[ChannelGroup], str]:
    """(channel groups, head name) of a network, from one traced forward of `example_input`."""
    tp = _tp()
    head = head or find_head(model, example_input)
    try:
        head_module = model.get_submodule(head)
    except AttributeError:
        raise GraphError(f"head={head!r}: {type(model).__name__} has no such module") from None
    for name, m in model.named_modules():  # layers whose channels the graph would not keep consistent
        if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels:
            raise GraphError(f"{name}: a grouped convolution ({m.groups} groups of {m.in_channels // m.groups} "
                             "channels) ties channels within groups that the dependency graph does not track; "
                             "custom models may use plain or depthwise convolutions")
        if isinstance(m, (nn.GroupNorm, nn.ChannelShuffle)):
            raise GraphError(f"{name}: {type(m).__name__} mixes channels across groups; it cannot be pruned per "
                             "channel")
        own = [n for n, _ in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False))]
        if own and not isinstance(m, _PRUNABLE):
            raise GraphError(f"module {name!r} (a {type(m).__name__}) holds tensors of its own ({', '.join(own[:4])}) that "
                             "Torch-Pruning's group pruning does not cut with its channels (a frozen BN written as a "
                             "plain module is one); use nn.BatchNorm2d (frozen: eval mode, requires_grad False), or "
                             "a layer built from nn.Conv2d / nn.Linear / nn.BatchNorm2d")
    names = {m: n for n, m in model.named_modules()}
    was = model.training
    try:
        with torch.enable_grad():  # the graph is traced through autograd, even under a caller's no_grad
            dg = tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example_input, verbose=False)
        raw = list(dg.get_all_groups(ignored_layers=[head_module], root_module_types=(nn.Conv2d, nn.Linear)))
    except Exception as e:
        raise GraphError(f"Torch-Pruning could not trace {type(model).__name__}: {type(e).__name__}: {e}") from e
    finally:
        model.train(was)
    groups = []
    for g in raw:
        items = list(g._group)
        root = names[items[0].dep.target.module]
        outputs: Dict[str, List[tuple[int, int]]] = {}
        inputs: Dict[str, List[tuple[int, int]]] = {}
        consumers = []
        for item in items:
            module = item.dep.target.module
            if module not in names or not isinstance(module, _MASKED):
                continue
            name = names[module]
            if item.dep.handler.__name__ == "prune_out_channels" and module is not head_module:
                outputs.setdefault(name, [])
                outputs[name] += [(int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs)]
            elif item.dep.handler.__name__ == "prune_in_channels":
                consumers.append(name)
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    inputs.setdefault(name, [])
                    inputs[name] += [(int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs)]
        size = len(items[0].idxs)
        groups.append(ChannelGroup(root, size, {k: sorted(set(v)) for k, v in outputs.items()}, consumers,
                                   {k: sorted(set(v)) for k, v in inputs.items()}))
    unknown = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
               and not any(n in g.outputs for g in groups)]
    if unknown:
        raise GraphError(f"{', '.join(unknown)}: layers whose output channels belong to no group of the dependency "
                         "graph (a custom autograd function or an operation Torch-Pruning does not know on their "
                         "path?); they cannot be masked consistently")
    return groups, head


def check_groups(model: nn.Module, groups: list[ChannelGroup], head: str, example_input: Tensor,
                 seed: int = 0, tol: float = 1e-4) -> float:
    """Prune a copy with random weights, statistics and masks and compare it with the masked copy on the example
    input: a GraphError when they disagree (a layer mixes channels in a way the dependency graph does not see, a
    custom autograd function that is not element-wise say). Returns the largest difference."""
    net = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in (*net.named_parameters(), *net.named_buffers()):
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                else:
                    t.add_(torch.randn(t.shape, generator=gen).to(t) * 0.1)
    masks = {}
    for g in groups:
        keep = (torch.rand(g.size, generator=gen) < 0.5).float()
        keep[int(torch.randint(g.size, (1,), generator=gen))] = 1.0  # at least one channel
        masks[g.name] = keep
        masks[g.name + SCALE] = torch.randn(g.size, generator=gen) * 0.5 + 1.0
    x = torch.rand(example_input.shape, generator=gen).to(example_input)
    with torch.no_grad():
        with GraphMasks(net, groups, masks):
            want = net(x)
        try:
            pruned = prune_groups(fold_scales(copy.deepcopy(net), groups, masks), groups, masks, example_input, head)
            got = pruned(x)
        except Exception as e:
            raise GraphError(f"Torch-Pruning could not prune {type(model).__name__} consistently: {type(e).__name__}: "
                             f"{e}") from e
    diff = float((want - got).abs().max()) if got.shape == want.shape else float("inf")
    if not diff <= tol * max(1.0, float(want.abs().max())):
        raise GraphError(f"{type(model).__name__}: the pruned net disagrees with the masked one (largest difference "
                         f"{diff:.3g}): a layer mixes channels in a way the dependency graph does not record (a custom "
                         "autograd function that is not element-wise, a channel shuffle written with view and "
                         "permute, ...); such a network cannot be pruned per channel group")
    return diff


LayerIndex = Dict[str, List[tuple[ChannelGroup, Tensor, Tensor]]]


def layer_index(groups: list[ChannelGroup], side: str = "outputs") -> LayerIndex:
    """Per layer: each group whose channels it outputs (side "outputs") or reads ("inputs"), with where they sit
    there and in the group (as tensors)."""
    out: LayerIndex = {}
    for g in groups:
        for name, pairs in getattr(g, side).items():
            if pairs:
                out.setdefault(name, []).append(
                    (g, torch.tensor([i for i, _ in pairs]), torch.tensor([r for _, r in pairs])))
    return out


def _spread(entries, masks: Dict[str, Tensor], suffix: str, like: Tensor) -> Optional[Tensor]:
    """(B or 1, channels of `like`): each group's mask `<group><suffix>` where its channels sit, 1 elsewhere; None
    when no group of `entries` has that mask."""
    parts = [(masks[g.name + suffix].reshape(-1, g.size).to(like.device, like.dtype), at.to(like.device),
              src.to(like.device)) for g, at, src in entries if g.name + suffix in masks]
    if not parts:
        return None
    full = torch.ones(max(m.shape[0] for m, _, _ in parts), like.shape[1], dtype=like.dtype, device=like.device)
    for m, at, src in parts:
        full[:, at] = m[:, src].expand(full.shape[0], -1)
    return full


def _times(x: Tensor, full: Tensor) -> Tensor:
    return x * (full[:, :, None, None] if x.dim() == 4 else full)


class GraphMasks:
    """Forward hooks that apply group masks to a network's layer outputs, for the duration of a `with` block.

        with GraphMasks(model, groups, masks):   # masks: {group name: (B, size) or (size,)}
            logits = model(x)
    """

    def __init__(self, model: nn.Module, groups: list[ChannelGroup], masks: Dict[str, Tensor],
                 index: Optional[LayerIndex] = None, inputs: Optional[LayerIndex] = None):
        """`index`, `inputs`: layer_index(groups) and layer_index(groups, "inputs"), when the caller keeps them (a
        forward per batch need not rebuild them)."""
        self.model, self.groups, self.masks = model, groups, masks
        self.handles: list = []
        self._where = layer_index(groups) if index is None else index
        scaled = any(g.name + SCALE in masks for g in groups)
        self._reads = (layer_index(groups, "inputs") if inputs is None else inputs) if scaled else {}

    def __enter__(self) -> nn.Module:
        for name, module in self.model.named_modules():
            if name in self._where:
                def hook(mod, args, out, name=name):
                    full = _spread(self._where[name], self.masks, "", out)
                    return out if full is None else _times(out, full)
                self.handles.append(module.register_forward_hook(hook))
            if name in self._reads:
                def pre(mod, args, name=name):
                    full = _spread(self._reads[name], self.masks, SCALE, args[0])
                    return None if full is None else (_times(args[0], full), *args[1:])
                self.handles.append(module.register_forward_pre_hook(pre))
        return self.model

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def prune_groups(model: nn.Module, groups: list[ChannelGroup], masks: Dict[str, Tensor], example_input: Tensor,
                 head: str, classes: Optional[List[int]] = None) -> nn.Module:
    """A physically smaller copy of `model`: every group's masked channels removed (Torch-Pruning's group
    pruning), the head cut to `classes` (ascending; None keeps every class), in eval mode."""
    tp = _tp()
    net = copy.deepcopy(model).eval()
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(net, example_inputs=example_input.to(next(net.parameters()).device),
                                                   verbose=False)
    for g in groups:
        keep = masks[g.name].reshape(-1, g.size)[0] != 0
        if not bool(keep.any()):
            raise GraphError(f"group {g.name}: every channel is masked; keep at least one (generator.min_keep)")
        removed = (~keep).nonzero().flatten().tolist()
        if removed:
            root = net.get_submodule(g.name)
            fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
            dg.get_pruning_group(root, fn, idxs=removed).prune()
    if classes is not None:
        cut_head(net, head, classes)
    return net


def cut_head(net: nn.Module, head: str, classes: List[int]) -> nn.Module:
    """Replace the linear head `head` of `net`, in place, by one with the rows of `classes` (ascending)."""
    old = net.get_submodule(head)
    rows = torch.tensor(sorted(classes), device=old.weight.device)
    new = nn.Linear(old.in_features, len(rows), bias=old.bias is not None).to(old.weight.device)
    with torch.no_grad():
        new.weight.copy_(old.weight[rows])
        if old.bias is not None:
            new.bias.copy_(old.bias[rows])
    parent, _, leaf = head.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, new)
    return net


@torch.no_grad()
def fold_scales(model: nn.Module, groups: list[ChannelGroup], masks: Dict[str, Tensor]) -> nn.Module:
    """`model`, in place, with each group's scaling mask (`<group>.scale` in masks, one subtask's) folded into the
    weight columns of the conv and linear layers that read the group: what GraphMasks computes, as plain weights."""
    for name, entries in layer_index(groups, "inputs").items():
        module = model.get_submodule(name)
        for g, at, src in entries:
            if g.name + SCALE not in masks:
                continue
            s = masks[g.name + SCALE].reshape(-1, g.size)[0].to(module.weight.device, module.weight.dtype)[src]
            w = module.weight
            if isinstance(module, nn.Conv2d) and module.groups > 1:  # depthwise: input channel c is weight row c
                w[at.to(w.device)] *= s.reshape(-1, *[1] * (w.dim() - 1))
            else:
                w[:, at.to(w.device)] *= s.reshape(1, -1, *[1] * (w.dim() - 2))
    return model


@torch.no_grad()
def zero_groups(model: nn.Module, groups: list[ChannelGroup], masks: Dict[str, Tensor],
                index: Optional[LayerIndex] = None) -> nn.Module:
    """`model`, in place, with every masked channel's producers zeroed: the rows (and bias) of each conv, linear
    and BN that outputs it. What GraphMasks computes with 0/1 masks, as plain weights at the dense widths."""
    where = layer_index(groups) if index is None else index
    for name, entries in where.items():
        module = model.get_submodule(name)
        for g, at, src in entries:
            off = masks[g.name].reshape(-1, g.size)[0].to("cpu")[src] == 0
            if getattr(module, "weight", None) is None:
                if bool(off.any()):
                    raise GraphError(f"{name}: a {type(module).__name__} without affine weights cannot zero a "
                                     "channel; its masked form needs the physical net (physical=True)")
                continue
            rows = at[off].to(module.weight.device)
            module.weight[rows] = 0.0
            if module.bias is not None:
                module.bias[rows] = 0.0
    return model


def conv_bn_pairs(model: nn.Module, example_input: Tensor) -> List[List[str]]:
    """[conv, bn] names of the BNs that can be folded into the conv before them: the BN's one input is the conv's
    output, that output goes nowhere else, and each runs once per forward (from Torch-Pruning's graph and one
    forward of `example_input`). Any other BN stays as it is."""
    tp = _tp()
    names = {m: n for n, m in model.named_modules()}
    calls: Dict[nn.Module, int] = {}
    hooks = [m.register_forward_hook(lambda mod, a, o: calls.__setitem__(mod, calls.get(mod, 0) + 1))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    was = model.training
    try:
        try:
            with torch.no_grad():
                model.eval()(example_input)
        finally:
            for h in hooks:
                h.remove()
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    finally:
        model.train(was)
    pairs = []
    for bn, node in dg.module2node.items():
        if type(bn) is not nn.BatchNorm2d or not bn.track_running_stats or calls.get(bn) != 1 or len(node.inputs) != 1:
            continue
        conv = node.inputs[0].module
        if (type(conv) is nn.Conv2d and calls.get(conv) == 1 and conv in names and bn in names
                and [o.module for o in node.inputs[0].outputs] == [bn]):
            pairs.append([names[conv], names[bn]])
    return sorted(pairs)


def fold_pairs(model: nn.Module, pairs: List[List[str]]) -> nn.Module:
    """Fold each [conv, bn] pair's BN (eval-mode statistics) into its conv, in place: the conv gains the bias,
    the BN becomes nn.Identity. The pairs come from `conv_bn_pairs`."""
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
            scale, shift = bn_scale_shift(bn)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(shift if conv.bias is None else conv.bias * scale + shift)
            parent, _, leaf = bn_name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    return model


__all__ = ["SCALE", "ChannelGroup", "GraphError", "GraphMasks", "check_groups", "conv_bn_pairs", "cut_head",
           "find_groups", "find_head", "fold_pairs", "fold_scales", "layer_index", "prune_groups", "zero_groups"]
