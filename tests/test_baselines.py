"""Per-subset pruning baselines: matched MACs, and a pruned net that computes what the masked backbone does."""
import math

import pytest
import torch

from hypersan.data.datasets import Augmentation
from hypersan.nn.backbones import build_backbone
from hypersan.prune.metrics import count_macs
from hypersan.prune.surgery import prune_backbone

from .test_surgery import ARCHS, _randomize

NO_AUGMENTATION = Augmentation(crop_padding=0, hflip=False)

tp = pytest.importorskip("torch_pruning")

from hypersan.research.baselines import finetune, magnitude_prune, random_prune  # noqa: E402

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
    r = finetune(pruned, x, y, CLASSES, steps=30, lr=0.05, batch_size=32, augmentation=NO_AUGMENTATION)
    assert r["steps"] == 30 and r["wall_s"] > 0
    assert sum(r["loss"][-5:]) / 5 < sum(r["loss"][:5]) / 5
    with pytest.raises(ValueError, match="no training image"):
        finetune(pruned, x, torch.full_like(y, 9), CLASSES, steps=1)


def _learnable(n=64, seed=0):
    """uint8 12x12 images of classes 0..5 whose class is written in a bright band (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(6).repeat(n // 6 + 1)[:n]
    x = (torch.rand(n, 1, 12, 12, generator=g) * 60).to(torch.uint8)
    for c in range(6):
        x[y == c, :, 2 * c:2 * c + 2] += 150
    return x, y


def test_finetune_trains_a_single_class_against_other_classes_images():
    from hypersan.prune.surgery import prune_backbone

    torch.manual_seed(0)
    bb = _randomize(build_backbone(dict(ARCHS["resnet"], widths=[16, 24]))).eval()
    net = prune_backbone(bb, None, [2], input_shape=SHAPES["resnet"])  # one logit: softmax CE would be 0
    x, y = _learnable()
    r = finetune(net, x, y, [2], steps=40, lr=0.05, batch_size=32, augmentation=NO_AUGMENTATION)
    assert min(r["loss"]) > 0  # a real loss: other classes' images are its negatives
    assert sum(r["loss"][-5:]) / 5 < 0.7 * sum(r["loss"][:5]) / 5
    assert r["images_seen"] == 40 * 32


def test_subset_prune_sees_the_subset_and_meets_its_budget():
    from hypersan.research.baselines import subset_prune

    bb, _, dense_macs = _dense("resnet")
    x, y = _learnable(96)
    kept = {}
    for classes in ([0, 1], [4, 5]):
        net = prune_backbone(bb, None, classes, input_shape=SHAPES["resnet"])
        pruned = subset_prune(net, classes, x, y, 0.3, dense_macs, stages=2, stage_steps=2, batch_size=32,
                              augmentation=NO_AUGMENTATION)
        macs = count_macs(pruned, SHAPES["resnet"])
        assert macs == pruned.macs and macs <= 0.3 * dense_macs * 1.02  # never over budget
        assert macs >= 0.3 * dense_macs * 0.85
        assert all(len(k) >= 1 for k in pruned.kept_channels.values())
        assert pruned(torch.rand(2, *SHAPES["resnet"])).shape == (2, 2)
        assert pruned.prune_log["images_seen"] > 0
        kept[tuple(classes)] = pruned.kept_channels
    # Taylor importance on the subset's loss: another class set keeps other channels
    assert kept[(0, 1)] != kept[(4, 5)]


def test_head_bce_has_negatives_and_weighs_positives():
    from hypersan.nn.losses import head_bce

    logits = torch.zeros(2, 1)
    # a positive and a negative at logit 0: each log 2
    assert head_bce(logits, torch.tensor([0, -1])).item() == pytest.approx(math.log(2))
    z = torch.tensor([[3.0], [3.0]])  # right on the positive, wrong on the negative
    lo, hi = head_bce(z, torch.tensor([0, -1]), beta=1.0), head_bce(z, torch.tensor([0, -1]), beta=4.0)
    assert hi < lo  # beta moves the balance towards the subset's own images


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_width_search_counts_macs_as_the_flop_counter_does(arch):
    import random

    from hypersan.research.baselines import _macs_of
    from hypersan.prune.metrics import subnet_cost

    a = build_backbone(dict(ARCHS[arch], widths=[16, 24])).arch
    rng = random.Random(0)
    for _ in range(4):
        w = {s: rng.randint(1, n) for s, n in a["site_widths"].items()}
        with torch.device("meta"):
            want = subnet_cost(a, w, a["num_classes"], SHAPES[arch])[0]
        assert _macs_of(a, w, SHAPES[arch]) == want
