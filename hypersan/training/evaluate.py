"""Evaluation of a subtask-adaptive net: accuracy, mAP and compute per subtask, beside the dense net.

Every subtask is evaluated through its physically pruned net (BN folded), with statistics recalibrated
through that same pruned net: for its kept channels this is the computation a masked forward at dense
width does, at a fraction of the cost. The dense net's pass over the test set is done once.

Metrics, per subtask T:
- `acc`: |T|-way accuracy on the test images whose label is in T (argmax over T's logits). For a single
  class (|T| = 1) that would always be 1, so `acc` is then the one-vs-rest accuracy of the class's sigmoid
  (logit > 0 means "this class") over the whole test set; `dense_acc` is the same for the dense net.
- `map`: mean over T's classes of the average precision of each class's logit over the whole test set.
- `fp_rate`: on test images of classes outside T, the share where some output of the T-net fires
  (sigmoid > 0.5); `dense_fp_rate` is the same for the dense net's T outputs. None when T is every class.

A single class's decision threshold is calibrated per class set: the logit threshold that gets the most of a
seeded sample of labelled training images right (`calibrated_threshold`), for its net and for the dense net's
output alike; `acc` and `fp_rate` use it, `threshold` / `dense_threshold` record it and `acc_logit0` /
`dense_acc_logit0` give the figures at logit 0. Without labelled calibration images (the user's own) the
threshold stays 0.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from ..data.datasets import DatasetError
from ..info import few_names
from ..io import ArtifactError, atomic_save_tensors, load_tensors
from ..prune.stats import images_fingerprint
from ..prune.engine import PruningEngine
from ..prune.metrics import (mean_average_precision, out_of_subtask_false_positive_rate, plain_accuracy,  # noqa: F401
                             plain_accuracy_and_errors, plain_logits, subset_accuracy)
from ..data.subtasks import Subtask, sample_combinations


def one_vs_rest_accuracy(logits: Tensor, labels: Tensor, cls: int, threshold: float = 0.0) -> float:
    """Accuracy of "is it class cls?" by its logit above `threshold` (0: sigmoid > 0.5), over every sample."""
    return ((logits[:, cls] > threshold) == (labels == cls)).float().mean().item()


def calibrated_threshold(scores: Tensor, positives: Tensor) -> float:
    """The logit threshold that gets the most of these samples right as "positive when score > threshold": a
    midpoint between neighbouring scores (or just outside them); among equally good ones, the one nearest 0."""
    s, order = scores.float().sort()
    pos = positives[order].float()
    n = len(s)
    # cut k: the k lowest scores called negative. right(k) = negatives among them + positives above them
    neg_below = torch.cat([torch.zeros(1), torch.cumsum(1 - pos, 0)])
    pos_above = pos.sum() - torch.cat([torch.zeros(1), torch.cumsum(pos, 0)])
    right = neg_below + pos_above  # (n + 1,)
    cuts = torch.cat([s[:1] - 1, (s[:-1] + s[1:]) / 2, s[-1:] + 1]) if n else torch.zeros(1)
    valid = torch.ones(n + 1, dtype=torch.bool)
    valid[1:n] = s[:-1] < s[1:]  # no cut between equal scores
    best = right[valid].max()
    good = cuts[valid & (right == best)]
    return float(good[good.abs().argmin()])


def subtask_metrics(logits: Tensor, labels: Tensor, classes: Sequence[int], threshold: float = 0.0) -> dict:
    """acc and map of a subtask's classes from (N, num_classes) logits (see the module docstring). `threshold`: a
    single class's decision threshold on its logit (acc and fp_rate); 0 is sigmoid > 0.5."""
    cls = list(classes)
    if len(cls) == 1 and threshold:
        logits = logits.clone()
        logits[:, cls[0]] -= threshold
    acc = one_vs_rest_accuracy(logits, labels, cls[0]) if len(cls) == 1 else subset_accuracy(logits, labels, cls)
    outside = not bool(torch.isin(labels, torch.tensor(cls)).all())
    fp = out_of_subtask_false_positive_rate(logits[:, cls], labels, cls) if outside else None
    return {"acc": acc, "map": mean_average_precision(logits, labels, cls), "fp_rate": fp}


def parse_subtasks(model, specs: Sequence[str], seed: int = 0, per_size: int = 5) -> list[Subtask]:
    """Subtasks from specs: "Sneaker,Bag" (names or indices), "seen", "unseen", "all", "size=K[,n=M]".

    "seen" / "unseen" draw up to `per_size` combinations of every size that were / were not held out of
    training; nothing is ever enumerated, so this is fast for 100 classes too.
    """
    k = len(model.basic)
    out: list[Subtask] = []
    for spec in specs:
        s = spec.strip()
        m = re.fullmatch(r"size=(\d+)(?:,\s*n=(\d+))?", s)
        if m:
            size = int(m.group(1))
            if not 1 <= size <= k:
                raise ValueError(f"subtask spec {spec!r}: size must lie in 1..{k}")
            n = int(m.group(2)) if m.group(2) else None
            if n is not None and n < 1:
                raise ValueError(f"subtask spec {spec!r}: n must be a positive integer")
            out += [model.classes_of(b) for b in sample_combinations(k, size, n, seed)]
        elif s in ("seen", "unseen"):
            for size in range(1, k + 1):
                if s == "unseen" and not 2 <= size < k:
                    # the hashed fraction holds out sizes 2..K-1 only; explicit entries may have any size
                    out += [model.classes_of(b) for b in sorted(model.holdout.explicit) if len(b) == size]
                    continue
                basics = sample_combinations(k, size, per_size, seed, holdout=model.holdout, seen=(s == "seen"))
                out += [model.classes_of(b) for b in basics]
        elif s == "all":
            out.append(tuple(range(len(model.classes))))
        else:
            names = [c.strip() for c in re.split(r"[,;]", s)]
            if not any(names):
                raise ValueError(f"empty subtask spec {spec!r}; give class names or indices, e.g. \"Sneaker,Bag\"")
            if not all(names):
                raise ValueError(f"subtask spec {spec!r} has an empty class name between separators")
            out.append(model.resolve(int(c) if c.isdigit() else c for c in names))
    return list(dict.fromkeys(out))


def dense_logits_cached(engine: PruningEngine, dense, x: Tensor, seed: int, images: Optional[Tensor] = None,
                        cache_dir: Optional[str | Path] = None) -> tuple[Tensor, bool]:
    """(the dense net's logits on x, whether they came from the cache). The cache file is named by everything the
    logits depend on: the weights and BN statistics (the dense net's statistics key) and the images' bytes."""
    if cache_dir is None:
        return plain_logits(dense, x), False
    import hashlib

    key = f"{engine.key(None, seed=seed, images=images)}|{images_fingerprint(x)}|{tuple(x.shape)}"
    path = Path(cache_dir) / "dense-logits" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"
    if path.is_file():
        try:
            got = load_tensors(path)["logits"]
            if got.shape == (len(x), len(engine.model.classes)):
                return got, True
        except (ArtifactError, KeyError):
            pass  # unreadable: computed again and rewritten
    logits = plain_logits(dense, x)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path, {"logits": logits})
    except OSError:
        pass  # a cache that cannot be written costs time, never the result
    return logits, False


def evaluate(engine: PruningEngine, test_x: Tensor, test_y: Tensor, subtasks: Sequence[Subtask],
             progress: bool = True, seed: int = 0, images: Optional[Tensor] = None,
             log: Optional[Callable[[str], None]] = None, budgets: Optional[Sequence[float]] = None,
             guard: bool = False, threshold_images: int = 4096, cache_dir: Optional[str | Path] = None,
             round_to=None, round_mode: str = "up", finetune_steps: int = 0) -> dict:
    """Per-subtask acc / mAP / mac_ratio / param_ratio, beside the dense net restricted to each subtask.

    Statistics are recalibrated per subtask with `seed` on the engine's calibration images (or `images`).
    `log`, if given, gets one line per step (for logs off a terminal, where the progress bar is off).
    `budgets` (a budget-conditioned model): one entry per (subtask, budget), each with its "budget".
    `guard`: guarded requests (PruningEngine.guard); each entry also gets "guard", the decision.
    `threshold_images`: labelled training images a single class's threshold is calibrated on (0: logit 0).
    `cache_dir`: a folder where the dense net's logits on these images are kept (dense_logits_cached), so that the
    next evaluation of other class sets on the same data skips the dense pass.
    `round_to`, `round_mode`: the widths each net is built with (PruningEngine.round_multiple: None, as `subnet`
    builds it; `round_mode` as `subnet` takes it: up, or nearest).
    `finetune_steps`: each net fine-tuned so many steps first (training.finetune.finetune_subnet); each entry then
    records its "finetuned" steps and seconds.
    """
    t0 = time.perf_counter()
    model = engine.model
    info = model.info
    n_cls = len(info.classes)
    all_cls = list(range(n_cls))
    if len(test_y) == 0:
        raise ValueError("no evaluation images: the split is empty")
    present = set(torch.unique(test_y).tolist())
    absent = [c for c in all_cls if c not in present]  # a folder's val/ or test/ may lack a class
    lacking = sorted({c for t in subtasks for c in t if c not in present})
    if lacking:  # refused before any pass: such a class set has nothing to be scored on there
        raise ValueError(f"the {len(test_y):,} evaluation images hold no image of "
                         f"{few_names(repr(info.classes[c]) for c in lacking)}: a class set with "
                         f"{'it' if len(lacking) == 1 else 'them'} cannot be scored on them; add images of "
                         f"{'that class' if len(lacking) == 1 else 'those classes'} to the split, or ask for "
                         "class sets without them")
    dense = engine.subnet(None, fold_bn=True, seed=seed, images=images)
    dense_logits, hit = dense_logits_cached(engine, dense, test_x, seed, images, cache_dir)
    if log is not None:
        log(f"dense pass over {len(test_x):,} images: {time.perf_counter() - t0:.1f} s{' (cached)' if hit else ''}")
    d_cost = engine.cost(dense)
    result = {"dense": {"acc": subset_accuracy(dense_logits, test_y, all_cls),
                        "map": mean_average_precision(dense_logits, test_y, sorted(present)),
                        "macs": d_cost["macs"], "params": d_cost["params"]},
              "subtasks": [], "metric_notes": "single-class acc: one-vs-rest accuracy (logit > 0) on all test images"}
    if absent:  # the dense mAP averages the classes that have images here
        result["absent_classes"] = [info.classes[c] for c in absent]
    calib = None
    if threshold_images and any(len(t) == 1 for t in subtasks):
        try:
            calib = engine.labelled_images(threshold_images, seed)  # None where the images carry no labels
        except DatasetError:  # no training data here (statistics shipped with the model): logit 0
            calib = None
    if calib is not None:
        result["metric_notes"] = ("single-class acc: one-vs-rest accuracy on all test images at a logit threshold "
                                  "calibrated on labelled training images (acc_logit0: at logit 0)")
    calib_dense = None if calib is None else plain_logits(dense, calib[0])
    times = []
    jobs = [(t, b) for t in subtasks for b in (budgets if budgets else [None])]
    for t, b in tqdm(jobs, desc="subtasks", disable=not progress, leave=False):
        t1 = time.perf_counter()
        if finetune_steps:
            from .finetune import finetune_subnet

            net = finetune_subnet(engine, t, finetune_steps, seed=seed, budget=b, guard=guard, round_to=round_to,
                                  round_mode=round_mode)
        else:
            net = engine.subnet(t, fold_bn=True, seed=seed, images=images, budget=b, guard=guard, round_to=round_to,
                                round_mode=round_mode)
        logits = torch.full((len(test_x), n_cls), float("-inf"))
        logits[:, list(t)] = plain_logits(net, test_x)
        cost = engine.cost(net)
        single = {}
        th = th_dense = 0.0
        if len(t) == 1 and calib is not None:
            positives = calib[1] == t[0]
            th = calibrated_threshold(plain_logits(net, calib[0])[:, 0], positives)
            th_dense = calibrated_threshold(calib_dense[:, t[0]], positives)
            single = {"threshold": th, "dense_threshold": th_dense,
                      "acc_logit0": subtask_metrics(logits, test_y, t)["acc"],
                      "dense_acc_logit0": subtask_metrics(dense_logits, test_y, t)["acc"]}
        got, ref = subtask_metrics(logits, test_y, t, th), subtask_metrics(dense_logits, test_y, t, th_dense)
        result["subtasks"].append({
            "classes": [info.classes[i] for i in t], "indices": list(t), "size": len(t), "seen": model.is_seen(t),
            "acc": got["acc"], "dense_acc": ref["acc"], "map": got["map"], "dense_map": ref["map"],
            "fp_rate": got["fp_rate"], "dense_fp_rate": ref["fp_rate"],
            "mac_ratio": cost["mac_ratio"], "param_ratio": cost["param_ratio"],
            "macs": cost["macs"], "params": cost["params"],
            "widths": dict(net.arch["site_widths"]),
            **single,
            **({"budget": b} if budgets else {}),
            **({"guard": net.guard} if guard else {}),
            **({"finetuned": net.finetuned} if finetune_steps else {}),
        })
        times.append(time.perf_counter() - t1)
        if log is not None:
            log(f"[{len(times)}/{len(jobs)}] {','.join(info.classes[i] for i in t)}"
                f"{'' if b is None else f' at budget {b:g}'}: acc "
                f"{result['subtasks'][-1]['acc']:.4f}, MAC ratio {cost['mac_ratio']:.3f} ({times[-1]:.1f} s)")
    result["seconds"] = time.perf_counter() - t0
    result["seconds_per_subtask"] = sorted(times)[len(times) // 2] if times else None
    return result
