"""Subtask-weighted BCE, the utility sparsity term, and the budget term of budget-conditioned training."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import GAMMA_SIZE_MODES


def subset_share_of_beta(beta: float, size: int, num_classes: int) -> float:
    """The share of a sample's loss that falls on its subtask's outputs under the beta weighting: beta |T| /
    (beta |T| + |C| - |T|). A pair among 135 classes at beta = 4 gets 8 / 141 = 5.7%; among 10 classes, 50%."""
    return beta * size / (beta * size + num_classes - size)


def output_weights(in_task: Tensor, beta: float, share: float = 0.0) -> Tensor:
    """Per-output BCE weights (B, C) that sum to |C| in every row, so the loss keeps the scale of the unweighted
    class sum. share = 0: the beta weighting (beta on the subtask's outputs, 1 elsewhere, rescaled). share in
    (0, 1]: the subtask's outputs carry `share` of the row's weight and the others 1 - share, whatever |T| and
    |C| (share = 1: outputs outside the subtask get no loss); beta is then not read. Both agree where share =
    subset_share_of_beta(beta, |T|, |C|). A row whose subtask is every class weighs each output 1."""
    t = in_task.to(torch.float32)
    num_classes = t.shape[1]
    size = t.sum(dim=1, keepdim=True)  # (B, 1)
    if share <= 0:
        w = 1.0 + (beta - 1.0) * t
        return w * num_classes / (num_classes + (beta - 1.0) * size)
    rest = (num_classes - size).clamp(min=1.0)
    w_in = torch.where(size < num_classes, share * num_classes / size, torch.ones_like(size))
    w_out = (1.0 - share) * num_classes / rest
    return t * w_in + (1.0 - t) * w_out


def subset_kl(student: Tensor, teacher: Tensor, in_task: Tensor) -> Tensor:
    """Per-sample KL (B,) from the teacher's class distribution to the student's, both a softmax over the
    sample's subtask classes alone (what a subnet's arg max decides among): in-place distillation restricted to
    the subset."""
    far = -1e4  # not -inf: 0 x inf would make the left-out classes' terms nan
    ls = torch.log_softmax(student.float().masked_fill(~in_task, far), dim=1)
    lt = torch.log_softmax(teacher.float().masked_fill(~in_task, far), dim=1)
    return (lt.exp() * (lt - ls)).masked_fill(~in_task, 0.0).sum(dim=1)


def subtask_weighted_bce(logits: Tensor, labels: Tensor, in_task: Tensor, beta: float,
                         teacher: Tensor | None = None, distill: float = 0.0, reduce: bool = True,
                         share: float = 0.0, distill_over: str = "all", size_power: float = 0.0) -> Tensor:
    """Mean over samples of the class-summed BCE weighted per output (`output_weights`: beta on the sample's
    subtask classes and 1 elsewhere, rescaled to the unweighted sum's scale; or, with share > 0, the subtask's
    outputs carrying that share of the loss). logits, in_task: (B, C); labels: (B,). A sample whose label is
    outside its subtask is a negative there: its subtask's outputs have target 0.
    teacher (B, C): logits of a teacher (in-place distillation: the unmasked net on the same images).
    distill_over = "all": the targets become (1 - distill) x one-hot + distill x sigmoid(teacher);
    "subset": the loss becomes (1 - distill) x BCE + distill x |C| x the KL between the teacher's and the
    student's softmax over the subtask's classes (`subset_kl`; |C| puts it on the BCE's class-summed scale).
    size_power p: each sample's loss is scaled by (|T| / |C|)^p. At p = 0 every class set's loss has one scale,
    so a pair's two outputs weigh as much as all |C| outputs of the all-classes request, and the sparsity term
    (the same per sample) sizes every class set's net alike. At p = 1 with share = 1 each of the subtask's
    outputs weighs 1: a class set's loss is what its own outputs cost, and the same gamma buys a small class set's
    net fewer channels than a large one's.
    reduce=False: each sample's loss (B,) instead of their mean."""
    num_classes = logits.shape[1]
    target = F.one_hot(labels, num_classes).to(logits.dtype)
    mix = teacher is not None and distill > 0
    if mix and distill_over == "all":
        target = (1.0 - distill) * target + distill * torch.sigmoid(teacher.to(logits.dtype))
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, C)
    each = (output_weights(in_task, beta, share).to(logits.dtype) * per).sum(dim=1)
    if mix and distill_over == "subset":
        each = (1.0 - distill) * each + distill * num_classes * subset_kl(logits, teacher, in_task)
    if size_power > 0:
        each = each * (in_task.sum(dim=1).to(each.dtype) / num_classes) ** size_power
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
