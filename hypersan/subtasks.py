"""Canonical subtasks, per-sample subtask sampling and holdout splits."""
from __future__ import annotations

import hashlib
import itertools
from typing import Iterable, Sequence

import torch

Subtask = tuple[int, ...]  # canonical: sorted, deduplicated basic-subtask (or class) indices


def canonical(items: Iterable[int]) -> Subtask:
    """Sorted, deduplicated tuple: the cache key of a combined subtask."""
    out = tuple(sorted({int(i) for i in items}))
    if not out:
        raise ValueError("a subtask needs at least one class")
    return out


def hashed_holdout(combo: Subtask, fraction: float, seed: int) -> bool:
    """Whether a combination falls in the seeded holdout fraction (stable across runs and machines)."""
    if fraction <= 0:
        return False
    h = hashlib.blake2b(f"{seed}:{','.join(map(str, combo))}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64 < fraction


class Holdout:
    """Combinations never sampled in training: an explicit list plus a seeded fraction of sizes 2..K-1."""

    def __init__(self, num_basic: int, explicit: Iterable[Subtask] = (), fraction: float = 0.0, seed: int = 0):
        self.num_basic = num_basic
        self.explicit = {canonical(c) for c in explicit}
        self.fraction = fraction
        self.seed = seed

    def __contains__(self, combo: Subtask) -> bool:
        if combo in self.explicit:
            return True
        return 2 <= len(combo) < self.num_basic and hashed_holdout(combo, self.fraction, self.seed)

    def listing(self, max_size: int | None = None) -> list[Subtask]:
        """All held-out combinations (enumerated up to max_size; every size when K is small)."""
        k = self.num_basic
        top = min(k - 1, max_size or (k - 1 if k <= 14 else 3))
        found = set(self.explicit)
        if self.fraction > 0:
            for n in range(2, top + 1):
                found.update(c for c in itertools.combinations(range(k), n) if c in self)
        return sorted(found, key=lambda c: (len(c), c))

    def to_dict(self) -> dict:
        return {"explicit": [list(c) for c in sorted(self.explicit)], "fraction": self.fraction, "seed": self.seed,
                "combinations": [list(c) for c in self.listing()]}


class SubtaskSampler:
    """Draws one combined subtask per sample: size from a distribution, own basic subtask with some probability."""

    def __init__(self, num_basic: int, class_to_basic: Sequence[int], size_weights: Sequence[float],
                 include_own: float, holdout: Holdout):
        w = torch.tensor(list(size_weights)[:num_basic], dtype=torch.float64)
        if w.sum() <= 0:
            raise ValueError("size_weights give zero probability to every size that fits the basic subtasks")
        self.size_probs = w / w.sum()
        self.num_basic = num_basic
        self.class_to_basic = torch.tensor(list(class_to_basic), dtype=torch.long)
        self.include_own = include_own
        self.holdout = holdout

    def sample(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(B, K) bool multi-hot of each sample's combined subtask, never a held-out combination."""
        b = labels.shape[0]
        out = torch.zeros(b, self.num_basic, dtype=torch.bool)
        todo = torch.arange(b)
        for _ in range(1000):
            n = len(todo)
            sizes = torch.multinomial(self.size_probs, n, replacement=True, generator=gen) + 1  # (n,)
            scores = torch.rand(n, self.num_basic, generator=gen)
            own = torch.rand(n, generator=gen) < self.include_own
            basic = self.class_to_basic[labels[todo]]
            scores[own, basic[own]] = -1.0  # sorts first: the own basic subtask is included
            ranks = scores.argsort(dim=1).argsort(dim=1)
            sel = ranks < sizes[:, None]
            out[todo] = sel
            bad = [i for i in range(n) if tuple(sel[i].nonzero().flatten().tolist()) in self.holdout]
            if not bad:
                return out
            todo = todo[bad]
        raise RuntimeError("could not draw non-held-out subtasks: the holdout covers nearly every combination")


def enumerate_size(num_basic: int, size: int, n: int | None, seed: int, exclude=None, only=None) -> list[Subtask]:
    """Up to n combinations of a size (all when n is None or there are fewer), seeded and sorted."""
    combos = [c for c in itertools.combinations(range(num_basic), size)
              if (exclude is None or c not in exclude) and (only is None or c in only)]
    if n is not None and n < len(combos):
        g = torch.Generator().manual_seed(seed * 1000 + size)
        idx = torch.randperm(len(combos), generator=g)[:n].tolist()
        combos = sorted(combos[i] for i in idx)
    return combos
