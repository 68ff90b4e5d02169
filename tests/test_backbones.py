import pytest
import torch

from hypersan.nn.backbones import build_backbone
from hypersan.nn.generators import HyperNetwork, PerTaskMasks, mean_utility, to_masks
from hypersan.prune.metrics import count_macs, count_params

ARCHS = {
    "resnet": {"arch": "resnet", "in_channels": 1, "num_classes": 5, "widths": [4, 6, 8], "blocks": [1, 2, 1],
               "mean": [0.5], "std": [0.25]},
    "vgg": {"arch": "vgg", "in_channels": 3, "num_classes": 5, "widths": [4, 6], "blocks": [2, 1],
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
}


@pytest.fixture(params=list(ARCHS))
def net(request):
    return build_backbone(ARCHS[request.param])


def _x(net, b=3):
    return torch.rand(b, net.arch["in_channels"], 12, 12)


@pytest.mark.parametrize("gen_kind", ["hypernet", "pertask"])
def test_generated_masks_have_site_shapes(net, gen_kind):
    sites = net.sites()
    gen = HyperNetwork(sites, 5, hidden=8) if gen_kind == "hypernet" else PerTaskMasks(sites, 5)
    cond = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1.0]])
    masks = to_masks(gen(cond), sites, 0.1, 0.1, 1)
    assert set(masks) == {s.name for s in sites}
    for s in sites:
        assert masks[s.name].shape == (2, s.size)
        if s.kind == "utility":
            assert set(masks[s.name].unique().tolist()) <= {0.0, 1.0}
            assert masks[s.name].sum(dim=1).min() >= 1  # keep rule


def test_sites_declared_once_and_scaling_everywhere_but_first_conv(net):
    names = [s.name for s in net.sites()]
    assert len(names) == len(set(names))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(s.kind == "scaling" for s in net.sites()) == len(convs) - 1


def test_all_ones_masks_equal_dense(net):
    net.eval()
    x = _x(net)
    ones = {s.name: torch.ones(3, s.size) for s in net.sites()}
    assert torch.allclose(net(x, ones), net(x), atol=1e-6)


def test_per_sample_masks_mix_subtasks(net):
    net.eval()
    x = _x(net, 2)
    m = {s.name: torch.rand(2, s.size) for s in net.sites()}
    both = net(x, m)
    first = net(x[:1], {k: v[:1] for k, v in m.items()})
    assert torch.allclose(both[:1], first, atol=1e-5)


def test_gradients_reach_every_parameter(net):
    for m in net.modules():  # undo the zero-init of residual BNs, which blocks gradient at step 0 by design
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    sites = net.sites()
    for gen in (HyperNetwork(sites, 5, hidden=8, sigma=0.3), PerTaskMasks(sites, 5, sigma=0.3)):
        net.zero_grad()
        cond = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 0, 1.0], [1, 1, 1, 1, 1.0]])
        raw = gen(cond)
        out = net(_x(net), to_masks(raw, sites, 0.1, 1.0, 1))  # a wide surrogate so every utility gets gradient
        loss = out.pow(2).mean() + 0.1 * mean_utility(raw, sites).mean()
        loss.backward()
        for name, p in list(net.named_parameters()) + list(gen.named_parameters()):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
        assert torch.isfinite(out).all()


def test_macs_and_params_shrink_with_site_widths(net):
    a = dict(net.arch)
    small = build_backbone(dict(a, site_widths={k: max(1, v // 2) for k, v in a["site_widths"].items()}))
    shape = (a["in_channels"], 12, 12)
    assert count_macs(small, shape) < count_macs(net, shape)
    assert count_params(small) < count_params(net)
