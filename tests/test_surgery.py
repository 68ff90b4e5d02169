import pytest
import torch

from hypersan.nn.backbones import build_backbone
from hypersan.prune.stats import bn_modules
from hypersan.config import load_config
from hypersan.data.datasets import FASHION_MNIST
from hypersan.prune.metrics import count_params
from hypersan.prune.engine import PruningEngine
from hypersan.nn.model import SubtaskAdaptiveNet
from hypersan.nn.subnet import build_plain, fold_bn
from hypersan.prune.surgery import kept_channels, prune_backbone, round_widths

from .conftest import ROOT

ARCHS = {
    # two blocks per stage: identity shortcuts inside a stage, a projection between stages
    "resnet": {"arch": "resnet", "in_channels": 1, "num_classes": 6, "widths": [6, 8], "blocks": [2, 2],
               "mean": [0.5], "std": [0.25]},
    "vgg": {"arch": "vgg", "in_channels": 3, "num_classes": 6, "widths": [5, 7], "blocks": [2, 1],
            "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]},
}


@torch.no_grad()
def _randomize(net):
    """Random BN affine parameters and running statistics, so no BN is the identity or zero."""
    for bn in bn_modules(net).values():
        bn.weight.normal_()
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    net.head.bias.normal_()
    return net


def _masks(net, gen):
    """Random hard utilities (one site left with one channel, one whole) and signed scalings."""
    util = [s for s in net.sites() if s.kind == "utility"]
    masks = {}
    for s in net.sites():
        if s.kind == "utility":
            m = (torch.rand(1, s.size, generator=gen) < 0.5).float()
            m[0, torch.randint(0, s.size, (1,), generator=gen)] = 1.0
        else:
            m = torch.randn(1, s.size, generator=gen)  # about half negative
        masks[s.name] = m
    one, whole = util[0].name, util[-1].name
    masks[one] = torch.zeros(1, util[0].size)
    masks[one][0, 2] = 1.0
    masks[whole] = torch.ones(1, util[-1].size)
    return masks


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_logits_equal_masked_logits(arch, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = _randomize(build_backbone(ARCHS[arch])).eval()
    masks = _masks(net, gen)
    assert any(bool((m < 0).any()) for n, m in masks.items() if n.endswith(".in"))
    classes = [4, 1, 3]
    x = torch.rand(5, ARCHS[arch]["in_channels"], 12, 12, generator=gen)
    pruned = prune_backbone(net, masks, classes)
    with torch.no_grad():
        want = net(x, masks)[:, [1, 3, 4]]  # ascending class-index order
        got = pruned(x)
    assert pruned.classes == ["1", "3", "4"]
    assert got.shape == (5, 3)
    assert (got - want).abs().max().item() <= 1e-4
    widths = pruned.arch["site_widths"]
    util = [s for s in net.sites() if s.kind == "utility"]
    assert widths[util[0].name] == 1 and widths[util[-1].name] == util[-1].size
    assert sum(widths.values()) < sum(s.size for s in util)


def test_residual_tied_sites_lose_the_same_channels():
    torch.manual_seed(0)
    net = _randomize(build_backbone(ARCHS["resnet"])).eval()
    keep = torch.tensor([1, 4, 6])
    masks = {"stage1": torch.zeros(1, 8)}
    masks["stage1"][0, keep] = 1.0
    pruned = prune_backbone(net, masks, range(6))
    full, small = net.state_dict(), pruned.state_dict()
    # every tensor summed into stream stage1 (block conv2 outputs, the projection) and its readers
    writers = ["blocks.2.conv2.0.weight", "blocks.2.shortcut.0.weight", "blocks.3.conv2.0.weight"]
    for k in writers:
        assert torch.equal(small[k], full[k][keep]), k
    assert torch.equal(small["blocks.3.conv1.0.weight"], full["blocks.3.conv1.0.weight"][:, keep])
    assert torch.equal(small["head.weight"], full["head.weight"][:, keep])
    assert not pruned.blocks[3].has_proj  # the identity shortcut stays an identity


def _hand_params(k0, m0, k1, m1, n_cls, cin=1):
    """Parameters of ARCH_HAND counted by hand: conv weights, BN weight+bias, head weight+bias."""
    stem = cin * k0 * 9 + 2 * k0
    b0 = (k0 * m0 * 9 + 2 * m0) + (m0 * k0 * 9 + 2 * k0)  # identity shortcut: no parameters
    b1 = (k0 * m1 * 9 + 2 * m1) + (m1 * k1 * 9 + 2 * k1) + (k0 * k1 + 2 * k1)  # 1x1 projection
    return stem + b0 + b1 + k1 * n_cls + n_cls


ARCH_HAND = {"arch": "resnet", "in_channels": 1, "num_classes": 5, "widths": [4, 6], "blocks": [1, 1],
             "mean": [0.5], "std": [0.25]}


def test_param_count_drops_by_exactly_the_removed_channels():
    net = build_backbone(ARCH_HAND)
    assert count_params(net) == _hand_params(4, 4, 6, 6, 5)
    masks = {"stage0": torch.tensor([[1., 0, 1, 0]]), "stage0.block0": torch.tensor([[0., 0, 0, 1]]),
             "stage1": torch.tensor([[1., 1, 0, 1, 0, 1]]), "stage1.block0": torch.tensor([[1., 1, 1, 1, 1, 0]])}
    pruned = prune_backbone(net, masks, [0, 3])
    assert count_params(pruned) == _hand_params(2, 1, 4, 5, 2)
    assert count_params(net) - count_params(pruned) == _hand_params(4, 4, 6, 6, 5) - _hand_params(2, 1, 4, 5, 2)


def test_zero_channels_are_refused():
    net = build_backbone(ARCH_HAND)
    with pytest.raises(ValueError, match="keep 0 of 6 channels"):
        prune_backbone(net, {"stage1": torch.zeros(1, 6)}, [0])


def test_soft_utilities_are_refused():
    net = build_backbone(ARCH_HAND)
    with pytest.raises(ValueError, match="not binary"):
        prune_backbone(net, {"stage1": torch.full((1, 6), 0.5)}, [0])


def test_batched_masks_are_refused():
    net = build_backbone(ARCH_HAND)
    with pytest.raises(ValueError, match=r"shape \(2, 6\)"):
        prune_backbone(net, {"stage1": torch.ones(2, 6)}, [0])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_bn_folding_keeps_the_logits(arch):
    torch.manual_seed(3)
    net = _randomize(build_backbone(ARCHS[arch])).eval()
    gen = torch.Generator().manual_seed(3)
    pruned = prune_backbone(net, _masks(net, gen), [0, 5])
    folded = fold_bn(pruned)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(4, ARCHS[arch]["in_channels"], 12, 12)
    with torch.no_grad():
        assert (folded(x) - pruned(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("arch", list(ARCHS))
def test_plain_net_has_the_backbone_state_dict_and_function(arch):
    torch.manual_seed(0)
    net = _randomize(build_backbone(ARCHS[arch])).eval()
    plain = build_plain(net.arch).eval()
    plain.load_state_dict(net.state_dict(), strict=True)
    x = torch.rand(3, ARCHS[arch]["in_channels"], 12, 12)
    with torch.no_grad():
        assert torch.allclose(plain(x), net(x), atol=1e-6)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pruned_net_exports(arch):
    torch.manual_seed(0)
    net = _randomize(build_backbone(ARCHS[arch])).eval()
    pruned = prune_backbone(net, _masks(net, torch.Generator().manual_seed(0)), [2, 3])
    x = torch.rand(2, ARCHS[arch]["in_channels"], 12, 12)
    program = torch.export.export(pruned, (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), pruned(x), atol=1e-6)


def test_round_widths_adds_back_the_highest_utility_channels():
    net = build_backbone(ARCH_HAND)
    sites = net.sites()
    masks = {s.name: torch.ones(1, s.size) for s in sites}
    raw = {s.name: torch.ones(1, s.size) for s in sites}
    masks["stage1"] = torch.tensor([[0., 1, 0, 0, 0, 0]])
    raw["stage1"] = torch.tensor([[0.05, 0.9, 0.07, 0.01, 0.02, 0.08]])
    masks["stage0"] = torch.tensor([[1., 1, 1, 0]])
    out = round_widths(masks, raw, sites, 4)
    assert out["stage1"].tolist() == [[1., 1, 1, 0, 0, 1]]  # kept + the 3 best pruned (0.08, 0.07, 0.05)
    assert out["stage0"].sum() == 4  # 3 -> 4 (= full width)
    widths = {n: len(i) for n, i in kept_channels(round_widths(masks, raw, sites, 5), sites).items()}
    assert widths["stage1"] == 5 and widths["stage0"] == 4  # capped at the site size


def test_round_widths_nearest_drops_the_lowest_utility_kept_channels():
    net = build_backbone(ARCH_HAND)
    sites = net.sites()
    masks = {s.name: torch.ones(1, s.size) for s in sites}
    raw = {s.name: torch.ones(1, s.size) for s in sites}
    masks["stage1"] = torch.tensor([[1., 1, 1, 0, 1, 1]])  # 5 kept -> nearest multiple of 4 is 4
    raw["stage1"] = torch.tensor([[0.5, 0.9, 0.2, 0.01, 0.3, 0.8]])
    masks["stage0"] = torch.tensor([[0., 1, 0, 0]])  # 1 kept -> never below one multiple: 4
    out = round_widths(masks, raw, sites, 4, mode="nearest")
    assert out["stage1"].tolist() == [[1., 1, 0, 0, 1, 1]]  # the kept channel of lowest utility (0.2) goes
    assert out["stage0"].sum() == 4
    assert round_widths(masks, raw, sites, 4)["stage1"].sum() == 6  # "up" only adds
    with pytest.raises(ValueError, match="round mode"):
        round_widths(masks, raw, sites, 4, mode="down")


# ------------------------------------------------------------------ through the SubtaskAdaptiveNet


def _model(arch="resnet", extra=()):
    over = ["calib.batch_size=32", *extra] + ([] if arch == "resnet" else ['model.arch="vgg"', "model.blocks=[1, 1]"])
    cfg = load_config(ROOT / "configs" / "tiny.toml", over)
    torch.manual_seed(0)
    model = SubtaskAdaptiveNet(cfg, FASHION_MNIST).eval()
    _randomize(model.backbone)
    with torch.no_grad():  # signed scalings, utilities spread around the threshold
        for s, head in zip(model.generator.sites, model.generator.heads):
            head.bias.normal_(0.0, 1.0 if s.kind == "scaling" else 0.15)
    return model


def _engine(arch="resnet", extra=(), images=None):
    """A PruningEngine over _model(), calibrating on random images (no dataset needed)."""
    return PruningEngine(_model(arch, extra), images=_images() if images is None else images)


def _images(n=64, seed=0):
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_masked_form_keeps_dense_widths_and_the_logits(arch):
    torch.manual_seed(4)
    net = _randomize(build_backbone(ARCHS[arch])).eval()
    masks = _masks(net, torch.Generator().manual_seed(4))
    masked = prune_backbone(net, masks, [0, 2, 5], physical=False)
    pruned = prune_backbone(net, masks, [0, 2, 5])
    assert masked.arch["site_widths"] == net.arch["site_widths"]
    assert count_params(masked) > count_params(pruned)
    x = torch.rand(4, ARCHS[arch]["in_channels"], 12, 12)
    with torch.no_grad():
        want = net(x, masks)[:, [0, 2, 5]]
        assert (masked(x) - want).abs().max().item() <= 1e-4
        assert (fold_bn(masked)(x) - want).abs().max().item() <= 1e-4
    # a pruned output channel has a zero BN scale and shift; a kept one keeps its own
    site = [s.name for s in net.sites() if s.kind == "utility"][0]
    bn = masked.stem[1] if arch == "resnet" else masked.convs[0][1]
    off = masks[site][0] == 0
    assert bool(off.any())
    assert bool((bn.weight[off] == 0).all()) and bool((bn.bias[off] == 0).all())
    assert bool((bn.weight[~off] != 0).all())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_channels_last_changes_the_layout_not_the_logits(arch):
    torch.manual_seed(5)
    net = _randomize(build_backbone(ARCHS[arch])).eval()
    plain = prune_backbone(net, None, range(6))
    seen = []
    inner = plain.blocks[0].conv2[0] if arch == "resnet" else plain.convs[1][0]
    inner.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)
                                                             and not a[0].is_contiguous()))
    x = torch.rand(3, ARCHS[arch]["in_channels"], 12, 12)

    def layouts():  # each conv weight: with channels-last strides (one-input-channel weights too)?
        return {w.stride() == torch.empty_like(w, memory_format=torch.channels_last).stride()
                for w in plain.parameters() if w.dim() == 4 and w.shape[2] > 1}

    assert layouts() == {True}  # in eval mode the weights are laid out as the activations
    with torch.no_grad():
        fast = plain(x)
        plain.channels_last = False
        slow_weights = plain(x)
        assert seen == [True, True]  # channels-last weights alone keep oneDNN's output channels-last
        plain.eval()  # lays the weights out again
        assert layouts() == {False}
        slow = plain(x)
    assert seen == [True, True, False]  # one-channel images too: the layout is set again after the first conv
    assert (fast - slow).abs().max().item() <= 1e-5 and (fast - slow_weights).abs().max().item() <= 1e-5
    plain.channels_last = True
    plain.train()  # training, where autograd records: the default layout, weights and activations
    assert layouts() == {False}
    with torch.no_grad():
        plain.train()  # a train-mode call without gradients (BN calibration): channels-last
    assert layouts() == {True}
    params = list(plain.parameters())
    plain.eval()
    assert all(a is b for a, b in zip(params, plain.parameters()))  # the same Parameters: optimizers keep them


def test_calibration_runs_channels_last_only_without_gradients_and_gives_the_same_statistics():
    from hypersan.prune.stats import recalibrate

    def net():  # a plain VGG at full widths (a one-channel layer would leave the layout ambiguous)
        torch.manual_seed(0)
        return _randomize(build_plain(ARCHS["vgg"]))

    seen = []

    def record(n):
        n.convs[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(
            memory_format=torch.channels_last)))
        return n

    batches = [torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    plain = net()
    plain.channels_last = False
    want = recalibrate(plain, plain, batches)  # the default layout throughout
    fast = record(net().to(memory_format=torch.channels_last))  # as PruningEngine calibrates
    got = recalibrate(fast, fast, batches)
    assert seen == [True] * 3
    assert want.keys() == got.keys()
    for k in want:
        assert torch.allclose(want[k], got[k], rtol=1e-4, atol=1e-6), k
    seen.clear()
    trained = record(net())  # channels_last on, weights in the default layout: a net as it is trained
    with torch.no_grad():
        trained.train()(batches[0])
    trained.train()(batches[0]).sum().backward()  # where autograd records: the default layout (see subnet)
    assert seen == [True, False]


def test_channels_last_weights_converts_even_ambiguous_weights_and_gives_them_back():
    from hypersan.prune.stats import channels_last_weights

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 6, 1))  # both layouts fit these weights
    before = [(p.data_ptr(), p.stride()) for p in net.parameters() if p.dim() == 4]
    with channels_last_weights(net):
        # channels-last strides proper: the channel dimension is the innermost one
        assert all(p.stride(1) == 1 for p in net.parameters() if p.dim() == 4)
    assert [(p.data_ptr(), p.stride()) for p in net.parameters() if p.dim() == 4] == before
