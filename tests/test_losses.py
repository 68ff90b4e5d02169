import math

import torch

from hypersan.losses import subtask_weighted_bce


def bce(z, y):
    p = 1 / (1 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_alpha_normalization_matches_hand_computation():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    labels = torch.tensor([2])
    in_task = torch.tensor([[False, True, True, False]])
    beta = 3.0
    terms = [bce(0.5, 0), beta * bce(-1.0, 0), beta * bce(2.0, 1), bce(0.0, 0)]
    alpha = (4 + (beta - 1) * 2) / 4
    expected = sum(terms) / alpha
    got = subtask_weighted_bce(logits, labels, in_task, beta).item()
    assert abs(got - expected) < 1e-6


def test_beta_one_is_plain_summed_bce():
    logits = torch.randn(5, 6)
    labels = torch.randint(0, 6, (5,))
    in_task = torch.rand(5, 6) > 0.5
    plain = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.nn.functional.one_hot(labels, 6).float(), reduction="sum") / 5
    assert torch.allclose(subtask_weighted_bce(logits, labels, in_task, 1.0), plain)
