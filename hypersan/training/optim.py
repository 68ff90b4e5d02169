"""Learning-rate schedule, the one optimization step, and the SGD loop over a training subset: the trainer, the
baselines' fine-tuning and the scratch nets all step through `descend`."""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def descend(optimizers: Sequence[torch.optim.Optimizer], loss: Tensor,
            between: Optional[Callable[[], None]] = None) -> None:
    """One optimization step: clear every optimizer's gradients, backpropagate `loss`, run `between` (edits of
    gradients or buffers before the update), then step every optimizer."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    if between is not None:
        between()
    for opt in optimizers:
        opt.step()


def sgd_steps(net: nn.Module, batch_loss: Callable[[Tensor], Tensor], n_images: int, steps: int, lr: float,
              batch_size: int = 128, seed: int = 0, momentum: float = 0.9, weight_decay: float = 5e-4,
              schedule: str = "cosine", warmup: int = 0) -> dict:
    """The one SGD loop over a training subset: `steps` Nesterov steps, each on `batch_size` indices drawn
    uniformly (seeded) from range(n_images) and scored by batch_loss(indices, generator). The learning rate follows
    `schedule` ("cosine": decays to 0 over the steps after `warmup` linear warm-up steps; "constant").
    Trains in place; returns {"steps", "images_seen", "wall_s", "loss"}."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    t0 = time.perf_counter()
    net.train()
    losses = []
    for step in range(steps):
        if schedule == "cosine":
            for g in opt.param_groups:
                g["lr"] = lr * lr_factor(step, steps, warmup)
        idx = torch.randint(0, n_images, (min(batch_size, n_images),), generator=gen)
        loss = batch_loss(idx, gen)
        descend([opt], loss)
        losses.append(loss.item())
    net.eval()
    return {"steps": steps, "images_seen": steps * min(batch_size, n_images), "wall_s": time.perf_counter() - t0,
            "loss": losses}
