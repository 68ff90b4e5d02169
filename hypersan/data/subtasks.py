"""Canonical subtasks, per-sample subtask sampling, holdout splits and combination sampling at any K."""
from __future__ import annotations

import hashlib
import itertools
import math
import random
from typing import Any, Container, Iterable, Sequence

import numpy as np
import torch

from ..info import known_names

Subtask = tuple[int, ...]  # canonical: sorted, deduplicated basic-subtask (or class) indices

# Combination spaces up to this size are enumerated; larger ones are sampled (C(100, 5) is 75 million).
MAX_ENUMERATE = 20_000


def canonical(items: Iterable[int]) -> Subtask:
    """Sorted, deduplicated tuple: the cache key of a combined subtask."""
    out = tuple(sorted({int(i) for i in items}))
    if not out:
        raise ValueError("a subtask needs at least one class")
    return out


def _class_index(c: Any, position: int) -> int | None:
    """The int a class entry stands for, None for a name; floats, bools and other types are refused."""
    if isinstance(c, str):
        return None
    if isinstance(c, torch.Tensor):
        if c.numel() != 1 or c.dtype == torch.bool or c.dtype.is_floating_point or c.dtype.is_complex:
            raise ValueError(f"class entry {position} is a tensor {c!r}; give an integer scalar or a class name")
        return int(c.item())
    # bool is an int subclass: True would silently mean class 1
    if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
        raise ValueError(f"class entry {position} is {type(c).__name__} {c!r}; give a class name or an integer "
                         "index (floats and booleans are not accepted)")
    return int(c)


def resolve_classes(classes: Iterable[Any], names: Sequence[str]) -> Subtask:
    """Canonical class-index subtask from class names (case-insensitive, stripped) or integer indices."""
    if isinstance(classes, (str, bytes)):
        raise ValueError(f"classes must be a list of class names or indices, not the single string {classes!r}; "
                         f"e.g. [{classes!r}]")
    low = {n.strip().lower(): i for i, n in enumerate(names)}
    singular: dict[str, list[int]] = {}  # "sneakers" and "sneaker" name one class, as requests in words do
    for i, n in enumerate(names):
        singular.setdefault(_singular(n), []).append(i)
    seen: dict[int, Any] = {}
    for pos, c in enumerate(classes):
        idx = _class_index(c, pos)
        if idx is None:
            key = c.strip().lower()
            if key not in low and len(singular.get(_singular(key), [])) == 1:
                key = names[singular[_singular(key)][0]].strip().lower()
            if key not in low:
                import difflib

                near = difflib.get_close_matches(key, list(low), n=1, cutoff=0.6)
                hint = f"did you mean {names[low[near[0]]]!r}? " if near else ""
                raise ValueError(f"unknown class {c!r}; {hint}{known_names(names, near=key)}. Groups and requests "
                                 "in words (\"digits\", \"shoes\") go through a request: --request on the command "
                                 "line, a string in Python")
            idx = low[key]
        elif not 0 <= idx < len(names):
            raise ValueError(f"class index {idx} out of range 0..{len(names) - 1}; {known_names(names)}")
        if idx in seen:
            raise ValueError(f"class {names[idx]!r} given twice (as {seen[idx]!r} and {c!r}); list each class once")
        seen[idx] = c
    if not seen:
        raise ValueError(f"no classes given; name at least one: {known_names(names)}")
    return tuple(sorted(seen))


def _singular(name: str) -> str:
    """A class name with each word in its singular form (case-insensitive): "Ankle boots" -> "ankle boot"."""
    from ..language.vocabulary import lemma

    return " ".join(lemma(w) for w in name.strip().lower().split())


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

    def hashed_size(self, size: int) -> bool:
        """Whether the hashed fraction can hold out combinations of this size."""
        return self.fraction > 0 and 2 <= size < self.num_basic

    def listable(self, max_size: int | None = None) -> bool:
        """Whether listing() can scan every combination it needs to (at most MAX_ENUMERATE of them)."""
        top = self.num_basic - 1 if max_size is None else min(max_size, self.num_basic - 1)
        return self.fraction <= 0 or sum(math.comb(self.num_basic, n) for n in range(2, top + 1)) <= MAX_ENUMERATE

    def listing(self, max_size: int | None = None) -> list[Subtask]:
        """All held-out combinations (up to max_size); refused when that means scanning a huge space."""
        k = self.num_basic
        if not self.listable(max_size):
            raise ValueError(f"listing the held-out combinations of {k} basic subtasks up to size "
                             f"{max_size or k - 1} would scan more than {MAX_ENUMERATE} combinations; pass a "
                             "smaller max_size, or draw some with sample_combinations(..., seen=False)")
        top = k - 1 if max_size is None else min(max_size, k - 1)
        found = {c for c in self.explicit if max_size is None or len(c) <= max_size}
        if self.fraction > 0:
            for n in range(2, top + 1):
                found.update(c for c in itertools.combinations(range(k), n) if c in self)
        return sorted(found, key=lambda c: (len(c), c))

    def to_dict(self) -> dict:
        """JSON record of the holdout; the combinations are listed only when K is small enough (K <= 14)."""
        out: dict[str, Any] = {"explicit": [list(c) for c in sorted(self.explicit)], "fraction": self.fraction,
                               "seed": self.seed}
        if self.listable():
            out["combinations"] = [list(c) for c in self.listing()]
        else:
            out["combinations_listed"] = False
            out["note"] = (f"{self.num_basic} basic subtasks have too many combinations to list; a combination of "
                           "size 2..K-1 is held out when hashed_holdout(combo, fraction, seed) holds, or when it is "
                           "explicit")
        return out


SAMPLINGS = ("own", "natural")  # subtasks.sampling (see SubtaskSampler)


class SubtaskSampler:
    """Draws one combined subtask per sample: size from a distribution; with sampling = "own", the sample's own
    basic subtask is in it with probability include_own; with "natural", the subtask is drawn without looking at
    the image, so a class set meets other classes' images as often as it does when it runs on every image
    (a share 1 - |T| / |C| of negatives on balanced data)."""

    def __init__(self, num_basic: int, class_to_basic: Sequence[int], size_weights: Sequence[float],
                 include_own: float, holdout: Holdout, sampling: str = "own", size_tail: float = 0.0):
        if sampling not in SAMPLINGS:
            raise ValueError(f"subtask sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        self.sampling = sampling
        w = list(size_weights)[:num_basic]
        w = torch.tensor(w + [size_tail] * (num_basic - len(w)), dtype=torch.float64)
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
            if self.sampling == "own":
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


def microbatch_sizes(batch: int, groups: int) -> list[int]:
    """Sizes of the micro-batches a batch of `batch` images is split into (torch.tensor_split's, at most
    `groups` of them, none empty)."""
    return [len(c) for c in torch.arange(batch).tensor_split(min(groups, batch))]


def sample_grouped(sampler: SubtaskSampler, batch: int, groups: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, K) multi-hot: one class set per micro-batch (microbatch_sizes), drawn blind to the images, each
    repeated over its micro-batch's rows."""
    if sampler.sampling != "natural":
        raise ValueError("one class set per micro-batch ignores the images' classes: it needs sampling = 'natural'")
    sizes = microbatch_sizes(batch, groups)
    rows = sampler.sample(torch.zeros(len(sizes), dtype=torch.long), gen)
    return rows.repeat_interleave(torch.tensor(sizes), dim=0)


def sample_combinations(num_basic: int, size: int, n: int | None, seed: int, holdout: Holdout | None = None,
                        seen: bool | None = None) -> list[Subtask]:
    """Up to n distinct combinations of `size` of range(num_basic), sorted, seeded; seen=True keeps only those
    outside the holdout, seen=False only held-out ones, None all. n=None: every one (small spaces only)."""
    if not 1 <= size <= num_basic:
        raise ValueError(f"combination size {size} must lie in 1..{num_basic} (the number of basic subtasks)")
    if n is not None and n < 0:
        raise ValueError(f"n = {n} combinations requested; give n >= 0, or None for all of them")
    if seen is not None and holdout is None:
        holdout = Holdout(num_basic)  # nothing held out
    total = math.comb(num_basic, size)
    if total <= MAX_ENUMERATE:
        combos = [c for c in itertools.combinations(range(num_basic), size) if seen is None or (c in holdout) != seen]
        if n is not None and n < len(combos):
            # the same draw as the former enumerate_size, so earlier evaluations keep their subtasks
            g = torch.Generator().manual_seed(seed * 1000 + size)
            combos = sorted(combos[i] for i in torch.randperm(len(combos), generator=g)[:n].tolist())
        return combos
    if n is None or n > MAX_ENUMERATE:
        raise ValueError(f"C({num_basic}, {size}) = {total} combinations are too many to list; ask for at most "
                         f"n = {MAX_ENUMERATE} of them (e.g. size={size},n=20)")
    if n == 0:
        return []
    rng = random.Random(f"{seed}:{num_basic}:{size}:{seen}")  # str seeds hash stably across runs and machines
    if seen is False:
        explicit = sorted(c for c in holdout.explicit if len(c) == size)
        if not holdout.hashed_size(size):  # only the explicit list can hold out this size: nothing to search for
            return sorted(rng.sample(explicit, min(n, len(explicit))))
    elif seen is True and holdout.hashed_size(size) and holdout.fraction >= 1:
        return []  # the hashed fraction holds out every combination of this size
    found: set[Subtask] = set()
    tries = 10_000 + 200 * n  # enough for a holdout fraction down to ~1% (or up to ~99% for seen=True)
    for _ in range(tries):
        c = tuple(sorted(rng.sample(range(num_basic), size)))
        if seen is None or (c in holdout) != seen:
            found.add(c)
            if len(found) == n:
                break
    if seen is False:
        found.update(explicit)
        if len(found) > n:
            found = set(rng.sample(sorted(found), n))
    if not found:
        want = "held-out" if seen is False else "non-held-out"
        raise ValueError(f"found no {want} combination of size {size} among {num_basic} basic subtasks in {tries} "
                         f"random draws: the holdout fraction {holdout.fraction} leaves (almost) none")
    return sorted(found)


def enumerate_size(num_basic: int, size: int, n: int | None, seed: int, exclude: Container | None = None,
                   only: Container | None = None) -> list[Subtask]:
    """Former name of sample_combinations: exclude / only are a Holdout or a set of combinations."""
    if exclude is not None and only is not None:
        raise ValueError("give exclude or only, not both")
    spec, seen = (exclude, True) if exclude is not None else (only, False) if only is not None else (None, None)
    if spec is not None and not isinstance(spec, Holdout):
        spec = Holdout(num_basic, explicit=spec)
    return sample_combinations(num_basic, size, n, seed, holdout=spec, seen=seen)
