"""Maskable backbones (CIFAR-style ResNet, VGG-style CNN) that declare their mask sites.

A backbone is built from an *architecture dict* (JSON-able). Its `site_widths` entry gives the
width of every utility site, so the same classes build the dense net and any pruned net.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Site:
    """A place where channels can be switched off: `utility` on outputs, `scaling` on a conv's input."""

    name: str
    size: int
    kind: str  # "utility" | "scaling"


def _mask(x: Tensor, masks: Optional[Dict[str, Tensor]], name: str) -> Tensor:
    # masks are per sample (B, C); a missing key means "no mask here"
    if masks is not None and name in masks:
        return x * masks[name][:, :, None, None]
    return x


class Normalize(nn.Module):
    """Per-channel normalization, inside the network so exported models take images in [0, 1]."""

    def __init__(self, mean: List[float], std: List[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(scale, shift) per channel of a BN in eval mode, bn(x) == x * scale + shift: what folding it into the conv
    before it multiplies that conv's output channels by, and adds to them."""
    scale = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
    return scale, (bn.bias if bn.affine else 0.0) - bn.running_mean * scale


class ConvBN(nn.Sequential):
    """Conv (no bias) followed by BatchNorm."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """ResNet basic block; its output shares the stage's stream utility site."""

    def __init__(self, prefix: str, stream: str, in_stream: str, cin: int, mid: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(cin, mid, 3, stride)
        self.conv2 = ConvBN(mid, cout, 3, 1)
        self.has_proj = stride != 1 or in_stream != stream
        self.shortcut = ConvBN(cin, cout, 1, stride) if self.has_proj else nn.Identity()
        self.prefix = prefix
        self.stream = stream
        self.site_mid = prefix
        self.site_conv1_in = prefix + ".conv1.in"
        self.site_conv2_in = prefix + ".conv2.in"
        self.site_short_in = prefix + ".shortcut.in"

    def forward(self, x: Tensor, masks: Optional[Dict[str, Tensor]] = None) -> Tensor:
        h = torch.relu(self.conv1(_mask(x, masks, self.site_conv1_in)))
        h = _mask(h, masks, self.site_mid)
        h = self.conv2(_mask(h, masks, self.site_conv2_in))
        s = self.shortcut(_mask(x, masks, self.site_short_in)) if self.has_proj else x
        # every tensor summed into the stream is masked by the one stream site, after the sum
        return _mask(torch.relu(h + s), masks, self.stream)


class MaskableNet(nn.Module):
    """A backbone with declared mask sites: normalization, a body built by the subclass, a linear head with
    one logit per class. `features(x, masks)` applies the masks at the sites."""

    ARCH = ""  # the architecture name recorded in `arch`

    def __init__(self, in_channels: int, num_classes: int, widths: List[int], blocks: List[int],
                 mean: List[float], std: List[float], site_widths: Optional[Dict[str, int]] = None):
        super().__init__()
        sw = dict(site_widths or {})
        self.norm = Normalize(mean, std)
        self._sites: List[Site] = []
        cin = self._build_body(in_channels, widths, blocks, sw)
        self.head = nn.Linear(cin, num_classes)
        self.arch = {"arch": self.ARCH, "in_channels": in_channels, "num_classes": num_classes,
                     "widths": list(widths), "blocks": list(blocks), "mean": list(mean), "std": list(std),
                     "site_widths": {s.name: s.size for s in self._sites if s.kind == "utility"}}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._init_extra()

    def _build_body(self, in_channels: int, widths: List[int], blocks: List[int], sw: Dict[str, int]) -> int:
        """Register the layers and sites between normalization and head; return the head's input width."""
        raise NotImplementedError

    def _init_extra(self) -> None:
        """Initialization beyond Kaiming-normal convs (none by default)."""

    @torch.jit.unused
    def sites(self) -> List[Site]:
        """The declared mask sites, in forward order."""
        return list(self._sites)

    def forward(self, x: Tensor, masks: Optional[Dict[str, Tensor]] = None) -> Tensor:
        return self.head(self.features(x, masks))  # (B, num_classes)


class ResNet(MaskableNet):
    """CIFAR-style ResNet with basic blocks; one logit per class."""

    ARCH = "resnet"

    def _build_body(self, in_channels: int, widths: List[int], blocks: List[int], sw: Dict[str, int]) -> int:
        stream0 = "stage0"
        w = lambda name, default: int(sw.get(name, default))  # noqa: E731
        self.stem = ConvBN(in_channels, w(stream0, widths[0]), 3)
        self.stem_site = stream0
        layers: List[nn.Module] = []
        self._sites.append(Site(stream0, w(stream0, widths[0]), "utility"))
        prev_stream, cin = stream0, w(stream0, widths[0])
        for i, (width, nblocks) in enumerate(zip(widths, blocks)):
            stream = f"stage{i}"
            cout = w(stream, width)
            if i > 0:
                self._sites.append(Site(stream, cout, "utility"))
            for j in range(nblocks):
                prefix = f"{stream}.block{j}"
                mid = w(prefix, width)
                stride = 2 if (i > 0 and j == 0) else 1
                blk = BasicBlock(prefix, stream, prev_stream, cin, mid, cout, stride)
                layers.append(blk)
                self._sites += [Site(prefix + ".conv1.in", cin, "scaling"), Site(prefix, mid, "utility"),
                                Site(prefix + ".conv2.in", mid, "scaling")]
                if blk.has_proj:
                    self._sites.append(Site(prefix + ".shortcut.in", cin, "scaling"))
                prev_stream, cin = stream, cout
        self.blocks = nn.ModuleList(layers)
        return cin

    def _init_extra(self) -> None:
        for blk in self.blocks:  # zero-init the last BN of each residual branch
            nn.init.zeros_(blk.conv2[1].weight)

    def features(self, x: Tensor, masks: Optional[Dict[str, Tensor]] = None) -> Tensor:
        x = self.norm(x)
        x = _mask(torch.relu(self.stem(x)), masks, self.stem_site)
        for blk in self.blocks:
            x = blk(x, masks)
        return x.mean(dim=(2, 3))  # (B, C_last)


class VGG(MaskableNet):
    """Plain VGG-style CNN: stages of conv-BN-ReLU with max-pooling between stages; one logit per class."""

    ARCH = "vgg"

    def _build_body(self, in_channels: int, widths: List[int], blocks: List[int], sw: Dict[str, int]) -> int:
        convs: List[nn.Module] = []
        names: List[str] = []
        pools: List[bool] = []
        cin, k = in_channels, 0
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                name = f"conv{k}"
                cout = int(sw.get(name, width))
                convs.append(ConvBN(cin, cout, 3))
                if k > 0:
                    self._sites.append(Site(name + ".in", cin, "scaling"))
                self._sites.append(Site(name, cout, "utility"))
                names.append(name)
                pools.append(j == n - 1 and i < len(widths) - 1)
                cin, k = cout, k + 1
        self.convs = nn.ModuleList(convs)
        self.names = names
        self.pools = pools
        return cin

    def features(self, x: Tensor, masks: Optional[Dict[str, Tensor]] = None) -> Tensor:
        x = self.norm(x)
        for k, conv in enumerate(self.convs):
            name = self.names[k]
            if k > 0:
                x = _mask(x, masks, name + ".in")
            x = _mask(torch.relu(conv(x)), masks, name)
            if self.pools[k]:
                x = torch.nn.functional.max_pool2d(x, 2)
        return x.mean(dim=(2, 3))


def build_backbone(arch: dict) -> nn.Module:
    """Build a backbone from its architecture dict (as stored in checkpoints and artifacts)."""
    kinds = {"resnet": ResNet, "vgg": VGG}
    if arch.get("arch") not in kinds:
        raise ValueError(f"unknown architecture {arch.get('arch')!r}; known: {', '.join(kinds)}")
    return kinds[arch["arch"]](arch["in_channels"], arch["num_classes"], arch["widths"], arch["blocks"],
                               arch["mean"], arch["std"], arch.get("site_widths"))
