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


def keep_decision(u: Tensor, threshold: float, min_keep: int, multiple: int = 1) -> Tensor:
    """Hard keep decision (bool, same shape as u (B, C)): u > threshold, plus the top `min_keep` per row.

    "Top" is by (utility, lower index first): ties are broken by a stable sort, so a row whose utilities are
    tied (all zero, say) keeps exactly `min_keep` channels, the lowest indices, not every tied channel.

    With `multiple` > 1 each row keeps exactly its n' highest utilities: n' is the number of utilities above
    the threshold, rounded *down* to a multiple of `multiple`, at least `min_keep` rounded up to a multiple,
    and at most C (a site narrower than `multiple` keeps everything). Widths that are multiples of the
    hardware's channel block (16 for AVX-512 float convolutions) make a pruned net's latency follow its MACs.
    Rounding down keeps only channels above the threshold (bar the minimum). Rounding to the nearest
    multiple also kept channels below it; the task loss then pushed their utilities up through the
    surrogate gradient, and in training the counts ratcheted up to the full width.
    """
    width = u.shape[-1]
    k = min(min_keep, width)
    order = u.argsort(dim=-1, descending=True, stable=True)  # exact top-n, lower index first among ties
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(width, device=u.device).expand_as(order))
    if multiple <= 1:
        return (u > threshold) | (rank < k)
    n = (u > threshold).sum(dim=-1, keepdim=True)  # (B, 1)
    n = torch.div(n, multiple, rounding_mode="floor") * multiple
    n = n.clamp(min=-(-k // multiple) * multiple, max=width)  # never below min_keep, never past the site
    return rank < n


def binarize(u: Tensor, threshold: float, temp: float, min_keep: int = 1, multiple: int = 1) -> Tensor:
    """Hard 0/1 mask of non-negative utilities u (B, C), differentiable through a sigmoid surrogate."""
    return _SigmoidSTE.apply(u, keep_decision(u.detach(), threshold, min_keep, multiple), threshold, temp)


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
