import itertools
import math
import time

import numpy as np
import pytest
import torch

import hypersan.data.subtasks as subtasks_mod
from hypersan.data.subtasks import (MAX_ENUMERATE, Holdout, SubtaskSampler, canonical, enumerate_size, resolve_classes,
                               sample_combinations)

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def test_canonical_sorts_and_dedups():
    assert canonical([3, 1, 3, 2]) == (1, 2, 3)


def test_holdout_combinations_are_never_sampled():
    held = Holdout(6, explicit=[(0, 1), (2, 3, 4)], fraction=0.3, seed=1)
    listing = set(held.listing())
    assert (0, 1) in listing and (2, 3, 4) in listing and len(listing) > 10
    sampler = SubtaskSampler(6, list(range(6)), [0, 1, 1, 1, 0, 0], include_own=0.9, holdout=held)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        sel = sampler.sample(torch.randint(0, 6, (64,), generator=gen), gen)
        for row in sel:
            combo = tuple(row.nonzero().flatten().tolist())
            assert combo not in listing and 2 <= len(combo) <= 4


def test_own_class_included_with_configured_probability():
    sampler = SubtaskSampler(10, list(range(10)), [1.0] * 3, include_own=0.75, holdout=Holdout(10))
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (20000,), generator=gen)
    sel = sampler.sample(labels, gen)
    own = sel[torch.arange(len(labels)), labels].float().mean().item()
    # P(own) = 0.75 + 0.25 * P(drawn by chance) = 0.75 + 0.25 * E[size]/10
    assert abs(own - (0.75 + 0.25 * 0.2)) < 0.015


def test_hashed_holdout_is_stable_and_near_fraction():
    a, b = Holdout(10, fraction=0.2, seed=7), Holdout(10, fraction=0.2, seed=7)
    assert a.listing() == b.listing()
    n = sum(len(enumerate_size(10, k, None, 0)) for k in range(2, 10))
    assert 0.15 < len(a.listing()) / n < 0.25
    assert Holdout(10, fraction=0.2, seed=8).listing() != a.listing()


# ---------------------------------------------------------------- sampling combinations at any K

@pytest.fixture
def no_big_enumeration(monkeypatch):
    """Fail at once (instead of building 75 M tuples) if anything enumerates a large combination space."""
    real = itertools.combinations

    def guarded(pool, r):
        pool = list(pool)
        assert math.comb(len(pool), r) <= MAX_ENUMERATE, f"enumerated C({len(pool)}, {r})"
        return real(pool, r)

    monkeypatch.setattr(subtasks_mod.itertools, "combinations", guarded)


def test_small_spaces_match_the_former_enumeration():
    held = Holdout(8, explicit=[(0, 1)], fraction=0.3, seed=2)
    listing = set(held.listing())
    for size in range(1, 9):
        everything = list(itertools.combinations(range(8), size))
        unseen = [c for c in everything if c in listing]
        assert sample_combinations(8, size, None, 0, held, seen=False) == unseen
        seen = [c for c in everything if c not in listing]
        # the former enumerate_size: filter, then a seeded randperm of the survivors
        g = torch.Generator().manual_seed(3 * 1000 + size)
        want = seen if len(seen) <= 4 else sorted(seen[i] for i in torch.randperm(len(seen), generator=g)[:4].tolist())
        assert sample_combinations(8, size, 4, 3, held, seen=True) == want
        assert enumerate_size(8, size, 4, 3, exclude=listing) == want


def test_k100_sampling_is_fast_and_respects_the_holdout(no_big_enumeration):
    held = Holdout(100, fraction=0.1, seed=0)
    start = time.perf_counter()
    seen = sample_combinations(100, 5, 20, 1, held, seen=True)
    unseen = sample_combinations(100, 5, 20, 1, held, seen=False)
    full = sample_combinations(100, 100, 3, 1)
    assert time.perf_counter() - start < 1.0
    assert len(seen) == len(unseen) == 20 and full == [tuple(range(100))]
    assert all(c not in held for c in seen) and all(c in held for c in unseen)
    for combos in (seen, unseen):
        assert len(set(combos)) == len(combos) and combos == sorted(combos)
        assert all(len(c) == 5 and list(c) == sorted(c) and len(set(c)) == 5 for c in combos)
    assert sample_combinations(100, 5, 20, 1, held, seen=True) == seen  # seeded
    assert sample_combinations(100, 5, 20, 2, held, seen=True) != seen


def test_k100_unseen_sampling_finds_every_size(no_big_enumeration):
    held = Holdout(100, fraction=0.1, seed=0)
    for size in range(2, 100):
        found = sample_combinations(100, size, 2, 0, held, seen=False)
        assert found and all(c in held and len(c) == size for c in found), size
    assert sample_combinations(100, 1, 5, 0, held, seen=False) == []  # single classes are never hashed out
    assert sample_combinations(100, 100, 5, 0, held, seen=False) == []


def test_k100_explicit_holdout_and_clear_errors(no_big_enumeration):
    explicit = Holdout(100, explicit=[(3, 9, 50, 60, 70), (1, 2, 3, 4, 5)])
    assert sample_combinations(100, 5, 10, 0, explicit, seen=False) == [(1, 2, 3, 4, 5), (3, 9, 50, 60, 70)]
    assert (1, 2, 3, 4, 5) not in sample_combinations(100, 5, 50, 0, explicit, seen=True)
    with pytest.raises(ValueError, match=r"found no held-out combination of size 5"):
        sample_combinations(100, 5, 5, 0, Holdout(100, fraction=1e-12), seen=False)
    with pytest.raises(ValueError, match=r"C\(100, 5\) = 75287520 combinations are too many to list"):
        sample_combinations(100, 5, None, 0)
    with pytest.raises(ValueError, match=r"size 0 must lie in 1\.\.100"):
        sample_combinations(100, 0, 5, 0)
    assert sample_combinations(100, 5, 3, 0, Holdout(100, fraction=1.0), seen=True) == []


def test_k100_training_sampler_never_draws_a_held_out_combination():
    held = Holdout(100, fraction=0.3, seed=5)
    sampler = SubtaskSampler(100, list(range(100)), [0, 1, 1, 1], include_own=0.8, holdout=held)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        sel = sampler.sample(torch.randint(0, 100, (256,), generator=gen), gen)
        combos = [tuple(row.nonzero().flatten().tolist()) for row in sel]
        assert not any(c in held for c in combos)
        assert {len(c) for c in combos} == {2, 3, 4}


def test_large_holdout_is_not_listed_silently(no_big_enumeration):
    held = Holdout(100, explicit=[(0, 1)], fraction=0.1, seed=0)
    with pytest.raises(ValueError, match="sample_combinations"):
        held.listing()
    assert len(held.listing(max_size=2)) > 400  # C(100, 2) = 4950: small enough to scan
    d = held.to_dict()
    assert "combinations" not in d and d["combinations_listed"] is False and d["explicit"] == [[0, 1]]
    assert Holdout(14, fraction=0.1).to_dict()["combinations"]  # K <= 14 still lists them
    assert Holdout(100).to_dict()["combinations"] == []  # nothing hashed: the explicit list is everything


# ---------------------------------------------------------------- class lists

def test_resolve_classes_accepts_names_and_integer_scalars():
    assert resolve_classes([" BAG ", "sneaker"], NAMES) == (7, 8)
    assert resolve_classes([np.int64(9), torch.tensor(0), 3], NAMES) == (0, 3, 9)
    assert resolve_classes(("Ankle boot",), NAMES) == (9,)
    # plural forms, as requests in words take them (hypersan prune --classes sneakers,bags)
    assert resolve_classes(["sneakers", "Bags", "ankle boots", "trousers"], NAMES) == (1, 7, 8, 9)
    with pytest.raises(ValueError, match="given twice"):
        resolve_classes(["Sneaker", "sneakers"], NAMES)


@pytest.mark.parametrize("classes, message", [
    (["Bag", "Bag"], r"class 'Bag' given twice"),
    (["Bag", " bag"], r"class 'Bag' given twice \(as 'Bag' and ' bag'\)"),
    ([8, "Bag"], r"class 'Bag' given twice"),
    ([1.9], r"float 1\.9.*floats and booleans are not accepted"),
    ([True], r"bool True"),
    ([np.float32(2.0)], r"floats and booleans"),
    ([torch.tensor(1.0)], r"tensor"),
    ([torch.tensor(True)], r"tensor"),
    ([], r"no classes given; name at least one: known classes: T-shirt/top"),
    ([10], r"class index 10 out of range 0\.\.9; known classes: T-shirt/top"),
    ([-1], r"class index -1 out of range"),
    (["Hat"], r"unknown class 'Hat'; known classes: T-shirt/top, Trouser"),
    ("Bag", r"not the single string 'Bag'"),
])
def test_resolve_classes_refuses_bad_lists(classes, message):
    with pytest.raises(ValueError, match=message):
        resolve_classes(classes, NAMES)


def test_resolve_classes_refuses_the_former_silent_mixture():
    # formerly (1, 8): 1.9 truncated to 1, True counted as 1, and "bag" / " BAG " merged
    with pytest.raises(ValueError):
        resolve_classes([1.9, True, "bag", " BAG "], NAMES)


def test_a_refusal_among_many_classes_names_five_and_says_how_to_list_them():
    names = [f"glyph {i}" for i in range(135)] + ["capital Ze"]
    with pytest.raises(ValueError) as e:
        resolve_classes(["capital Zee"], names)
    msg = str(e.value)
    assert "136 known classes, nearest: capital Ze" in msg and "hypersan resolve --list" in msg
    assert len(msg) < 500 and msg.count("glyph") <= 5
