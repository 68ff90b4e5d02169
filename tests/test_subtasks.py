import torch

from hypersan.subtasks import Holdout, SubtaskSampler, canonical, enumerate_size


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
