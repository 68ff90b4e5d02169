"""Plain (mask-free) ResNet / VGG built from per-layer widths: what surgery produces and artifacts rebuild.

A plain net takes the same architecture dict as `backbones.build_backbone` (its `site_widths` give the
width of every utility site) and has the same state-dict keys, but its forward has no mask code, so it
scripts with TorchScript and exports to ONNX. It also carries the names of the classes it recognizes.
With `bn_folded=True` every conv carries a bias and there is no BatchNorm (the inference form).

Inference speed: activations run in channels-last memory format (`net.channels_last`, on by default;
oneDNN's convolutions are 1.2-3x faster on it on CPU, and so are CUDA's), and so do the conv weights of a net
in eval mode (`InferenceLayout.train`); ReLU and the residual add work in place, so a forward allocates one tensor per
conv. None of it changes the values computed.
"""

import copy
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from .backbones import ConvBN, Normalize, bn_scale_shift
from ..io import load_checked


def _conv(cin: int, cout: int, k: int, stride: int, bn_folded: bool) -> nn.Sequential:
    if bn_folded:  # same key prefix as ConvBN ("<name>.0.weight"), BN folded into the bias
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=True))
    return ConvBN(cin, cout, k, stride)


def _describe(net: nn.Module, kind: str, in_channels: int, num_classes: int, widths: List[int], blocks: List[int],
              mean: List[float], std: List[float], site_widths: Dict[str, int], classes: Optional[List[str]],
              bn_folded: bool) -> None:
    """Attach class names, the (empty until set) input shape and the architecture dict to a plain net."""
    net.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
    if len(net.classes) != num_classes:
        raise ValueError(f"{len(net.classes)} class names for a head of {num_classes} classes")
    net.input_shape = []  # set by surgery and load_subnet
    net.bn_folded = bn_folded
    net.channels_last = True
    net.arch = {"arch": kind, "in_channels": in_channels, "num_classes": num_classes, "widths": list(widths),
                "blocks": list(blocks), "mean": list(mean), "std": list(std), "site_widths": dict(site_widths)}


def runs_channels_last(wanted: bool, training: bool) -> bool:
    """Whether a net's forward runs its activations channels-last (`wanted`: its `channels_last`): in inference,
    and in a train-mode forward without gradients (BN calibration: 1.1-1.35x faster on the Fashion-MNIST nets on
    a 2-core Zen 4, 1.35-1.8x with the weights channels-last too), not where autograd records: on torch 2.13 CPU a
    channels-last conv backward crashed the process (batch 123 on a 28x28 ResNet; 120, 124 and 128 ran), so
    training keeps the default layout. (Plain arguments, not the module: TorchScript compiles this.)"""
    return wanted and (not training or not torch.is_grad_enabled())


def in_layout(x: Tensor, channels_last: bool) -> Tensor:
    """x in channels-last memory format when asked (a no-op when it already is)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def weights_layout(module: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """Every 4-D parameter and buffer of the module in `memory_format`, in place (the same Parameter objects, a
    fresh copy of the data where its strides differ); values unchanged. A fresh layout, not `contiguous`: that
    keeps the default strides of a weight that satisfies both layouts (one input channel, a 1x1 kernel), and the
    conv's output would then leave the channels-last path."""
    for t in (*module.parameters(), *module.buffers()):
        if t.dim() == 4:
            want = torch.empty_like(t.data, memory_format=memory_format)
            if want.stride() != t.data.stride():
                t.data = want.copy_(t.data)
    return module


class InferenceLayout(nn.Module):
    """What the plain nets hypersan builds share (PlainNet, and a custom network's CustomSubnet): `channels_last`,
    whether forward runs its activations channels-last where nothing records for autograd (runs_channels_last),
    and conv weights laid out to match with the mode (`train`)."""

    channels_last: bool

    def train(self, mode: bool = True) -> "InferenceLayout":
        """Set train / eval mode, and lay the conv weights out as forward will lay out the activations: channels-
        last in eval mode (and in a train-mode call without gradients, BN calibration), the default layout where
        autograd records. oneDNN runs a conv channels-last when its input or its weight is, so channels-last
        weights beside channels-last activations spare it a reorder at every call (4-20% less time per call on
        the Fashion-MNIST nets, docs/RESULTS.md), and default-layout weights keep training off the channels-last
        conv backward (see runs_channels_last). After changing `channels_last`, call `eval()` again."""
        super().train(mode)
        cl = runs_channels_last(getattr(self, "channels_last", False), mode)
        weights_layout(self, torch.channels_last if cl else torch.contiguous_format)
        return self


@torch.no_grad()
def channels_last_if_exact(net: InferenceLayout, x: Tensor) -> InferenceLayout:
    """Turn on `net.channels_last` where its forward on `x` gives the same outputs in both layouts (to float
    rounding), else leave it off: a network whose forward `.view`s a feature map raises on channels-last strides.
    The net keeps its mode; returns it."""
    was = net.training
    net.channels_last = False
    want = net.eval()(x)
    net.channels_last = True
    try:
        got = net.eval()(x)
        ok = got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-4,
                                                             atol=1e-5 * max(1.0, want.abs().max().item())))
    except RuntimeError:
        ok = False
    net.channels_last = ok
    return net.train(was)


class PlainBlock(nn.Module):
    """ResNet basic block without masks."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, has_proj: bool, bn_folded: bool):
        super().__init__()
        self.conv1 = _conv(cin, mid, 3, stride, bn_folded)
        self.conv2 = _conv(mid, cout, 3, 1, bn_folded)
        self.has_proj = has_proj
        self.shortcut = _conv(cin, cout, 1, stride, bn_folded) if has_proj else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.training:  # in place only for inference: it saves memory, and autograd gains nothing from it
            return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))
        h = self.conv2(torch.relu_(self.conv1(x)))
        return torch.relu_(h.add_(self.shortcut(x)))


class PlainNet(InferenceLayout):
    """A plain net from per-layer widths: normalization, a body built by the subclass, a linear head with one
    logit per kept class, in the order of `classes`."""

    ARCH = ""  # the architecture name recorded in `arch`
    classes: List[str]
    input_shape: List[int]  # [C, H, W] of the images it takes
    channels_last: bool  # run activations in channels-last memory format (same values, faster convs)

    def __init__(self, in_channels: int, num_classes: int, widths: List[int], blocks: List[int],
                 mean: List[float], std: List[float], site_widths: Optional[Dict[str, int]] = None,
                 classes: Optional[List[str]] = None, bn_folded: bool = False):
        super().__init__()
        sw = dict(site_widths or {})
        self.norm = Normalize(mean, std)
        cin = self._build_body(in_channels, widths, blocks, sw, bn_folded)
        self.head = nn.Linear(cin, num_classes)
        _describe(self, self.ARCH, in_channels, num_classes, widths, blocks, mean, std, sw, classes, bn_folded)

    def _build_body(self, in_channels: int, widths: List[int], blocks: List[int], sw: Dict[str, int],
                    bn_folded: bool) -> int:
        """Register the layers between normalization and head; return the head's input width."""
        raise NotImplementedError


class PlainResNet(PlainNet):
    """CIFAR-style ResNet from per-layer widths."""

    ARCH = "resnet"

    def _build_body(self, in_channels: int, widths: List[int], blocks: List[int], sw: Dict[str, int],
                    bn_folded: bool) -> int:
        cin = int(sw.get("stage0", widths[0]))
        self.stem = _conv(in_channels, cin, 3, 1, bn_folded)
        layers: List[nn.Module] = []
        prev_stream = "stage0"
        for i, (width, nblocks) in enumerate(zip(widths, blocks)):
            stream = f"stage{i}"
            cout = int(sw.get(stream, width))
            for j in range(nblocks):
                mid = int(sw.get(f"{stream}.block{j}", width))
                stride = 2 if (i > 0 and j == 0) else 1
                # same rule as backbones.BasicBlock: project when the stride or the stream changes
                has_proj = stride != 1 or prev_stream != stream
                layers.append(PlainBlock(cin, mid, cout, stride, has_proj, bn_folded))
                prev_stream, cin = stream, cout
        self.blocks = nn.ModuleList(layers)
        return cin

    def forward(self, x: Tensor) -> Tensor:
        cl = runs_channels_last(self.channels_last, self.training)
        x = self.stem(in_layout(self.norm(x), cl))
        x = torch.relu(x) if self.training else torch.relu_(x)
        x = in_layout(x, cl)  # again: with a one-channel image the stem's output format is ambiguous
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.mean(dim=(2, 3)))  # (B, len(classes))


class PlainVGG(PlainNet):
    """VGG-style CNN from per-layer widths."""

    ARCH = "vgg"

    def _build_body(self, in_channels: int, widths: List[int], blocks: List[int], sw: Dict[str, int],
                    bn_folded: bool) -> int:
        convs: List[nn.Module] = []
        pools: List[bool] = []
        cin, k = in_channels, 0
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                cout = int(sw.get(f"conv{k}", width))
                convs.append(_conv(cin, cout, 3, 1, bn_folded))
                pools.append(j == n - 1 and i < len(widths) - 1)
                cin, k = cout, k + 1
        self.convs = nn.ModuleList(convs)
        self.pools = pools
        return cin

    def forward(self, x: Tensor) -> Tensor:
        cl = runs_channels_last(self.channels_last, self.training)
        x = in_layout(self.norm(x), cl)
        for k, conv in enumerate(self.convs):
            x = torch.relu(conv(x)) if self.training else torch.relu_(conv(x))
            if k == 0:  # again: with a one-channel image the first conv's output format is ambiguous
                x = in_layout(x, cl)
            if self.pools[k]:
                x = torch.nn.functional.max_pool2d(x, 2)
        return self.head(x.mean(dim=(2, 3)))


def site_names(arch: dict) -> List[str]:
    """Names of the utility sites whose widths an architecture dict's `site_widths` may set, in forward order."""
    if arch.get("arch") == "resnet":
        return [f"stage{i}" if j < 0 else f"stage{i}.block{j}"
                for i, n in enumerate(arch["blocks"]) for j in range(-1, n)]
    if arch.get("arch") == "vgg":
        return [f"conv{k}" for k in range(sum(arch["blocks"]))]
    raise ValueError(f"unknown architecture {arch.get('arch')!r}; known: resnet, vgg")


def build_plain(arch: dict, classes: Optional[List[str]] = None, bn_folded: bool = False) -> nn.Module:
    """Build a plain net from an architecture dict (the same dict `build_backbone` takes)."""
    kinds = {"resnet": PlainResNet, "vgg": PlainVGG}
    if arch.get("arch") not in kinds:
        raise ValueError(f"unknown architecture {arch.get('arch')!r}; known: {', '.join(kinds)}")
    return kinds[arch["arch"]](arch["in_channels"], arch["num_classes"], arch["widths"], arch["blocks"],
                               arch["mean"], arch["std"], arch.get("site_widths"), classes, bn_folded)


@torch.no_grad()
def fold_bn(net: nn.Module) -> nn.Module:
    """A copy of a plain net with every BatchNorm folded into the conv before it (eval-mode statistics)."""
    if net.bn_folded:
        return copy.deepcopy(net)
    out = build_plain(net.arch, net.classes, bn_folded=True)
    out.input_shape = list(net.input_shape)
    out.channels_last = net.channels_last
    src = net.state_dict()
    dst: Dict[str, Tensor] = {}
    for name, mod in net.named_modules():
        if isinstance(mod, ConvBN):
            conv, bn = mod[0], mod[1]
            scale, shift = bn_scale_shift(bn)  # (Cout,) each
            dst[f"{name}.0.weight"] = conv.weight * scale[:, None, None, None]
            dst[f"{name}.0.bias"] = shift
    for k in ("norm.mean", "norm.std", "head.weight", "head.bias"):
        dst[k] = src[k]
    load_checked(out, dst, "fold_bn")
    return out.train(net.training)
