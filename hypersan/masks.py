"""Straight-through binarization of utilities, the keep rule, and max / MaxAbs combination."""
from __future__ import annotations

import torch
from torch import Tensor


class _SigmoidSTE(torch.autograd.Function):
    """Forward: hard 0/1 from a precomputed decision. Backward: the gradient of a sigmoid around the threshold."""

    @staticmethod
    def forward(ctx, u: Tensor, hard: Tensor, threshold: float, temp: float) -> Tensor:
        ctx.save_for_backward(u)
        ctx.threshold, ctx.temp = threshold, temp
        return hard.to(u.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (u,) = ctx.saved_tensors
        s = torch.sigmoid((u - ctx.threshold) / ctx.temp)
        # bounded surrogate (max 1/(4*temp)): useful channels cannot push their utility up without limit
        return grad * s * (1 - s) / ctx.temp, None, None, None


def keep_decision(u: Tensor, threshold: float, min_keep: int) -> Tensor:
    """Hard keep decision (bool, same shape as u (B, C)): u > threshold, plus the top `min_keep` per row."""
    k = min(min_keep, u.shape[-1])
    kth = u.topk(k, dim=-1).values[..., -1:]  # (B, 1): the k-th largest utility of each row
    return (u > threshold) | (u >= kth)


def binarize(u: Tensor, threshold: float, temp: float, min_keep: int = 1) -> Tensor:
    """Hard 0/1 mask of non-negative utilities u (B, C), differentiable through a sigmoid surrogate."""
    return _SigmoidSTE.apply(u, keep_decision(u.detach(), threshold, min_keep), threshold, temp)


def combine_max(values: Tensor, select: Tensor) -> Tensor:
    """Elementwise max of values (K, C) over the selected rows of each condition; select is (B, K) bool."""
    big = values.unsqueeze(0).expand(select.shape[0], -1, -1)  # (B, K, C)
    neg = torch.finfo(values.dtype).min
    return big.masked_fill(~select[:, :, None], neg).max(dim=1).values  # (B, C)


def combine_maxabs(values: Tensor, select: Tensor) -> Tensor:
    """Elementwise value of largest magnitude (sign kept) over the selected rows; select is (B, K) bool."""
    big = values.unsqueeze(0).expand(select.shape[0], -1, -1)  # (B, K, C)
    mag = big.abs().masked_fill(~select[:, :, None], -1.0)
    idx = mag.argmax(dim=1, keepdim=True)  # (B, 1, C)
    return big.gather(1, idx).squeeze(1)
