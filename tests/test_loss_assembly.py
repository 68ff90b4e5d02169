"""How train() assembles its loss: subtask-weighted BCE from the sampled subtask, per-sample gamma, dense share."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import hypersan.training.train
from hypersan.config import load_config
from hypersan.data.datasets import FASHION_MNIST
from hypersan.nn.model import SubtaskAdaptiveNet
from hypersan.training.train import masked_loss, train

from .conftest import ROOT, needs_fmnist

C = len(FASHION_MNIST.classes)


def _setup(*extra, info=FASHION_MNIST):
    """A tiny model in training mode, its config and the (K, C) basic-to-class matrix train() builds."""
    cfg = load_config(ROOT / "configs" / "tiny.toml", list(extra))
    torch.manual_seed(0)
    model = SubtaskAdaptiveNet(cfg, info).train()
    b2c = torch.zeros(len(model.basic), C)
    for k, b in enumerate(model.basic):
        b2c[k, list(b)] = 1.0
    return model, cfg, b2c


def _select(model, subtasks):
    return model.select([tuple(t) for t in subtasks])


def _hand_bce(logits, labels, in_task, beta, soft=None, distill=0.0):
    """Per-sample BCE by hand: weight beta on in-task classes, 1 elsewhere, over alpha = (C + (beta-1)|T|) / C.
    soft: teacher probabilities, mixed into the targets with weight distill."""
    out = []
    for i in range(len(labels)):
        total = 0.0
        for c in range(C):
            z, t = logits[i, c].item(), 1.0 if c == labels[i] else 0.0
            if soft is not None:
                t = (1 - distill) * t + distill * soft[i][c]
            bce = F.softplus(torch.tensor(z, dtype=torch.float64)).item() - t * z  # -log sigmoid terms
            total += (beta if in_task[i][c] else 1.0) * bce
        out.append(total / ((C + (beta - 1.0) * sum(in_task[i])) / C))
    return out


def _hand_utility(raw, sites):
    """Mean utility of each sample over every utility channel, by hand."""
    util = [s for s in sites if s.kind == "utility"]
    n = sum(s.size for s in util)
    return [sum(raw[s.name][i].sum().item() for s in util) / n for i in range(raw[util[0].name].shape[0])]


def _forward(model, x, select):
    """Logits and raw utilities of a masked batch, recomputed outside masked_loss."""
    with torch.no_grad():
        masks, raw = model.generate(select)
        return model.backbone(x, masks), raw


def test_in_task_weight_comes_from_the_sampled_subtask_not_the_label():
    model, cfg, b2c = _setup()
    beta, gamma = cfg.loss.beta, cfg.loss.gamma
    assert beta != 1.0 and cfg.loss.gamma_size == "constant"
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 5, 9])
    subtasks = [(1, 2), (3, 4), (7,), (2, 6, 8)]  # labels 0, 5 and 9 lie outside their sample's subtask
    sel = _select(model, subtasks)
    loss, masks, raw, per_sample = masked_loss(model, x, y, sel, None, cfg, b2c)
    logits, raw_again = _forward(model, x, sel)
    util = _hand_utility(raw_again, model.sites)
    assert per_sample.tolist() == pytest.approx(util, rel=1e-5)
    assert set(masks) == {s.name for s in model.sites} and set(raw) == set(masks)

    def total(in_task):
        bce = _hand_bce(logits, y.tolist(), in_task, beta)
        return sum(bce) / len(bce) + sum(gamma * u for u in util) / len(util)

    by_subtask = [[c in t for c in range(C)] for t in subtasks]
    by_label = [[c == int(lab) for c in range(C)] for lab in y]
    by_both = [[a or b for a, b in zip(r, s)] for r, s in zip(by_subtask, by_label)]
    want = total(by_subtask)
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    # the label-based weightings give other losses, by far more than the tolerance above
    assert abs(total(by_label) - want) > 1e-2 and abs(total(by_both) - want) > 1e-2


def test_in_task_classes_are_those_of_the_selected_group():
    groups = {"tops": ["T-shirt/top", "Pullover", "Coat", "Shirt"], "bottoms": ["Trouser", "Dress"],
              "footwear": ["Sandal", "Sneaker", "Ankle boot"], "bags": ["Bag"]}  # a partition of the classes
    info = dataclasses.replace(FASHION_MNIST, groups=groups)
    model, cfg, b2c = _setup('data.basic_subtasks="groups"', "loss.beta=8.0", info=info)
    assert len(model.basic) == 4
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 7])  # a top and a sneaker, both asked for the footwear group
    foot = model.basic.index((5, 7, 9))
    sel = torch.zeros(2, 4, dtype=torch.bool)
    sel[:, foot] = True
    loss, *_ = masked_loss(model, x, y, sel, None, cfg, b2c)
    logits, raw = _forward(model, x, sel)
    in_task = [[c in (5, 7, 9) for c in range(C)]] * 2
    util = _hand_utility(raw, model.sites)
    want = sum(_hand_bce(logits, y.tolist(), in_task, 8.0)) / 2 + cfg.loss.gamma * sum(util) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_linear_gamma_is_per_sample_by_subtask_size():
    gamma = 0.7  # large, so the sparsity term weighs in the total
    model, cfg, b2c = _setup(f"loss.gamma={gamma}", 'loss.gamma_size="linear"')
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 4])
    subtasks = [(1, 2), (0, 2, 3, 4, 5, 6, 9)]  # |T| = 2 and 7 of |C| = 10
    sel = _select(model, subtasks)
    loss, _, _, per_sample = masked_loss(model, x, y, sel, None, cfg, b2c)
    logits, raw = _forward(model, x, sel)
    util = _hand_utility(raw, model.sites)
    in_task = [[c in t for c in range(C)] for t in subtasks]
    bce = sum(_hand_bce(logits, y.tolist(), in_task, cfg.loss.beta)) / 2
    weights = [gamma * (C - 2) / (C - 1), gamma * (C - 7) / (C - 1)]
    want = bce + (weights[0] * util[0] + weights[1] * util[1]) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert abs(util[0] - util[1]) > 1e-3  # the samples differ, so a swap of their weights would show
    swapped = bce + (weights[1] * util[0] + weights[0] * util[1]) / 2
    constant = bce + gamma * (util[0] + util[1]) / 2
    assert abs(swapped - want) > 1e-4 and abs(constant - want) > 1e-3


def test_in_place_distillation_takes_the_unmasked_net_as_teacher():
    model, cfg, b2c = _setup("loss.distill=0.4")
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([2, 5, 8])
    subtasks = [(1, 2), (5, 7), (0, 8, 9)]
    sel = _select(model, subtasks)
    with torch.no_grad():
        soft = torch.sigmoid(model.backbone(x)).tolist()  # the unmasked net, in training mode, on the same images
    loss, *_ = masked_loss(model, x, y, sel, None, cfg, b2c)
    logits, raw = _forward(model, x, sel)
    util = _hand_utility(raw, model.sites)
    in_task = [[c in t for c in range(C)] for t in subtasks]
    reg = cfg.loss.gamma * sum(util) / 3
    want = sum(_hand_bce(logits, y.tolist(), in_task, cfg.loss.beta, soft, 0.4)) / 3 + reg
    assert loss.item() == pytest.approx(want, rel=1e-5)
    hard = sum(_hand_bce(logits, y.tolist(), in_task, cfg.loss.beta)) / 3 + reg
    assert abs(hard - want) > 1e-3


# ------------------------------------------------------------------ the dense share, through train()


def _count_paths(monkeypatch):
    """Wrap train's dense and masked losses to count the batches that take each path."""
    counts = {"dense": 0, "masked": 0}
    real_dense, real_masked = hypersan.training.train.dense_loss, hypersan.training.train.masked_loss

    def dense(*a, **k):
        counts["dense"] += 1
        return real_dense(*a, **k)

    def masked(*a, **k):
        counts["masked"] += 1
        return real_masked(*a, **k)

    monkeypatch.setattr(hypersan.training.train, "dense_loss", dense)
    monkeypatch.setattr(hypersan.training.train, "masked_loss", masked)
    return counts


@needs_fmnist
@pytest.mark.parametrize("share", [1.0, 0.0])
def test_dense_share_decides_which_batches_run_masks(tmp_path, monkeypatch, share):
    # 384 training images in batches of 128: 3 steps
    cfg = load_config(ROOT / "configs" / "tiny.toml", ["data.train_limit=512", "data.val_size=128", "train.epochs=1",
                                                       "train.eval_every=0", f"subtasks.dense_share={share}"])
    torch.manual_seed(cfg.train.seed)  # train() seeds the same way before it builds its model: the same init
    init = SubtaskAdaptiveNet(cfg, FASHION_MNIST).state_dict()
    counts = _count_paths(monkeypatch)
    model = train(cfg, tmp_path / "run", log=lambda m: None)
    assert counts == ({"dense": 3, "masked": 0} if share == 1.0 else {"dense": 0, "masked": 3})
    after = model.state_dict()
    gen_moved = [k for k in after if k.startswith("generator.") and not torch.equal(after[k], init[k])]
    bb_moved = [k for k in after if k.startswith("backbone.") and not torch.equal(after[k], init[k])]
    assert bb_moved  # the backbone trains either way
    if share == 1.0:
        assert gen_moved == []  # no masks, no gradient to the generator: Adam leaves it exactly as initialized
        last = model.meta["history"][-1]  # no masked batch: no figure (null), never a 0 read as "nothing kept"
        assert last["kept_fraction"] is None and last["kept_mac_ratio"] is None and last["mean_utility"] is None
    else:
        assert gen_moved
        assert 0.0 < model.meta["history"][-1]["kept_fraction"] <= 1.0
