"""Natural-language descriptions of class sets, for training and evaluating text-conditioned generators.

Descriptions combine templates × synonyms × group names × list forms. Templates and list forms are split
into a training part and a held-out part, so that evaluation can use phrasings never seen in training.
"""
from __future__ import annotations

import random
from typing import Sequence

from ..info import DatasetInfo

TRAIN_TEMPLATES = ["{x}", "{x} only", "only {x}", "a model for {x}", "a network that recognizes {x}",
                   "classify {x}", "detect {x}", "I need to recognize {x}", "find {x} in photos",
                   "pictures of {x}", "sort images of {x}", "a classifier for {x}"]
HELDOUT_TEMPLATES = ["please build me something that can spot {x}", "my shop sells {x}; make a model for it",
                     "tell {x} apart", "which of these is it: {x}?"]
TRAIN_JOINS = ["and", "or", ",", "&"]
HELDOUT_JOINS = ["as well as", "plus"]


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word
    return word[:-1] + "ies" if word.endswith("y") and word[-2:-1] not in "aeiou" else word + "s"


def class_words(info: DatasetInfo, index: int, rng: random.Random) -> str:
    """One word for a class: its name or a synonym, singular or plural, in lower case."""
    name = info.classes[index]
    groups = {g.lower() for g in info.groups}
    options = [name.lower()] + [s.lower() for s in info.synonyms.get(name, [])]
    # a word whose plural names a group ("top" -> "tops") would ask for the whole group
    options = [w for w in options if w not in groups and _plural(w) not in groups] or [name.lower()]
    w = rng.choice(options)
    return _plural(w) if rng.random() < 0.5 else w


def _join(parts: list[str], rng: random.Random, joins: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    j = rng.choice(list(joins))
    if j == ",":
        return ", ".join(parts[:-1]) + (" and " if rng.random() < 0.5 else ", ") + parts[-1]
    return f" {j} ".join(parts) if len(parts) == 2 else ", ".join(parts[:-1]) + f" {j} " + parts[-1]


def describe(classes: Sequence[int], info: DatasetInfo, rng: random.Random, split: str = "train") -> str:
    """A random description of a class set; split "heldout" uses only phrasings kept out of training."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    todo = sorted(set(int(c) for c in classes))
    parts: list[str] = []
    # a named group may stand for its members when they are all requested
    groups = [(g, [info.index(m) for m in ms]) for g, ms in info.groups.items()]
    rng.shuffle(groups)
    for g, members in groups:
        if len(members) > 1 and set(members) <= set(todo) and rng.random() < 0.5:
            words = [g.lower()] + [s.lower() for s in info.synonyms.get(g, [])]
            parts.append(rng.choice(words))
            todo = [c for c in todo if c not in members]
    parts += [class_words(info, c, rng) for c in todo]
    rng.shuffle(parts)
    templates = TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES
    joins = TRAIN_JOINS if split == "train" else HELDOUT_JOINS
    return rng.choice(templates).format(x=_join(parts, rng, joins))


def canonical_description(classes: Sequence[int], info: DatasetInfo) -> str:
    """The fixed description of a class set: its canonical names joined by commas and "and"."""
    names = [info.classes[c] for c in sorted(set(int(c) for c in classes))]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
