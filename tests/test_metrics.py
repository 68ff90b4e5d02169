import pytest
import torch
from torch import nn

from hypersan.prune.metrics import average_precision, conv_macs, mean_average_precision, one_vs_rest_ap


def test_conv_macs_counts_convs_and_rounds_output_channels_up():
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 20, 1, stride=2))
    # 8x8 input: 64*9*3*5 for the 3x3 conv, 16*1*5*20 for the strided 1x1 conv
    assert conv_macs(net, (3, 8, 8)) == 64 * 9 * 3 * 5 + 16 * 5 * 20
    assert conv_macs(net, (3, 8, 8), block=16) == 64 * 9 * 3 * 16 + 16 * 5 * 32
    with pytest.raises(ValueError, match="block"):
        conv_macs(net, (3, 8, 8), block=0)


SCORES = torch.tensor([0.9, 0.5, 0.5, 0.5, 0.1, 0.5])
POSITIVES = torch.tensor([True, False, True, False, True, True])


def test_average_precision_by_hand_with_ties():
    # ties="stable": the four tied 0.5s keep their input order (items 1, 2, 3, 5), so the ranking is
    # + - + - + + (item 4 last): precisions 1/1, 2/3, 3/5, 4/6 at the positives
    assert average_precision(SCORES, POSITIVES) == pytest.approx((1 + 2 / 3 + 3 / 5 + 4 / 6) / 4, abs=1e-7)
    # ties="group": both tied positives get the precision at the end of their run (rank 5: 3/5)
    assert average_precision(SCORES, POSITIVES, ties="group") == pytest.approx((1 + 3 / 5 + 3 / 5 + 4 / 6) / 4,
                                                                               abs=1e-7)
    # only "group" is independent of the input order among ties
    perm = torch.tensor([0, 2, 5, 1, 3, 4])  # tied positives now listed first: + + + - - +
    assert average_precision(SCORES[perm], POSITIVES[perm]) == pytest.approx((1 + 1 + 1 + 4 / 6) / 4, abs=1e-7)
    assert average_precision(SCORES[perm], POSITIVES[perm], ties="group") == pytest.approx(
        average_precision(SCORES, POSITIVES, ties="group"), abs=1e-7)
    # without ties both rules agree
    distinct = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1, 0.5])
    assert average_precision(distinct, POSITIVES) == average_precision(distinct, POSITIVES, ties="group")


def test_average_precision_errors():
    with pytest.raises(ValueError, match="at least one positive"):
        average_precision(SCORES, torch.zeros(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="same length"):
        average_precision(SCORES, POSITIVES[:5])
    with pytest.raises(ValueError, match="ties = 'random'"):
        average_precision(SCORES, POSITIVES, ties="random")


# 4 samples (labels 0, 1, 2, 0), 3 classes
LOGITS = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.5, 0.3, 0.7], [0.4, 0.2, 0.8]])
LABELS = torch.tensor([0, 1, 2, 0])


def test_one_vs_rest_and_mean_average_precision_by_hand():
    # class 0 ranks samples 0(+) 2(-) 3(+) 1(-): (1 + 2/3) / 2; class 1 ranks its only positive first;
    # class 2 ranks sample 3 (a negative) above its positive, sample 2: 1/2
    assert one_vs_rest_ap(LOGITS, LABELS, 0) == pytest.approx(5 / 6)
    assert one_vs_rest_ap(LOGITS, LABELS, 1) == pytest.approx(1.0)
    assert one_vs_rest_ap(LOGITS, LABELS, 2) == pytest.approx(0.5)
    assert mean_average_precision(LOGITS, LABELS, [0, 1, 2]) == pytest.approx((5 / 6 + 1 + 0.5) / 3)
    assert mean_average_precision(LOGITS, LABELS, [0, 2]) == pytest.approx((5 / 6 + 0.5) / 2)


def test_one_vs_rest_ap_errors():
    with pytest.raises(ValueError, match=r"class 3 out of range 0\.\.2"):
        one_vs_rest_ap(LOGITS, LABELS, 3)
    with pytest.raises(ValueError, match="no sample has label 2"):
        one_vs_rest_ap(LOGITS, torch.tensor([0, 1, 1, 0]), 2)
    with pytest.raises(ValueError, match=r"logits must be \(N, C\)"):
        one_vs_rest_ap(LOGITS[:, 0], LABELS, 0)


# ------------------------------------------------------------------ counted cost = the pruned net's own count


@pytest.mark.parametrize("arch", ["resnet", "vgg"])
def test_subnet_cost_equals_the_pruned_nets_own_count(arch):
    from hypersan.prune.metrics import count_macs, count_params, subnet_cost
    from hypersan.prune.stats import bn_modules
    from hypersan.prune.surgery import prune_backbone

    from .test_surgery import _engine, _masks

    eng = _engine(arch)
    model, shape = eng.model, eng.model.info.input_shape
    widths = set()
    for t in [(3,), (1, 7, 8), None]:
        net = eng.subnet(t)  # BN kept: the layers engine.cost rebuilds from the widths
        widths.add(tuple(net.arch["site_widths"].values()))
        cost = eng.cost(net)
        assert (cost["macs"], cost["params"]) == (count_macs(net, shape), count_params(net)), t
        # a folded net has one conv bias per BN channel instead of a BN weight and bias, and BN is no
        # multiply-accumulate: the MACs agree, the parameters are fewer by exactly the BN channels
        folded = eng.subnet(t, fold_bn=True)
        bn = sum(m.num_features for m in bn_modules(net).values())
        assert count_macs(folded, shape) == cost["macs"] and count_params(folded) == cost["params"] - bn, t
    assert len(widths) >= 2  # the subtasks gave nets of different widths
    for seed in range(3):  # random masks straight through surgery, some sites left with a single channel
        masks = _masks(model.backbone, torch.Generator().manual_seed(seed))
        net = prune_backbone(model.backbone, masks, [2, 5])
        got = subnet_cost(model.backbone.arch, net.arch["site_widths"], 2, shape)
        assert got == (count_macs(net, shape), count_params(net)), seed
        assert got[0] < eng.dense_cost()[0]
