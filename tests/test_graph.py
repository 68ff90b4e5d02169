"""Custom models through Torch-Pruning's dependency graph: the groups found, masks by hooks, pruned == masked."""
from functools import partial

import pytest
import torch
from torch import nn

from .models import densenet, mobilenet, resnet18, resnet50

tp = pytest.importorskip("torch_pruning")

from hypersan.nn.graph import GraphError, GraphMasks, find_groups, prune_groups  # noqa: E402

MODELS = {"mobilenet": mobilenet.build, "densenet": densenet.build, "resnet18": resnet18.build,
          # torchvision's layout at a small width, for 1-channel 28 x 28 images: two blocks in the first two stages
          "resnet50": partial(resnet50.build, num_classes=10, in_channels=1, width=4, layers=(2, 2, 1, 1))}


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that a masked channel's BN shift would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
    return model.eval()


def _groups(name):
    model = _randomize(MODELS[name](), 0)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return model, x, *find_groups(model, x)


def test_the_groups_tie_what_residuals_concatenations_and_depthwise_convs_tie():
    model, _, groups, head = _groups("resnet18")
    assert head == "linear" and len(groups) == 12  # 4 residual streams + 8 block-internal widths
    stream = next(g for g in groups if g.name == "conv1")
    assert {"conv1", "bn1", "layers.0.conv2", "layers.0.bn2", "layers.1.conv2", "layers.1.bn2"} <= set(stream.outputs)
    assert stream.size == 8
    proj = next(g for g in groups if "layers.2.shortcut.0" in g.outputs)  # the projection joins the next stream
    assert {"layers.2.bn2", "layers.3.bn2", "layers.2.shortcut.1"} <= set(proj.outputs)

    model, _, groups, head = _groups("mobilenet")
    assert head == "classifier" and len(groups) == 6
    # expand conv, depthwise conv and their BNs: one group (the depthwise conv maps channel i to channel i)
    dw = next(g for g in groups if "blocks.0.block.1.0" in g.outputs)
    assert set(dw.outputs) == {"blocks.0.block.0.0", "blocks.0.block.0.1", "blocks.0.block.1.0", "blocks.0.block.1.1"}
    # the stem and the first block's projection share the residual stream
    assert {"stem.0", "blocks.0.block.2.0"} <= set(next(g for g in groups if "stem.0" in g.outputs).outputs)

    model, _, groups, head = _groups("densenet")
    assert len(groups) == 6
    stem = next(g for g in groups if g.name == "stem")  # concatenated on: later BNs read its channels in place
    assert stem.outputs["block1.1.bn"] == [(i, i) for i in range(12)]
    late = next(g for g in groups if g.name == "block1.0.conv")
    assert late.outputs["block1.1.bn"] == [(12 + i, i) for i in range(6)]  # shifted by the concatenation

    model, _, groups, head = _groups("resnet50")  # torchvision-style bottlenecks, projected by `downsample`
    assert head == "fc" and len(groups) == 17  # the stem, 4 residual streams, 2 widths in each of 6 blocks
    assert set(next(g for g in groups if g.name == "conv1").outputs) == {"conv1", "bn1"}  # projected: its own
    stream = next(g for g in groups if "layer1.0.downsample.0" in g.outputs)
    assert stream.size == 16 and {"layer1.0.bn3", "layer1.1.bn3", "layer1.0.downsample.1"} <= set(stream.outputs)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pruned_equals_masked_for_random_masks(name):
    model, x, groups, head = _groups(name)
    gen = torch.Generator().manual_seed(7)
    for trial in range(3):
        masks = {}
        for k, g in enumerate(groups):
            m = (torch.rand(g.size, generator=gen) < 0.5).float()
            m[int(torch.randint(0, g.size, (1,), generator=gen))] = 1.0
            if k == trial:  # a group that keeps one channel
                m = torch.zeros(g.size)
                m[g.size - 1] = 1.0
            masks[g.name] = m.unsqueeze(0)
        classes = [1, 4, 7]
        with torch.no_grad(), GraphMasks(model, groups, masks):
            want = model(x)[:, classes]
        net = prune_groups(model, groups, masks, x, head, classes)
        with torch.no_grad():
            got = net(x)
        assert got.shape == (2, 3)
        assert (got - want).abs().max().item() <= 1e-4, name
        kept = {g.name: int(masks[g.name].sum()) for g in groups}
        for g in groups:  # the root conv lost exactly the masked channels
            root = net.get_submodule(g.name)
            assert (root.out_channels if isinstance(root, nn.Conv2d) else root.out_features) == kept[g.name]
    with torch.no_grad(), GraphMasks(model, groups, {g.name: torch.ones(1, g.size) for g in groups}):
        assert torch.equal(model(x), model(x))  # all-ones masks: the model as it is
    assert not any(m._forward_hooks for m in model.modules())  # hooks are gone after the block


def test_untraceable_or_unsupported_models_are_named_in_a_clear_error():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.shuffle = nn.ChannelShuffle(2)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            return self.head(self.shuffle(self.conv(x)).mean(dim=(2, 3)))

    with pytest.raises(GraphError, match="shuffle: ChannelShuffle mixes channels"):
        find_groups(Shuffle(), torch.rand(1, 1, 28, 28))

    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return {"logits": self.conv(x).mean(dim=(2, 3))}

    with pytest.raises(GraphError, match="must map .* to \\(B, num_classes\\) logits"):
        find_groups(Dict(), torch.rand(1, 1, 28, 28))


class _Reverse(torch.autograd.Function):
    """A custom autograd function that reverses the channel order: opaque to the graph, and not element-wise."""

    @staticmethod
    def forward(ctx, x):
        return x.flip(1)

    @staticmethod
    def backward(ctx, g):
        return g.flip(1)


class _Square(torch.autograd.Function):
    """An element-wise custom autograd function: the graph may take it as it takes ReLU."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class _FrozenBN(nn.Module):
    """A frozen BN written as a plain module with buffers (as detection codebases write it)."""

    def __init__(self, n):
        super().__init__()
        for k, v in (("weight", 1.0), ("bias", 0.5), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(k, torch.full((n,), v))

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        return x * scale[None, :, None, None] + (self.bias - self.running_mean * scale)[None, :, None, None]


class _Small(nn.Module):
    def __init__(self, middle=None, fn=None):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = middle if middle is not None else nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)
        self.fn = fn

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        if self.fn is not None:
            h = self.fn.apply(h)
        return self.head(self.conv2(h).mean(dim=(2, 3)))


def test_frozen_bn_modules_and_channel_mixing_functions_are_refused():
    from hypersan.nn.graph import check_groups

    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(GraphError, match=r"module .bn1. \(a _FrozenBN\) holds tensors of its own"):
        find_groups(_Small(_FrozenBN(6)), x)
    torch.manual_seed(0)
    ok = _Small(fn=_Square)
    groups, head = find_groups(ok, x)
    assert check_groups(ok, groups, head, x) <= 1e-4  # element-wise: pruned == masked
    bad = _Small(fn=_Reverse)
    groups, head = find_groups(bad, x)  # the graph cannot see the reversal ...
    with pytest.raises(GraphError, match="the pruned net disagrees with the masked one"):
        check_groups(bad, groups, head, x)  # ... the check does


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bn_folding_after_group_pruning_keeps_the_outputs(name):
    from hypersan.nn.graph import conv_bn_pairs, fold_pairs

    model, x, groups, head = _groups(name)
    gen = torch.Generator().manual_seed(3)
    masks = {}
    for g in groups:
        m = (torch.rand(g.size, generator=gen) < 0.6).float()
        m[0] = 1.0
        masks[g.name] = m.unsqueeze(0)
    net = prune_groups(model, groups, masks, x, head, [0, 2])
    pairs = conv_bn_pairs(net, x)
    bns = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn in bns for _, bn in pairs)
    if name == "resnet18":
        assert ["conv1", "bn1"] in pairs and len(pairs) == len(bns)  # conv -> BN everywhere
    if name == "mobilenet":
        assert ["blocks.0.block.1.0", "blocks.0.block.1.1"] in pairs and len(pairs) == len(bns)  # depthwise too
    if name == "densenet":  # pre-activation: every BN reads a concatenation or a conv whose output is concatenated
        assert pairs == []
    with torch.no_grad():
        want = net(x)
        folded = fold_pairs(net, pairs)
        got = folded(x)
    assert (got - want).abs().max().item() <= 1e-4
    left = {n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert left == set(bns) - {bn for _, bn in pairs}


def test_a_bn_whose_conv_output_also_goes_elsewhere_is_not_folded():
    from hypersan.nn.graph import conv_bn_pairs

    class Tap(nn.Module):  # the conv's raw output is also added back: folding the BN would change that path
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 3)

        def forward(self, x):
            y = self.conv(x)
            return self.head((self.bn(y) + y).mean((2, 3)))

    assert conv_bn_pairs(_randomize(Tap(), 0), torch.rand(2, 1, 8, 8)) == []
