"""Fine-tuning a class set's plain net with the hypernetwork's objective: what the per-subset peer trains with, and
the accurate path beside the fast one (`finetune_subnet`: the hypernetwork's net for a class set, then N SGD
steps on the model's own training images, BN recalibrated, folded for export).

- `subset_loss`: sigmoid BCE over the class set's logits on images of every class (other classes' images are
  negatives), the subset's own images weighing β as in joint training;
- `finetune`: `steps` SGD steps of it on a plain net, in place;
- `recalibrate_bn`: exact BN statistics of a plain net on calibration batches;
- `finetune_subnet`: the three together on a PruningEngine's net for a request.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..data.datasets import Augmentation, to_float
from ..prune.stats import recalibrate
from .optim import sgd_steps

FINETUNE_LR = 0.01  # the per-subset peer's fine-tuning rate (research.ablate, the glyph study)


def recalibrate_bn(net: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Recompute a plain net's BN statistics exactly (momentum=None) on calibration batches, in place."""
    from ..prune.stats import set_bn_stats

    set_bn_stats(net, recalibrate(net, net, batches))  # recalibrate refuses a net without BN
    return net.eval()


def subset_targets(labels: Tensor, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(cls, pos): the subset's classes ascending, and each label's position among them (-1: not in the subset,
    an image that must fire no logit of the subset's net)."""
    cls = torch.tensor(sorted(int(c) for c in classes))
    pos = torch.searchsorted(cls, labels).clamp(max=len(cls) - 1)
    return cls, torch.where(cls[pos] == labels, pos, torch.full_like(pos, -1))


def subset_loss(net: nn.Module, images: Tensor, labels: Tensor, classes: Sequence[int], beta: float = 1.0,
                augmentation: Augmentation = Augmentation()) -> Callable[[Tensor, torch.Generator], Tensor]:
    """The hypernetwork's objective on a |T|-logit net: sigmoid BCE over the subset's logits, summed over them,
    on images of every class (other classes' images are negatives: every logit's target is 0). The subset's
    own images weigh `beta` (losses.subtask_weighted_bce weighs the subtask's classes so; on a net whose logits
    are all the subtask's, that weight moves to the positive images). Returns batch_loss(indices, generator)."""
    from ..nn.losses import head_bce

    _, pos = subset_targets(labels, classes)
    if not bool((pos >= 0).any()):
        raise ValueError("no training image has a label in the subset")

    device = next(net.parameters()).device

    def batch_loss(idx: Tensor, gen: torch.Generator) -> Tensor:
        xb = augmentation(to_float(images[idx]), gen)  # on the CPU, where the generator is
        return head_bce(net(xb.to(device)), pos[idx].to(device), beta)

    return batch_loss


def finetune(net: nn.Module, images: Tensor, labels: Tensor, classes: Sequence[int], steps: int,
             lr: float = FINETUNE_LR, batch_size: int = 128, seed: int = 0,
             augmentation: Augmentation = Augmentation(), beta: float = 1.0, schedule: str = "cosine",
             log: Optional[Callable[[str], None]] = None) -> dict:
    """Fine-tune a plain net of `classes` (its logits in ascending class order) for `steps` SGD steps with the
    hypernetwork's objective (subset_loss: BCE, every training image, other classes' as negatives), in place.
    Single classes train too. Returns {"steps", "images_seen", "wall_s", "loss"}."""
    fn = subset_loss(net, images, labels, classes, beta, augmentation)
    out = sgd_steps(net, fn, len(images), steps, lr, batch_size, seed, schedule=schedule)
    if log is not None and steps:
        log(f"fine-tuned {steps} steps in {out['wall_s']:.1f} s, loss {out['loss'][0]:.4f} -> {out['loss'][-1]:.4f}")
    return out


def finetune_subnet(engine, classes, steps: int, lr: float = FINETUNE_LR, batch_size: int = 128,
                    seed: Optional[int] = None, fold_bn: bool = True, log: Optional[Callable[[str], None]] = None,
                    **subnet_kwargs) -> nn.Module:
    """The hypernetwork's plain net for `classes` (engine.subnet: a request in words, names or indices; `budget`,
    `round_to`, `round_mode`, `text`, `guard` pass through), then `steps` SGD steps with the hypernetwork's
    objective (subset_loss, the model's loss.beta, its augmentation) on the engine's labelled training images,
    BN recalibrated exactly on them, and BN folded (fold_bn). The net's `finetuned` records the steps, rate,
    seconds and the first and last loss; every other attribute of the subnet (classes, budget, grounding) stays.

    The fast path is the hypernetwork's net alone (about a second); this one pays the steps (about 15 s for
    200 on a 2-core CPU) for accuracy: docs/RESULTS.md measures both against per-subset pruning."""
    from ..prune.surgery import fold_subnet_bn

    if steps < 1:
        raise ValueError(f"fine-tuning steps must be at least 1, got {steps}; without fine-tuning use engine.subnet")
    if lr <= 0:
        raise ValueError(f"the fine-tuning learning rate must be positive, got {lr}")
    if subnet_kwargs.get("physical") is False:
        raise ValueError("a masked net (physical=False) cannot be fine-tuned: the steps would revive its zeroed "
                         "channels; fine-tune the pruned net")
    seed = engine.seed if seed is None else seed
    t0 = time.perf_counter()
    net = engine.subnet(classes, fold_bn=False, seed=seed, **subnet_kwargs)
    built = time.perf_counter() - t0
    x = engine.images()
    data = engine.labelled_images(len(x), seed)
    if data is None:
        raise ValueError("fine-tuning needs labelled training images; the engine's calibration images carry no "
                         "labels (images= given without labels=): pass labels=, or let the engine read the model's "
                         "training split")
    x, y = data
    subtask = [engine.model.classes.index(c) for c in net.classes]
    cfg = engine.model.config
    fit = finetune(net, x, y, subtask, steps, lr=lr, batch_size=batch_size, seed=seed, beta=cfg.loss.beta,
                   augmentation=Augmentation.of(cfg.data), log=log)
    device = next(net.parameters()).device
    recalibrate_bn(net, engine.calib_spec(seed).stream(x, device))
    if fold_bn:
        net = fold_subnet_bn(net, engine.model.backbone)
    net.finetuned = {"steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed,
                     "build_s": built, "finetune_s": fit["wall_s"], "loss": [fit["loss"][0], fit["loss"][-1]]}
    return net.eval()
