"""Per-subset pruning baselines: matched MACs, and a pruned net that computes what the masked backbone does."""
import pytest
import torch

from hypersan.backbones import build_backbone
from hypersan.metrics import count_macs
from hypersan.surgery import prune_backbone

from .test_surgery import ARCHS, _randomize

tp = pytest.importorskip("torch_pruning")

from hypersan.baselines import finetune, magnitude_prune, random_prune  # noqa: E402

CLASSES = [0, 2, 5]
SHAPES = {"resnet": (1, 12, 12), "vgg": (3, 12, 12)}


def _dense(arch, seed=0):
    torch.manual_seed(seed)
    bb = _randomize(build_backbone(dict(ARCHS[arch], widths=[16, 24]))).eval()
    net = prune_backbone(bb, None, CLASSES, input_shape=SHAPES[arch])
    dense_macs = count_macs(prune_backbone(bb, None, range(6), input_shape=SHAPES[arch]), SHAPES[arch])
    return bb, net, dense_macs


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_baselines_hit_their_matched_macs(arch, ratio):
    _, net, dense_macs = _dense(arch)
    for pruned in (magnitude_prune(net, ratio, dense_macs), random_prune(net, ratio, dense_macs, seed=1)):
        got = count_macs(pruned, SHAPES[arch]) / dense_macs
        assert abs(got / ratio - 1) <= 0.02, got
        assert all(w >= 1 for w in pruned.site_widths_kept.values())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_torch_pruning_net_computes_the_masked_forward_of_its_channels(arch):
    bb, net, dense_macs = _dense(arch)
    pruned = magnitude_prune(net, 0.4, dense_macs)
    masks = {}
    for s in bb.sites():
        m = torch.ones(1, s.size)
        if s.kind == "utility":
            m.zero_()
            m[0, pruned.kept_channels[s.name]] = 1.0
        masks[s.name] = m
    assert any(len(k) < s.size for s in bb.sites() if s.kind == "utility" for k in [pruned.kept_channels[s.name]])
    x = torch.rand(4, *SHAPES[arch])
    with torch.no_grad():
        want = bb(x, masks)[:, CLASSES]
        assert (pruned(x) - want).abs().max().item() <= 1e-4
    if arch == "resnet":  # every tensor summed into a stream lost the same channels: the widths say so
        w = pruned.site_widths_kept
        assert pruned.blocks[2].shortcut[0].out_channels == pruned.blocks[2].conv2[0].out_channels == w["stage1"]
        assert pruned.blocks[1].conv2[0].out_channels == pruned.stem[0].out_channels == w["stage0"]


def test_random_pruning_is_seeded():
    _, net, dense_macs = _dense("resnet")
    a = random_prune(net, 0.4, dense_macs, seed=1).kept_channels
    b = random_prune(net, 0.4, dense_macs, seed=1).kept_channels
    c = random_prune(net, 0.4, dense_macs, seed=2).kept_channels
    assert a == b and a != c


def test_finetune_lowers_the_loss_and_reports_its_cost():
    _, net, dense_macs = _dense("resnet")
    pruned = magnitude_prune(net, 0.5, dense_macs)
    g = torch.Generator().manual_seed(0)
    y = torch.tensor(CLASSES * 32)
    x = (torch.rand(len(y), 1, 12, 12, generator=g) * 60).to(torch.uint8)
    x[y == 2, :, :6] += 150  # learnable: class 2 bright on top, class 5 bright at the bottom
    x[y == 5, :, 6:] += 150
    r = finetune(pruned, x, y, CLASSES, steps=30, lr=0.05, batch_size=32, crop_padding=0, hflip=False)
    assert r["steps"] == 30 and r["wall_s"] > 0
    assert sum(r["loss"][-5:]) / 5 < sum(r["loss"][:5]) / 5
    with pytest.raises(ValueError, match="no training image"):
        finetune(pruned, x, torch.full_like(y, 9), CLASSES, steps=1)
