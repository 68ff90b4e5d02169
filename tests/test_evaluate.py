"""parse_subtasks: class lists, "all", "size=K,n=M", "seen" / "unseen", and its errors; fast at 100 classes."""
import time
from collections import Counter

import pytest
import torch

from hypersan.config import load_config
from hypersan.data.datasets import FASHION_MNIST, DatasetInfo
from hypersan.training.evaluate import parse_subtasks
from hypersan.nn.model import SubtaskAdaptiveNet

from .conftest import ROOT


def _model(*extra, info=FASHION_MNIST):
    return SubtaskAdaptiveNet(load_config(ROOT / "configs" / "tiny.toml", list(extra)), info)


@pytest.fixture(scope="module")
def model():
    return _model("subtasks.holdout_fraction=0.3")


def test_class_lists_by_name_and_index(model):
    assert parse_subtasks(model, ["Sneaker,Bag"]) == [(7, 8)]
    assert parse_subtasks(model, [" bag ; SNEAKER "]) == [(7, 8)]  # case, spaces and ";" as well
    assert parse_subtasks(model, ["0,Ankle boot,3"]) == [(0, 3, 9)]
    assert parse_subtasks(model, ["5"]) == [(5,)]
    assert parse_subtasks(model, ["all"]) == [tuple(range(10))]


def test_size_specs_count_size_and_seed(model):
    three = parse_subtasks(model, ["size=3,n=4"], seed=0)
    assert len(three) == len(set(three)) == 4 and all(len(t) == 3 for t in three)
    assert parse_subtasks(model, ["size=3, n=4"], seed=0) == three  # deterministic, space after the comma allowed
    assert parse_subtasks(model, ["size=3,n=4"], seed=1) != three
    assert len(parse_subtasks(model, ["size=3"])) == 120  # no n: every combination (C(10, 3))
    assert sorted(parse_subtasks(model, ["size=9,n=50"])) == sorted(
        tuple(c for c in range(10) if c != d) for d in range(10))  # n past the count: all 10 of them
    assert parse_subtasks(model, ["size=10"]) == [tuple(range(10))]


def test_seen_and_unseen_respect_the_holdout(model):
    held = set(model.holdout.listing())
    assert held  # 30% of the combinations of sizes 2..9
    seen = parse_subtasks(model, ["seen"], per_size=5)
    unseen = parse_subtasks(model, ["unseen"], per_size=5)
    assert seen and unseen
    assert all(model.is_seen(t) and t not in held for t in seen)
    assert all(not model.is_seen(t) and t in held for t in unseen)
    assert not set(seen) & set(unseen)
    assert set(Counter(map(len, seen))) == set(range(1, 11))  # single classes and the full set are seen
    assert set(Counter(map(len, unseen))) == set(range(2, 10))
    assert max(Counter(map(len, seen)).values()) <= 5 and max(Counter(map(len, unseen)).values()) <= 5
    assert parse_subtasks(model, ["seen"], seed=3) != seen  # seeded draws
    assert parse_subtasks(model, ["unseen"]) == unseen


def test_nothing_unseen_without_a_holdout():
    plain = _model()
    assert parse_subtasks(plain, ["unseen"]) == []
    assert len(parse_subtasks(plain, ["seen"], per_size=2)) == 2 * 9 + 1  # two of each size, one full set


def test_unseen_lists_an_explicitly_held_out_single_class():
    m = _model('subtasks.holdout=[["Bag"], ["Sneaker", "Bag"]]')
    assert not m.is_seen((8,))
    assert set(parse_subtasks(m, ["unseen"])) == {(8,), (7, 8)}


def test_duplicates_across_specs_are_removed_in_order(model):
    pairs = parse_subtasks(model, ["size=2,n=3"])
    got = parse_subtasks(model, ["Sneaker,Bag", "8,7", "bag,sneaker", "all", "size=2,n=3", "size=2,n=3", "all"])
    assert got == list(dict.fromkeys([(7, 8), tuple(range(10))] + pairs))
    assert len(got) == len(set(got))


@pytest.mark.parametrize("spec,match", [
    ("", "empty subtask spec"),
    (" , ", "empty subtask spec"),
    ("Bag,,Coat", "empty class name"),
    ("size=0", r"size must lie in 1\.\.10"),
    ("size=11,n=2", r"size must lie in 1\.\.10"),
    ("size=3,n=0", "n must be a positive integer"),
    ("Bag,bag", "given twice"),
    ("Bag,8", "given twice"),
    ("Boat", "unknown class 'Boat'"),
    ("10", r"out of range 0\.\.9"),
])
def test_bad_specs_are_errors_that_say_why(model, spec, match):
    with pytest.raises(ValueError, match=match):
        parse_subtasks(model, ["Bag", spec])


def test_seen_and_unseen_are_fast_for_100_classes():
    info = DatasetInfo("c100", [f"c{i}" for i in range(100)], (3, 32, 32), (0.5,) * 3, (0.25,) * 3)
    m = _model("subtasks.holdout_fraction=0.3", info=info)
    for spec, sizes in (("seen", range(1, 101)), ("unseen", range(2, 100))):
        t0 = time.perf_counter()
        got = parse_subtasks(m, [spec], per_size=3)
        assert time.perf_counter() - t0 < 2.0, spec  # drawn, never enumerated (C(100, 50) is ~1e29)
        assert set(Counter(map(len, got)).values()) <= {1, 2, 3} and set(map(len, got)) == set(sizes)
        assert all(m.is_seen(t) == (spec == "seen") for t in got)
    with pytest.raises(ValueError, match="too many to list"):
        parse_subtasks(m, ["size=5"])  # every combination of 5 of 100: refused, not enumerated
    assert len(parse_subtasks(m, ["size=50,n=4"])) == 4


def test_the_errors_agree_with_the_plain_accuracy():
    import torch

    from hypersan.training.evaluate import plain_accuracy, plain_accuracy_and_errors

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()  # logits of the classes (2, 5, 7)
    x = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    y = torch.tensor([2, 5, 7, 1] * 10)
    acc, wrong = plain_accuracy_and_errors(net, (7, 2, 5), x, y)
    assert acc == pytest.approx(plain_accuracy(net, (7, 2, 5), x, y))
    assert all(int(y[i]) in (2, 5, 7) for i in wrong) and 0 < len(wrong) < 30
    assert acc == pytest.approx(1 - len(wrong) / 30)
    with pytest.raises(ValueError, match="no sample"):
        plain_accuracy_and_errors(net, (3,), x, y)


def test_the_calibrated_threshold_gets_the_most_samples_right():
    from hypersan.training.evaluate import calibrated_threshold
    scores = torch.tensor([-3.0, -2.0, -1.0, 0.5, 1.0, 2.0, 3.0])
    positives = torch.tensor([False, False, False, False, True, True, True])
    t = calibrated_threshold(scores, positives)
    assert 0.5 < t < 1.0  # every sample right: between the highest negative and the lowest positive
    assert ((scores > t) == positives).all()
    # all negatives: any threshold above the highest score; ties between equal scores are never split
    t = calibrated_threshold(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([False, False, False]))
    assert t > 2.0
    t = calibrated_threshold(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([True, False, False]))
    assert t < 1.0 and ((torch.tensor([1.0, 1.0, 0.0]) > t) == torch.tensor([True, True, False])).all()
    # among equally good thresholds, the one nearest logit 0
    assert calibrated_threshold(torch.tensor([-5.0, 5.0]), torch.tensor([False, True])) == 0.0
