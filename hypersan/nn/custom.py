"""A user's own network as a maskable backbone: `[model] arch = "custom"`.

The network comes from a factory named in the config (`factory = "package.module:function"`, called with the
config's `kwargs` and `num_classes`), so a checkpoint rebuilds it from code the user controls, never from a
pickle. Its channel groups are found by Torch-Pruning's dependency graph (`nn.graph`), traced once from a zero
image of the data set's shape; each group is one utility site, and masks reach it through forward hooks, so the
user's module is not rewritten. With `scaling` (`[model] scaling`, the default), each group also has a scaling
site: a multiplier per channel where conv and linear layers read the group. Its surgery is
`prune.surgery.prune_backbone`, the one for every backbone; `rebuild_subnet` rebuilds a pruned net's modules
from its artifact.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from .backbones import Normalize, Site
from .subnet import InferenceLayout, channels_last_if_exact, in_layout, runs_channels_last
from .graph import (SCALE, GraphError, GraphMasks, check_groups, conv_bn_pairs, find_groups, fold_pairs,
                    layer_index, prune_groups)

ARCH = "custom"


def _import(module_name: str):
    """The module, from the Python path or else the working directory (as a console script runs without it)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if cwd in sys.path or "" in sys.path or not (e.name and module_name.startswith(e.name)):
            raise
        sys.path.append(cwd)
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as again:
            sys.path.remove(cwd)
            # the attempt that got further names what is missing ('mynets.nothere', not 'mynets')
            raise (again if again.name and len(again.name) > len(e.name or "") else e) from None


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The function named by "package.module:function", imported from the Python path or, failing that, from
    the working directory."""
    module_name, sep, attr = (spec or "").partition(":")
    if not sep or not module_name or not attr:
        raise GraphError(f"model.factory = {spec!r}; name the function that builds the network as "
                         "'package.module:function' (importable from the Python path)")
    try:
        module = _import(module_name)
    except ImportError as e:
        raise GraphError(f"model.factory = {spec!r}: module {module_name!r} cannot be imported ({e}); is it on the "
                         "Python path (PYTHONPATH, or installed)?") from e
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise GraphError(f"model.factory = {spec!r}: {module_name} has no {attr!r}")
    if not callable(fn):
        raise GraphError(f"model.factory = {spec!r} is a {type(fn).__name__}, not a function")
    return fn


def make_network(factory: str, kwargs: dict, num_classes: int) -> nn.Module:
    """The user's network: factory(**kwargs, num_classes=...) unless kwargs give num_classes themselves."""
    kw = dict(kwargs)
    if "num_classes" in kw and kw["num_classes"] != num_classes:
        raise GraphError(f"model.kwargs.num_classes = {kw['num_classes']} but the data set has {num_classes} classes")
    kw["num_classes"] = num_classes
    try:
        net = load_factory(factory)(**kw)
    except GraphError:
        raise
    except TypeError as e:
        raise GraphError(f"model.factory = {factory!r} called with {sorted(kw)}: {e}") from e
    if not isinstance(net, nn.Module):
        raise GraphError(f"model.factory = {factory!r} returned a {type(net).__name__}, not an nn.Module")
    return net


class CustomBackbone(nn.Module):
    """Normalization, then the user's network with its channel groups as utility sites."""

    ARCH = ARCH

    def __init__(self, factory: str, kwargs: dict, in_channels: int, num_classes: int, input_shape: List[int],
                 mean: List[float], std: List[float], scaling: bool = False):
        super().__init__()
        self.norm = Normalize(mean, std)
        self.net = make_network(factory, kwargs, num_classes)
        self.input_shape = [int(v) for v in input_shape]
        if self.input_shape[0] != in_channels:
            raise GraphError(f"input shape {self.input_shape} does not have {in_channels} channels")
        self.groups, self.head_name = find_groups(self.net, self.example())
        check_groups(self.net, self.groups, self.head_name, self.example())  # pruned == masked, or a GraphError
        self._index = layer_index(self.groups)  # once, not at every masked forward
        self._inputs = layer_index(self.groups, "inputs")
        self._bn_pairs: Optional[List[List[str]]] = None  # conv -> BN pairs, read at the first folded build
        self._channels_last_ok: Optional[bool] = None  # whether subnets run channels-last, at the first build
        out = self.net.get_submodule(self.head_name).out_features
        if out != num_classes:
            raise GraphError(f"model.factory = {factory!r} built a head of {out} outputs for {num_classes} classes")
        self._sites = [Site(g.name, g.size, "utility") for g in self.groups]
        if scaling:  # a scaling site per group, on the channels where its readers take them in
            self._sites += [Site(g.name + SCALE, g.size, "scaling") for g in self.groups if g.inputs]
        self.arch = {"arch": ARCH, "factory": factory, "kwargs": dict(kwargs), "in_channels": in_channels,
                     "num_classes": num_classes, "input_shape": list(self.input_shape), "mean": list(mean),
                     "std": list(std), "scaling": bool(scaling),
                     "site_widths": {s.name: s.size for s in self._sites if s.kind == "utility"}}

    def example(self, batch: int = 2) -> Tensor:
        """A zero batch of the input shape, on the network's device: what the graph is traced with."""
        p = next(self.net.parameters(), None)
        return torch.zeros(batch, *self.input_shape, device=None if p is None else p.device)

    def probe(self, batch: int = 2) -> Tensor:
        """A seeded random batch in [0, 1] of the input shape, on the network's device: what a check of a
        forward's outputs runs on (a zero batch would hide a permuted feature map)."""
        p = next(self.net.parameters(), None)
        x = torch.rand(batch, *self.input_shape, generator=torch.Generator().manual_seed(0))
        return x if p is None else x.to(p.device)

    def bn_pairs(self) -> List[List[str]]:
        """The [conv, bn] pairs a pruned net can fold (nn.graph.conv_bn_pairs). Pruning removes channels, not
        layers or connections, so the pairs of the dense network are those of every pruned one: traced once."""
        if self._bn_pairs is None:
            self._bn_pairs = conv_bn_pairs(self.net, self.example())
        return self._bn_pairs

    def channels_last_ok(self, subnet: "CustomSubnet") -> bool:
        """Whether this network's subnets run channels-last: subnet.channels_last_if_exact on the first one asked
        about, on `probe()`. Pruning removes channels, not the code a `.view` of a feature map lives in, so the
        answer holds for every subnet: checked once, as bn_pairs are traced once (the check is two forwards; half
        a build's surgery for the test ResNet-18 at width 64 on 64 x 64 images)."""
        if self._channels_last_ok is None:
            self._channels_last_ok = channels_last_if_exact(subnet, self.probe()).channels_last
        return self._channels_last_ok

    def sites(self) -> List[Site]:
        return list(self._sites)

    def forward(self, x: Tensor, masks: Optional[Dict[str, Tensor]] = None) -> Tensor:
        x = self.norm(x)
        if not masks:
            return self.net(x)
        with GraphMasks(self.net, self.groups, masks, self._index, self._inputs):
            return self.net(x)


class CustomSubnet(InferenceLayout):
    """A physically pruned custom network: normalization, the pruned copy of the user's network (head cut to the
    subtask's classes), and what rebuilds it (`arch`: the factory, kwargs and kept channels per group).

    `channels_last` starts off: the builds turn it on where the network's forward gives the same outputs
    channels-last (CustomBackbone.channels_last_ok); then, as a plain net, it runs its activations and, in eval
    mode, its conv weights channels-last."""

    def __init__(self, norm: Normalize, net: nn.Module, classes: List[str], arch: dict):
        super().__init__()
        self.norm = norm
        self.net = net
        self.classes = list(classes)
        self.arch = arch
        self.input_shape = list(arch["input_shape"])
        self.bn_folded = False
        self.channels_last = False

    def forward(self, x: Tensor) -> Tensor:
        return self.net(in_layout(self.norm(x), runs_channels_last(self.channels_last, self.training)))


def mask_of(kept: List[int], size: int) -> Tensor:
    """The 0/1 mask of `size` channels that keeps `kept`."""
    m = torch.zeros(size)
    m[kept] = 1.0
    return m


def rebuild_subnet(arch: dict, classes: List[str]) -> CustomSubnet:
    """The pruned net's modules from its artifact's `arch` (factory, kwargs, kept channels, kept classes), with
    the dense net's initial weights: load the artifact's tensors into it."""
    dense = CustomBackbone(arch["factory"], arch["kwargs"], arch["input_shape"][0], arch["dense_num_classes"],
                           arch["input_shape"], arch["mean"], arch["std"])
    kept = arch["kept"]
    unknown = sorted(set(kept) - {g.name for g in dense.groups})
    if unknown:
        raise GraphError(f"the artifact names channel groups {unknown} that {arch['factory']} no longer has: the "
                         "network's code changed since the artifact was written")
    masks = {g.name: mask_of(kept.get(g.name, list(range(g.size))), g.size) for g in dense.groups}
    net = prune_groups(dense.net, dense.groups, masks, dense.example(), dense.head_name, list(arch["classes_kept"]))
    folded = arch.get("folded", [])
    names = dict(net.named_modules())
    wrong = [p for p in folded if not (isinstance(p, list) and len(p) == 2 and isinstance(names.get(p[0]), nn.Conv2d)
                                       and isinstance(names.get(p[1]), nn.BatchNorm2d))]
    if wrong:
        raise GraphError(f"the artifact folds BN into convs that {arch['factory']} does not have as a conv and a "
                         f"BatchNorm2d ({wrong[:3]}): the network's code changed since the artifact was written")
    fold_pairs(net, folded)  # the folded form's modules; the artifact's tensors replace the values
    out = CustomSubnet(dense.norm, net, classes, dict(arch))
    out.bn_folded = bool(folded)
    out.channels_last = dense.channels_last_ok(out)
    return out.eval()


__all__ = ["ARCH", "CustomBackbone", "CustomSubnet", "load_factory", "make_network", "mask_of", "rebuild_subnet"]
