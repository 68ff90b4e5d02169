import random

from hypersan.data.datasets import FASHION_MNIST
from hypersan.language.descriptions import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, canonical_description, describe
from hypersan.language.grounding import ground


def test_heldout_phrasings_never_appear_in_training():
    rng = random.Random(0)
    heads = [t.split("{x}")[0] for t in HELDOUT_TEMPLATES if t.split("{x}")[0]]
    for _ in range(300):
        classes = rng.sample(range(10), rng.randint(1, 5))
        text = describe(classes, FASHION_MNIST, rng, "train")
        assert not any(text.startswith(h) for h in heads), text
        assert " as well as " not in text and " plus " not in text
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)


def test_descriptions_ground_back_to_their_class_set():
    rng = random.Random(1)
    ok = total = 0
    for split in ("train", "heldout"):
        for _ in range(60):
            classes = sorted(rng.sample(range(10), rng.randint(1, 4)))
            text = describe(classes, FASHION_MNIST, rng, split)
            total += 1
            try:
                ok += list(ground(text, FASHION_MNIST).indices) == classes
            except ValueError:
                pass
    assert ok / total >= 0.9


def test_canonical_description():
    assert canonical_description([8, 7], FASHION_MNIST) == "Sneaker and Bag"
    assert canonical_description([0, 5, 9], FASHION_MNIST) == "T-shirt/top, Sandal and Ankle boot"
