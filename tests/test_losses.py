import math

import pytest
import torch

from hypersan.nn.losses import sparsity_weights, subtask_weighted_bce


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


def test_distillation_mixes_the_teacher_into_the_targets():
    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    labels = torch.randint(0, 6, (5,), generator=g)
    in_task = torch.rand(5, 6, generator=g) > 0.5
    hard = subtask_weighted_bce(logits, labels, in_task, 3.0)
    assert torch.equal(subtask_weighted_bce(logits, labels, in_task, 3.0, teacher, 0.0), hard)
    mixed = 0.7 * torch.nn.functional.one_hot(labels, 6).float() + 0.3 * torch.sigmoid(teacher)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, mixed, reduction="sum") / 5
    assert torch.allclose(subtask_weighted_bce(logits, labels, in_task, 1.0, teacher, 0.3), plain)
    assert abs(subtask_weighted_bce(logits, labels, in_task, 3.0, teacher, 0.3).item() - hard.item()) > 1e-3


def test_sparsity_weights_linear_and_constant():
    sizes = torch.tensor([1, 4, 10])
    linear = sparsity_weights(sizes, 10, 0.05, "linear")
    # gamma * (|C| - |T|) / (|C| - 1): full gamma for one class, none for every class, 6/9 of it for four
    assert torch.allclose(linear, torch.tensor([0.05, 0.05 * 6 / 9, 0.0]))
    assert torch.equal(sparsity_weights(sizes, 10, 0.05, "constant"), torch.full((3,), 0.05))
    assert torch.equal(sparsity_weights(torch.tensor([1]), 1, 0.05, "linear"), torch.tensor([0.05]))
    quadratic = sparsity_weights(sizes, 10, 0.05, "quadratic")
    assert torch.allclose(quadratic, torch.tensor([0.05, 0.05 * (6 / 9) ** 2, 0.0]))  # large subtasks spared more
    with pytest.raises(ValueError, match="gamma_size mode 'cubic'"):
        sparsity_weights(sizes, 10, 0.05, "cubic")
