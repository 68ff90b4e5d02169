"""Subtask-weighted BCE, the utility sparsity term, and the budget term of budget-conditioned training."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import GAMMA_SIZE_MODES


def subtask_weighted_bce(logits: Tensor, labels: Tensor, in_task: Tensor, beta: float,
                         teacher: Tensor | None = None, distill: float = 0.0, reduce: bool = True) -> Tensor:
    """Mean over samples of the class-summed BCE with weight beta on the sample's subtask classes and 1
    elsewhere, divided by alpha = (|C| + (beta - 1)|T|) / |C|, so it keeps the scale of the unweighted sum.
    logits, in_task: (B, C); labels: (B,).
    teacher (B, C): logits of a teacher (in-place distillation: the unmasked net on the same images); the
    targets become (1 - distill) x one-hot + distill x sigmoid(teacher).
    reduce=False: each sample's loss (B,) instead of their mean."""
    num_classes = logits.shape[1]
    target = F.one_hot(labels, num_classes).to(logits.dtype)
    if teacher is not None and distill > 0:
        target = (1.0 - distill) * target + distill * torch.sigmoid(teacher.to(logits.dtype))
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, C)
    w = 1.0 + (beta - 1.0) * in_task.to(logits.dtype)
    alpha = (num_classes + (beta - 1.0) * in_task.sum(dim=1).to(logits.dtype)) / num_classes  # (B,)
    each = (w * per).sum(dim=1) / alpha
    return each.mean() if reduce else each


def sparsity_weights(task_sizes: Tensor, num_classes: int, gamma: float, mode: str) -> Tensor:
    """Per-sample weight of the utility L1 term: gamma, or (mode "linear") gamma * (|C| - |T|) / (|C| - 1),
    so that larger subtasks are pushed less hard towards small networks, or (mode "quadratic") gamma times the
    square of that fraction: a stronger size dependence, which spares large subtasks more than small ones."""
    if mode not in GAMMA_SIZE_MODES:
        raise ValueError(f"gamma_size mode {mode!r}; choose one of {', '.join(GAMMA_SIZE_MODES)}")
    if mode == "constant" or num_classes == 1:
        return torch.full_like(task_sizes, gamma, dtype=torch.float32)
    share = (num_classes - task_sizes.float()) / (num_classes - 1)
    return gamma * (share if mode == "linear" else share * share)


def head_bce(logits: Tensor, positions: Tensor, beta: float = 1.0) -> Tensor:
    """BCE of a net whose logits are all one subtask's classes: `positions` (B,) is each image's class among the
    logits, or -1 for an image of another class (a negative: every target 0). The class-summed loss of an image of
    the subtask weighs `beta`, as subtask_weighted_bce weighs the subtask's classes; the mean over the batch is
    divided by the mean weight, so beta shifts the balance and not the scale."""
    target = torch.zeros_like(logits)
    pos = positions >= 0
    target[pos, positions[pos]] = 1.0
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1)
    w = torch.where(pos, torch.full_like(per, beta), torch.ones_like(per))
    return (w * per).sum() / w.sum()


def sample_budgets(n: int, gen: torch.Generator, b_min: float, free_share: float) -> Tensor:
    """n training budgets: 1 (no limit) with probability free_share, else log-uniform in [b_min, 1]."""
    u = torch.rand(n, generator=gen)
    free = torch.rand(n, generator=gen) < free_share
    return torch.where(free, torch.ones(n), torch.exp(u * math.log(b_min)))


MONOTONE_RATIO_MAX = 3.0  # the larger budget of a monotony pair is b x r, r log-uniform in [1, 3], at most 1


def larger_budgets(budgets: Tensor, gen: torch.Generator) -> Tensor:
    """For each training budget b, a larger one min(1, b r) with r log-uniform in [1, MONOTONE_RATIO_MAX]: the
    partner of b in the monotony hinge. Evaluation budgets a user steps through (0.08, 0.12, 0.2, 0.3, 0.5) are
    1.5 to 1.7 apart; the range covers such steps and a few of them at once."""
    r = torch.exp(torch.rand(len(budgets), generator=gen) * math.log(MONOTONE_RATIO_MAX))
    return torch.clamp(budgets * r.to(budgets.device), max=1.0)


def monotone_hinge(smaller: Tensor, larger: Tensor) -> Tensor:
    """Per-sample hinge (B,) on a loss that rises with the budget: max(0, loss at the larger budget - loss at the
    smaller one), with the smaller budget's loss a fixed target (no gradient): the larger net is pushed to do at
    least as well on each image, never the smaller one to do worse."""
    return torch.relu(larger - smaller.detach())


def agreement(a: Tensor, b: Tensor, in_task: Tensor) -> Tensor:
    """Per-sample symmetric KL (B,) between two runs' class distributions over each sample's subtask classes:
    softmax of the logits a and b (B, C) with the classes outside the subtask left out, since a subnet predicts
    the arg max over its own classes. Both runs get gradients: the nets of two budgets are pulled towards the
    same predictions, so that a larger budget has fewer images to decide differently. 0 when they agree."""
    far = -1e4  # not -inf: 0 x inf would make the left-out classes' terms nan
    la = torch.log_softmax(a.float().masked_fill(~in_task, far), dim=1)
    lb = torch.log_softmax(b.float().masked_fill(~in_task, far), dim=1)
    return 0.5 * ((la.exp() - lb.exp()) * (la - lb)).sum(dim=1)


def budget_loss(ratio: Tensor, budgets: Tensor, over: float, under: float) -> Tensor:
    """Per-sample budget term (B,): `over` x the relative excess max(0, r / b - 1), plus `under` x the relative
    shortfall max(0, 1 - r / b). Relative, so that a 0.05 budget is held as firmly as a 0.5 one; the pull from
    below is weaker, so that spare budget is spent where the task loss says it buys accuracy."""
    rel = ratio / budgets
    return over * torch.relu(rel - 1) + under * torch.relu(1 - rel)
