"""Grounding: a request in words ("shoes and handbags") -> an explicit set of the dataset's classes.

Three passes over the request:
1. Lexical: the longest phrases of the vocabulary (class names, synonyms, group names) are matched, ignoring case
   and plural forms.
2. What is left is sorted into separators ("and", "vs", ","), exclusions ("except"), filler ("I need a model for")
   and content words. Content words right before a matched phrase modify it ("winter coats"); others must be
   grounded on their own: by a near spelling of a vocabulary word, or by sentence-embedding similarity to the
   vocabulary's phrases above a calibrated threshold.
3. Any part that cannot be grounded rejects the whole request, naming that part and the nearest classes.
"""
from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from .data import DatasetInfo

if TYPE_CHECKING:  # pragma: no cover
    from .text import Encoder

# Thresholds calibrated for all-MiniLM-L6-v2 on tests/data/fmnist_requests.jsonl (see docs/RESULTS.md).
EMBED_ACCEPT = 0.60  # a part alone is grounded when its best phrase similarity reaches this
EMBED_NARROW = 0.50  # "modifier + phrase" may narrow the phrase to one of its classes above this
FUZZY_ACCEPT = 0.85  # difflib ratio for a misspelt vocabulary word ("snekers")
FUZZY_MIN_LEN = 5
BACKGROUND_DROP = 0.80  # background objects this similar to a vocabulary phrase are dropped (they may be synonyms)

# Open-set rejection: common objects (COCO's 80 and CIFAR-100's 100 categories, plus clothing accessories that
# clothing datasets often lack). A part nearer to one of these than to every vocabulary phrase is not understood.
# Entries the vocabulary names, or nearly names (>= BACKGROUND_DROP), are left out per vocabulary.
BACKGROUND = tuple(dict.fromkeys(x.strip() for x in """
person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, fire hydrant, stop sign,
parking meter, bench, bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe, backpack, umbrella, handbag,
tie, suitcase, frisbee, skis, snowboard, sports ball, kite, baseball bat, baseball glove, skateboard, surfboard,
tennis racket, bottle, wine glass, cup, fork, knife, spoon, bowl, banana, apple, sandwich, orange, broccoli, carrot,
hot dog, pizza, donut, cake, chair, couch, potted plant, bed, dining table, toilet, tv, laptop, mouse, remote,
keyboard, cell phone, microwave, oven, toaster, sink, refrigerator, book, clock, vase, scissors, teddy bear,
hair drier, toothbrush,
aquarium fish, baby, beaver, bee, beetle, boy, bridge, butterfly, camel, can, castle, caterpillar, cattle,
chimpanzee, cloud, cockroach, crab, crocodile, dinosaur, dolphin, flatfish, forest, fox, girl, hamster, house,
kangaroo, lamp, lawn mower, leopard, lion, lizard, lobster, man, maple tree, mountain, mushroom, oak tree, orchid,
otter, palm tree, pear, pickup truck, pine tree, plain, plate, poppy, porcupine, possum, rabbit, raccoon, ray, road,
rocket, rose, sea, seal, shark, shrew, skunk, skyscraper, snail, snake, spider, squirrel, streetcar, sunflower,
sweet pepper, table, tank, telephone, television, tiger, tractor, trout, tulip, turtle, wardrobe, whale,
willow tree, wolf, woman, worm,
socks, gloves, belt, wallet, sunglasses, necklace, bracelet, earrings, watch
""".replace("\n", " ").split(",") if x.strip()))

SEPARATOR_TOKENS = {",", ";", "&", "+", "/", "|"}
CONNECTORS = {"and", "or", "vs", "v", "versus", "plus", "nor", "from", "against", "with", "as", "well", "along",
              "together", "compared", "opposed", "alongside", "then", "n"}
EXCLUDERS = {"except", "excluding", "exclude", "without", "minus", "not", "but", "no", "besides"}
ALL_WORDS = {"all", "everything", "every", "anything", "full", "complete"}
PREPOSITIONS_AFTER = {"for", "in", "made", "of", "on"}  # "sneakers for running": a modifier after the phrase
FILLER = set("""
a an the this that these those some any of for to in on at by into about than other such same
i me my we us our you your it its they them their he she his her one ones who whom which what
is are am be been being was were do does did will would could can should shall may might must
please pls kindly just only also too really very exactly solely purely exclusively mostly
need want like love wish require prefer id im ive youd lets let get got give make build create train
prune produce generate return output provide design set up show find spot see look looking help handle
model net network classifier classification detector recognizer recognition cnn neural subnet subnetwork
system pruned smaller small tiny fast compact light lightweight version variant
recognize recognise recognizes recognises recognizing recognising detect detects detecting detection
classify classifies classifying identify identifies identifying distinguish distinguishes distinguishing
differentiate differentiates differentiating discriminate separate separates separating sort sorts sorting
tell tells telling apart between among amongst both either neither each can able capable
image picture photo photograph pic item thing object stuff piece product kind type sort class category
categorie group whole entire set list only just e g eg ie etc okay ok hi hello hey thanks thank
containing contain contains with same nothing else more something
""".split())


class GroundingError(ValueError):
    """A request that names no class, or has a part that matches nothing in the vocabulary."""

    def __init__(self, message: str, request: str, unknown: Sequence[str] = (), nearest: Sequence[str] = (),
                 nearest_scores: Sequence[float] = ()):
        super().__init__(message)
        self.request = request
        self.unknown = list(unknown)  # the parts of the request that were not understood
        self.nearest = list(nearest)  # nearest known classes to the first of them, best first
        self.nearest_scores = [round(float(s), 4) for s in nearest_scores]

    def to_dict(self) -> dict:
        """JSON-able description of the failure."""
        return {"request": self.request, "error": str(self), "unknown": self.unknown,
                "nearest": self.nearest, "nearest_scores": self.nearest_scores}


@dataclass(frozen=True)
class Match:
    """One part of a request and what it was grounded to."""

    text: str  # the words of the request
    target: str  # the class, group or synonym's owner it matched; "*" for all classes
    classes: tuple[str, ...]  # canonical class names it stands for
    how: str  # name | synonym | group | fuzzy | embedding | modifier | all
    score: float  # 1 for vocabulary phrases, the similarity for fuzzy and embedding matches
    exclude: bool = False  # named after "except", "without", ...

    def to_dict(self) -> dict:
        return {"text": self.text, "target": self.target, "classes": list(self.classes), "how": self.how,
                "score": round(self.score, 4), "exclude": self.exclude}


@dataclass
class Grounding:
    """The class set a request was grounded to, with a score per class and which words matched what."""

    request: str
    classes: list[str]  # canonical names, in dataset order
    indices: tuple[int, ...]  # sorted class indices: the canonical subtask
    scores: dict[str, float]  # class -> confidence of the best match that named it (1 = a vocabulary phrase)
    matches: list[Match] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-able form: request, classes, indices, scores, matches."""
        return {"request": self.request, "classes": self.classes, "indices": list(self.indices),
                "scores": {c: round(s, 4) for c, s in self.scores.items()},
                "matches": [m.to_dict() for m in self.matches]}


# ---------------------------------------------------------------- text normalization

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[,;&+/|]")


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Lower-case word and separator tokens of text, each with its character span."""
    norm = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    low = norm.lower() if len(norm.lower()) == len(norm) else norm  # offsets must index norm
    return [(m.group().replace("'", ""), m.start(), m.end()) for m in _TOKEN.finditer(low)]


def lemma(word: str) -> str:
    """A crude singular form, the same for a word and its plural ("dresses", "dress" -> "dress")."""
    w = word
    if len(w) > 3 and w.isalpha():
        if w.endswith("ies") and len(w) > 4:
            w = w[:-3] + "y"
        elif w.endswith(("sses", "shes", "ches", "xes", "zzes")):
            w = w[:-2]
        elif w.endswith("oes"):
            w = w[:-1]
        elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        if w.endswith("ie") and len(w) > 3:  # hoodie / hoodies -> hoody
            w = w[:-2] + "y"
    return w


@dataclass(frozen=True)
class _Entry:
    phrase: str
    target: str
    classes: tuple[str, ...]
    how: str


class Vocabulary:
    """The phrases of a DatasetInfo, indexed for longest-match lookup by exact and singular forms."""

    def __init__(self, info: DatasetInfo):
        self.info = info
        self.classes = list(info.classes)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        low = {c.lower(): c for c in self.classes}
        groups: dict[str, tuple[str, ...]] = {}
        for g, members in info.groups.items():
            bad = [m for m in members if m.lower() not in low]
            if bad:
                raise ValueError(f"group {g!r} names unknown class(es) {bad}; known classes: {', '.join(self.classes)}")
            groups[g] = tuple(sorted({low[m.lower()] for m in members}, key=lambda c: self.class_index[c]))
        self.groups = groups
        entries: list[_Entry] = [_Entry(c, c, (c,), "name") for c in self.classes]
        glow = {g.lower(): g for g in groups}
        syn_entries = []
        for owner, words in info.synonyms.items():
            if owner.lower() in low:
                c = low[owner.lower()]
                syn_entries += [_Entry(w, c, (c,), "synonym") for w in words]
            elif owner.lower() in glow:
                g = glow[owner.lower()]
                syn_entries += [_Entry(w, g, groups[g], "group") for w in words]
            else:
                raise ValueError(f"synonyms given for {owner!r}, which is neither a class nor a group; "
                                 f"classes: {', '.join(self.classes)}; groups: {', '.join(groups) or '(none)'}")
        entries += [e for e in syn_entries if e.how == "synonym"]
        entries += [_Entry(g, g, cs, "group") for g, cs in groups.items()]
        entries += [e for e in syn_entries if e.how == "group"]
        self.entries = entries
        self.exact: dict[tuple[str, ...], _Entry] = {}
        self.singular: dict[tuple[str, ...], _Entry] = {}
        explicit: dict[tuple[str, ...], _Entry] = {}
        for e in entries:
            toks = tuple(t for t, _, _ in tokenize(e.phrase))
            if not toks:
                raise ValueError(f"vocabulary phrase {e.phrase!r} (for {e.target!r}) has no words")
            prev = explicit.get(toks)
            if prev is not None and prev.classes != e.classes:
                raise ValueError(f"{e.phrase!r} would stand for both {prev.target!r} and {e.target!r}; "
                                 "a phrase may name only one class or group")
            explicit.setdefault(toks, e)
        # Exact phrases first, then derived forms ("t-shirt" also as "tshirt"), then singular forms of all.
        for e in entries:
            self.exact.setdefault(tuple(t for t, _, _ in tokenize(e.phrase)), e)
        for e in entries:
            self.exact.setdefault(tuple(t for t, _, _ in tokenize(re.sub(r"(?<=\w)-(?=\w)", "", e.phrase))), e)
        for toks, e in list(self.exact.items()):
            self.singular.setdefault(tuple(lemma(t) for t in toks), e)
        self.max_len = max((len(k) for k in self.exact), default=1)
        # Phrases compared by embedding and by spelling: every entry's own text, once.
        self.phrases = list(dict.fromkeys(e.phrase for e in entries))
        self.phrase_entries = [next(e for e in entries if e.phrase == p) for p in self.phrases]
        self.fuzzy_keys = {" ".join(lemma(t) for t, _, _ in tokenize(e.phrase)): e for e in reversed(entries)}

    def lookup(self, toks: Sequence[str]) -> _Entry | None:
        """The entry a token sequence names exactly or in singular form, if any."""
        return self.exact.get(tuple(toks)) or self.singular.get(tuple(lemma(t) for t in toks))


def extend_vocabulary(info: DatasetInfo, synonyms: dict[str, list[str]] | None = None,
                      groups: dict[str, list[str]] | None = None) -> DatasetInfo:
    """A copy of info with extra synonyms and groups (a config's [vocab] section), every name checked."""
    low = {c.lower(): c for c in info.classes}
    new_groups = {g: list(m) for g, m in info.groups.items()}
    for g, members in (groups or {}).items():
        if g.strip().lower() in low:
            raise ValueError(f"vocab.groups: {g!r} is already a class name; give the group a name of its own")
        bad = [m for m in members if m.strip().lower() not in low]
        if bad or not members:
            raise ValueError(f"vocab.groups.{g}: {'unknown class(es) ' + repr(bad) if bad else 'no classes'}; "
                             f"known classes: {', '.join(info.classes)}")
        old = next((k for k in new_groups if k.lower() == g.strip().lower()), g.strip())
        new_groups[old] = [low[m.strip().lower()] for m in members]
    owners = {**low, **{g.lower(): g for g in new_groups}}
    new_syn = {k: list(v) for k, v in info.synonyms.items()}
    for owner, words in (synonyms or {}).items():
        if owner.strip().lower() not in owners:
            raise ValueError(f"vocab.synonyms: {owner!r} is neither a class nor a group; classes: "
                             f"{', '.join(info.classes)}; groups: {', '.join(new_groups) or '(none)'}")
        key = owners[owner.strip().lower()]
        key = next((k for k in new_syn if k.lower() == key.lower()), key)
        new_syn[key] = list(dict.fromkeys([*new_syn.get(key, []), *words]))
    out = DatasetInfo.from_dict({**info.to_dict(), "groups": new_groups, "synonyms": new_syn})
    Vocabulary(out)  # a phrase that names two things fails here, naming both
    return out


def checkpoint_vocabulary(path: str | Path) -> DatasetInfo:
    """A checkpoint's vocabulary: its dataset.json, extended by the [vocab] section of its config.json."""
    from .config import config_from_dict
    from .io import ArtifactError, read_json
    from .model import resolve_checkpoint

    p = resolve_checkpoint(path)
    if not (p / "dataset.json").is_file():
        raise ArtifactError(f"{p}: no dataset.json; is this a hypersan checkpoint directory?")
    info = DatasetInfo.from_dict(read_json(p / "dataset.json"))
    if (p / "config.json").is_file():
        vocab = config_from_dict({"vocab": read_json(p / "config.json").get("vocab", {})}).vocab
        info = extend_vocabulary(info, vocab.synonyms, vocab.groups)
    return info


# ---------------------------------------------------------------- the grounder

@dataclass
class _Item:
    kind: str  # match | sep | excl | all | filler | content
    start: int  # token index range
    end: int
    entry: _Entry | None = None


class Grounder:
    """Grounds requests against one vocabulary; the encoder (default: the bundled MiniLM) loads on first need.

    `encoder` is an Encoder, a function returning one (called on first need), or None for the shared default.
    """

    def __init__(self, info: DatasetInfo | Vocabulary, encoder: "Encoder | Callable[[], Encoder] | None" = None,
                 accept: float = EMBED_ACCEPT, narrow: float = EMBED_NARROW, fuzzy: float = FUZZY_ACCEPT,
                 background: Sequence[str] = BACKGROUND):
        self.vocab = info if isinstance(info, Vocabulary) else Vocabulary(info)
        self._encoder = encoder
        self.accept, self.narrow, self.fuzzy = accept, narrow, fuzzy
        self.background = [b for b in background if self.vocab.lookup([t for t, _, _ in tokenize(b)]) is None]
        self._phrase_emb: np.ndarray | None = None
        self._bg_emb: np.ndarray | None = None

    @property
    def encoder(self) -> "Encoder":
        """The sentence encoder, loading the shared default on first use."""
        if self._encoder is None:
            from .text import default_encoder
            self._encoder = default_encoder()
        elif not hasattr(self._encoder, "encode") and callable(self._encoder):
            self._encoder = self._encoder()
        return self._encoder

    def warmup(self) -> "Grounder":
        """Load the encoder and embed the vocabulary and background phrases now, not on the first request."""
        if self._phrase_emb is None:
            self._phrase_emb = self.encoder.encode(self.vocab.phrases)
        if self._bg_emb is None:
            bg = self.encoder.encode(self.background) if self.background else np.zeros((0, self._phrase_emb.shape[1]))
            near = (bg @ self._phrase_emb.T).max(axis=1) if len(bg) else np.zeros(0)
            self._bg_emb = bg[near < BACKGROUND_DROP].astype(np.float32)
        return self

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(texts x phrases) and (texts x background objects) cosine similarities."""
        self.warmup()
        q = self.encoder.encode(texts)
        return q @ self._phrase_emb.T, q @ self._bg_emb.T

    def _best_targets(self, sims: np.ndarray) -> list[tuple[_Entry, float]]:
        """Targets by their best phrase similarity, best first (one row of similarities)."""
        best: dict[str, tuple[_Entry, float]] = {}
        for e, s in zip(self.vocab.phrase_entries, sims):
            if e.target not in best or s > best[e.target][1]:
                best[e.target] = (e, float(s))
        return sorted(best.values(), key=lambda x: -x[1])

    def nearest_classes(self, text: str, k: int = 3) -> list[tuple[str, float]]:
        """The k classes whose own phrases are most similar to text, best first."""
        sims, _ = self._embed([text])
        per_class: dict[str, float] = {}
        for e, s in zip(self.vocab.phrase_entries, sims[0]):
            if e.how in ("name", "synonym"):
                per_class[e.target] = max(per_class.get(e.target, -1.0), float(s))
        return sorted(per_class.items(), key=lambda x: -x[1])[:k]

    def _fuzzy(self, text: str) -> tuple[_Entry, float] | None:
        key = " ".join(lemma(t) for t, _, _ in tokenize(text))
        if len(key) < FUZZY_MIN_LEN:
            return None
        best = None
        for k, e in self.vocab.fuzzy_keys.items():
            if abs(len(k) - len(key)) > 3:
                continue
            r = difflib.SequenceMatcher(None, key, k).ratio()
            if r >= self.fuzzy and (best is None or r > best[1]):
                best = (e, r)
        return best

    def _scan(self, toks: list[str]) -> list[_Item]:
        """Longest-match the vocabulary over the tokens, then sort the rest by role."""
        items: list[_Item] = []
        i, n = 0, len(toks)
        while i < n:
            for length in range(min(self.vocab.max_len, n - i), 0, -1):
                e = self.vocab.lookup(toks[i:i + length])
                if e is not None:
                    items.append(_Item("match", i, i + length, e))
                    i += length
                    break
            else:
                t, lt = toks[i], lemma(toks[i])
                if t in SEPARATOR_TOKENS or t in CONNECTORS:
                    kind = "sep"
                elif t in EXCLUDERS:
                    kind = "excl"
                elif t in ALL_WORDS:
                    kind = "all"
                elif t in FILLER or lt in FILLER or t.isdigit():
                    kind = "filler"
                else:
                    kind = "content"
                items.append(_Item(kind, i, i + 1))
                i += 1
        return items

    def ground(self, request: str) -> Grounding:
        """The class set a request names; raises GroundingError naming what it could not understand."""
        vocab = self.vocab
        if not isinstance(request, str):
            raise TypeError(f"request must be a string, got {type(request).__name__}")
        tokens = tokenize(request)
        known = f"known classes: {', '.join(vocab.classes)}" + (f"; groups: {', '.join(vocab.groups)}" if vocab.groups else "")
        if not any(t not in SEPARATOR_TOKENS for t, _, _ in tokens):
            raise GroundingError(f"empty request {request!r}: name one or more classes ({known})", request)
        toks = [t for t, _, _ in tokens]

        # Token offsets index the NFKC-normalized text; quote the request's own words only where they align.
        aligned = len(unicodedata.normalize("NFKC", request)) == len(request)

        def request_chars(a: int, b: int) -> str:
            return request[a:b] if aligned else ""

        def text_of(a: int, b: int) -> str:
            return request[tokens[a][1]:tokens[b - 1][2]] if aligned else " ".join(toks[a:b])

        items = self._scan(toks)
        # Adjacent phrases where the second is a group holding the first ("upper body clothing") keep the first.
        kept: list[_Item] = []
        for it in items:
            if (it.kind == "match" and kept and kept[-1].kind == "match" and kept[-1].end == it.start
                    and it.entry.how == "group" and set(kept[-1].entry.classes) <= set(it.entry.classes)):
                kept[-1] = _Item("match", kept[-1].start, it.end, kept[-1].entry)
                continue
            kept.append(it)
        items = kept

        # Parts: each match, with content words just before it (or "for/in/of ..." just after) as its modifier;
        # and standalone runs of content words, trimmed of filler at both ends.
        parts: list[dict] = []  # {"start", "end", "entry" or None, "head": (a, b) of the phrase, "exclude"}
        excluding = False
        saw_all = False
        j = 0
        while j < len(items):
            it = items[j]
            if it.kind == "excl":
                excluding = True
                j += 1
                continue
            if it.kind == "all":
                saw_all = True
                j += 1
                continue
            if it.kind in ("sep", "filler"):
                j += 1
                continue
            if it.kind == "match":
                parts.append({"start": it.start, "end": it.end, "entry": it.entry, "head": (it.start, it.end),
                              "exclude": excluding})
                j += 1
                # "sneakers for running": a run after the phrase that starts with a preposition modifies it.
                if j < len(items) and items[j].kind == "filler" and toks[items[j].start] in PREPOSITIONS_AFTER:
                    k = j
                    while k < len(items) and items[k].kind in ("filler", "content"):
                        k += 1
                    if any(items[m].kind == "content" for m in range(j, k)):
                        last = max(m for m in range(j, k) if items[m].kind == "content")
                        parts[-1]["end"] = items[last].end
                        j = last + 1
                continue
            # a run of content (and filler) words
            k = j
            while k < len(items) and items[k].kind in ("content", "filler"):
                k += 1
            run = [m for m in range(j, k) if items[m].kind == "content"]
            a, b = items[run[0]].start, items[run[-1]].end
            if k < len(items) and items[k].kind == "match" and run[-1] == k - 1:
                nxt = items[k]  # modifier of the next phrase: "winter coats"
                # A hyphenated modifier that ends in a phrase ("high-top sneakers") modifies the phrase after it.
                if (k + 1 < len(items) and items[k + 1].kind == "match" and items[k + 1].start == nxt.end
                        and request_chars(tokens[nxt.start - 1][2], tokens[nxt.start][1]) == "-"):
                    nxt = items[k + 1]
                    k += 1
                parts.append({"start": a, "end": nxt.end, "entry": nxt.entry, "head": (nxt.start, nxt.end),
                              "exclude": excluding})
                j = k + 1
                continue
            parts.append({"start": a, "end": b, "entry": None, "head": None, "exclude": excluding})
            j = k

        # Ground what the vocabulary alone does not: standalone runs (spelling, then embedding) and
        # modified phrases (embedding may narrow "summer shoes" to one of the phrase's classes).
        to_embed = []
        for p in parts:
            if p["entry"] is None:
                fz = self._fuzzy(" ".join(toks[p["start"]:p["end"]]))
                if fz is not None:
                    p["entry"], p["how"], p["score"] = fz[0], "fuzzy", fz[1]
                    continue
                to_embed.append(p)
            elif (p["start"], p["end"]) != p["head"]:
                to_embed.append(p)
            else:
                p["how"], p["score"] = p["entry"].how, 1.0
        if to_embed:
            sims, bg_sims = self._embed([" ".join(toks[p["start"]:p["end"]]) for p in to_embed])
            for p, row, bg_row in zip(to_embed, sims, bg_sims):
                ranked = self._best_targets(row)
                if p["entry"] is None:
                    e, s = ranked[0]
                    if s >= self.accept and s > (bg_row.max() if len(bg_row) else -1.0):
                        p["entry"], p["how"], p["score"] = e, "embedding", s
                    continue
                head = p["entry"]
                head_score = next((s for e, s in ranked if e.target == head.target), 0.0)
                narrower = [(e, s) for e, s in ranked if set(e.classes) < set(head.classes)]
                if narrower and narrower[0][1] >= self.narrow and narrower[0][1] > head_score:
                    p["entry"], p["how"], p["score"] = narrower[0][0], "modifier", narrower[0][1]
                else:
                    p["how"], p["score"] = head.how, 1.0

        unknown = [p for p in parts if p["entry"] is None]
        if unknown:
            words = [text_of(p["start"], p["end"]) for p in unknown]
            near = self.nearest_classes(" ".join(toks[unknown[0]["start"]:unknown[0]["end"]]))
            quoted = ", ".join(f'"{w}"' for w in words)
            raise GroundingError(
                f"could not understand {quoted} in {request!r}: "
                f"{'it matches' if len(words) == 1 else 'they match'} no class or group of this model; nearest known "
                f"classes to \"{words[0]}\": {', '.join(f'{c} ({s:.2f})' for c, s in near)}. {known[0].upper() + known[1:]}",
                request, words, [c for c, _ in near], [s for _, s in near])

        matches = [Match(text_of(p["start"], p["end"]), p["entry"].target, p["entry"].classes, p["how"],
                         float(p["score"]), p["exclude"]) for p in parts]
        include = [m for m in matches if not m.exclude]
        if not include and saw_all:
            include = [Match("all", "*", tuple(vocab.classes), "all", 1.0)]
            matches = include + matches
        if not include:
            raise GroundingError(f"request {request!r} names no class ({'only exclusions' if matches else 'only filler words'}); "
                                 f"{known}", request)
        chosen: dict[str, float] = {}
        for m in include:
            for c in m.classes:
                chosen[c] = max(chosen.get(c, 0.0), m.score)
        for m in matches:
            if m.exclude:
                for c in m.classes:
                    chosen.pop(c, None)
        if not chosen:
            raise GroundingError(f"request {request!r} excludes every class it names", request)
        names = sorted(chosen, key=lambda c: vocab.class_index[c])
        return Grounding(request, names, tuple(vocab.class_index[c] for c in names), {c: chosen[c] for c in names}, matches)

    __call__ = ground


def ground(request: str, vocab: DatasetInfo | Vocabulary, encoder: "Encoder | None" = None, **thresholds) -> Grounding:
    """Ground one request in words to an explicit class set of vocab; raises GroundingError when it cannot."""
    return Grounder(vocab, encoder, **thresholds).ground(request)


def ground_many(requests: Iterable[str], vocab: DatasetInfo | Vocabulary, encoder: "Encoder | None" = None,
                **thresholds) -> list[Grounding | GroundingError]:
    """Ground several requests with one grounder; a failed request yields its GroundingError in place."""
    g = Grounder(vocab, encoder, **thresholds)
    out: list[Grounding | GroundingError] = []
    for r in requests:
        try:
            out.append(g.ground(r))
        except GroundingError as e:
            out.append(e)
    return out
