"""A data set's vocabulary and image statistics (DatasetInfo), and Fashion-MNIST's. No torch: the command line
grounds requests with this alone."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


class DatasetError(RuntimeError):
    """Dataset files are missing, truncated or malformed."""


class MissingSplitError(DatasetError):
    """A data set folder has no folder for one of its splits (`split`: "test", "val", ...)."""

    def __init__(self, message: str, split: str):
        super().__init__(message)
        self.split = split


@dataclass
class DatasetInfo:
    """A dataset's vocabulary: class names, named groups, synonyms and image statistics."""

    name: str
    classes: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    groups: dict[str, list[str]] = field(default_factory=dict)  # group name -> class names
    synonyms: dict[str, list[str]] = field(default_factory=dict)  # class or group name -> other words for it
    # words that name kinds of class this data set lacks ("Hebrew" for a set of Latin, Greek and Cyrillic
    # letters): a request that narrows a phrase with one is refused, never widened to the phrase alone
    outside: list[str] = field(default_factory=list)

    def index(self, name: str) -> int:
        """Index of a class by its canonical name (case-insensitive)."""
        low = {c.lower(): i for i, c in enumerate(self.classes)}
        try:
            return low[name.strip().lower()]
        except KeyError:
            import difflib

            near = difflib.get_close_matches(name.strip().lower(), list(low), n=1, cutoff=0.6)
            hint = f"did you mean {self.classes[low[near[0]]]!r}? " if near else ""
            raise KeyError(f"unknown class {name!r}; {hint}known classes: {', '.join(self.classes)}") from None

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": self.classes, "input_shape": list(self.input_shape),
                "mean": list(self.mean), "std": list(self.std), "groups": self.groups, "synonyms": self.synonyms,
                **({"outside": list(self.outside)} if self.outside else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        """A vocabulary from its to_dict() form, checking every field (it is read from checkpoint files)."""
        if not isinstance(d, dict):
            raise ValueError(f"dataset info must be a dict, got {type(d).__name__}")
        fields = ("name", "classes", "input_shape", "mean", "std", "groups", "synonyms", "outside")
        unknown = sorted(set(d) - set(fields))
        missing = [k for k in fields[:5] if k not in d]
        if unknown or missing:
            raise ValueError(f"dataset info: unknown field(s) {unknown} / missing field(s) {missing}; "
                             f"expected {', '.join(fields)}")
        name, classes = d["name"], d["classes"]
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"dataset info 'name' must be a non-empty string, got {name!r}")
        if not isinstance(classes, (list, tuple)) or not classes:
            raise ValueError(f"dataset info 'classes' must be a non-empty list of names, got {classes!r}")
        lowered: dict[str, str] = {}
        for i, c in enumerate(classes):
            if not isinstance(c, str) or not c.strip() or c != c.strip():
                raise ValueError(f"dataset info 'classes'[{i}] = {c!r}: class names must be non-empty strings "
                                 "without leading or trailing spaces")
            if c.lower() in lowered:  # names are looked up case-insensitively
                raise ValueError(f"dataset info 'classes': {c!r} repeats {lowered[c.lower()]!r}; names must be unique")
            lowered[c.lower()] = c
        shape = d["input_shape"]
        if (not isinstance(shape, (list, tuple)) or len(shape) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            raise ValueError(f"dataset info 'input_shape' must be three positive ints (C, H, W), got {shape!r}")
        for key in ("mean", "std"):
            v = d[key]
            numbers = isinstance(v, (list, tuple)) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
            if not numbers or len(v) != shape[0]:
                raise ValueError(f"dataset info {key!r} must be {shape[0]} finite numbers (one per channel), got {v!r}")
        if not all(x > 0 for x in d["std"]):
            raise ValueError(f"dataset info 'std' must be positive (images are divided by it), got {d['std']!r}")
        groups = _str_lists(d.get("groups", {}), "groups")
        for g, members in groups.items():
            bad = [m for m in members if m not in classes]
            if bad:
                raise ValueError(f"dataset info 'groups'[{g!r}]: unknown class(es) {bad}; known classes: "
                                 f"{', '.join(classes)}")
            if len(set(members)) != len(members):
                raise ValueError(f"dataset info 'groups'[{g!r}] lists a class twice: {members}")
        # synonym owners are checked by grounding's Vocabulary, which knows the groups added by a config
        synonyms = _str_lists(d.get("synonyms", {}), "synonyms")
        outside = d.get("outside", [])
        if not isinstance(outside, list) or not all(isinstance(w, str) and w.strip() for w in outside):
            raise ValueError(f"dataset info 'outside' must be a list of non-empty words, got {outside!r}")
        return cls(name=name, classes=list(classes), input_shape=tuple(shape), mean=tuple(float(x) for x in d["mean"]),
                   std=tuple(float(x) for x in d["std"]), groups=groups, synonyms=synonyms, outside=list(outside))


def _str_lists(value, key: str) -> dict[str, list[str]]:
    """A copy of a dict of non-empty string -> list of non-empty strings, or ValueError naming the field."""
    if not isinstance(value, dict):
        raise ValueError(f"dataset info {key!r} must map names to lists of strings, got {type(value).__name__}")
    out = {}
    for k, words in value.items():
        if not isinstance(k, str) or not k.strip():
            raise ValueError(f"dataset info {key!r}: key {k!r} must be a non-empty string")
        if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(f"dataset info {key!r}[{k!r}] must be a list of non-empty strings, got {words!r}")
        out[k] = list(words)
    return out


FASHION_MNIST = DatasetInfo(
    name="fashion_mnist",
    classes=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    input_shape=(1, 28, 28),
    mean=(0.2860,),
    std=(0.3530,),
    groups={
        "footwear": ["Sandal", "Sneaker", "Ankle boot"],
        "tops": ["T-shirt/top", "Pullover", "Shirt"],
        "outerwear": ["Pullover", "Coat"],
        "upper body": ["T-shirt/top", "Pullover", "Coat", "Shirt"],
        "clothing": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Shirt"],
        "accessories": ["Bag"],
    },
    # Plurals need no entry: grounding (hypersan.language.grounding) matches singular and plural forms of every phrase.
    synonyms={
        "T-shirt/top": ["t-shirt", "tshirt", "tee", "tee shirt", "top", "t shirt", "tank top", "singlet", "crop top"],
        "Trouser": ["trousers", "pants", "jeans", "slacks", "chinos", "leggings", "joggers", "bottoms"],
        "Pullover": ["sweater", "jumper", "hoodie", "sweatshirt", "cardigan", "fleece", "knitwear", "turtleneck"],
        "Dress": ["gown", "frock", "sundress"],
        "Coat": ["jacket", "overcoat", "parka", "anorak", "raincoat", "trench coat", "windbreaker", "blazer"],
        "Sandal": ["flip-flop", "flip flop", "slipper", "espadrille"],
        "Shirt": ["blouse", "button-down", "dress shirt", "polo shirt", "flannel shirt"],
        "Sneaker": ["trainer", "running shoe", "sports shoe", "tennis shoe", "athletic shoe", "gym shoe", "kicks"],
        "Bag": ["handbag", "purse", "backpack", "tote", "satchel", "clutch", "shoulder bag", "tote bag", "rucksack",
                "duffel bag", "messenger bag"],
        "Ankle boot": ["boot", "booties", "bootie"],
        "footwear": ["shoes", "shoe", "footgear"],
        "tops": [],
        "outerwear": ["outer wear"],
        "clothing": ["clothes", "apparel"],
    },
)


def channel_stats(images) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel, in [0, 1], of uint8 images (N, C, H, W) as a numpy array: what a net of that
    data normalizes with (std at least 1e-3, so a constant channel is never divided by 0)."""
    mean = (images.mean(axis=(0, 2, 3), dtype="float64") / 255).tolist()
    std = [max(v, 1e-3) for v in (images.std(axis=(0, 2, 3), dtype="float64") / 255).tolist()]
    return tuple(mean), tuple(std)


LIST_LIMIT = 12  # names an error message lists in full; past that, a few and LIST_HINT
LIST_HINT = "list them all with `hypersan resolve --list` (add --checkpoint for another model)"


def few_names(names, limit: int = 5) -> str:
    """"a, b, c" for up to `limit` names, "a, b, c, d, e, ..." past it: a list a message names, kept to a line."""
    names = list(names)
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def known_names(names, what: str = "classes", near: str | None = None, limit: int = LIST_LIMIT,
                hint: bool = True) -> str:
    """"known classes: a, b, c" for a short list; for a long one, the 5 names nearest to `near` (or the first 5),
    the count, and (with `hint`) how to list the rest: an error message stays a line, not a page."""
    names = list(names)
    if len(names) <= limit:
        return f"known {what}: {', '.join(names)}"
    import difflib

    pick = difflib.get_close_matches(near.lower(), [n.lower() for n in names], n=5, cutoff=0.0) if near else []
    lower = {n.lower(): n for n in names}
    shown = [lower[p] for p in pick] or names[:5]
    return (f"{len(names)} known {what}, {'nearest' if pick else 'among them'}: {', '.join(shown)}, ..."
            + (f"; {LIST_HINT}" if hint else ""))

