"""Grounding: a request in words ("shoes and handbags") -> an explicit set of the dataset's classes.

Three passes over the request:
1. Lexical: the longest phrases of the vocabulary (class names, synonyms, group names) are matched, ignoring case
   and plural forms (hypersan.language.vocabulary).
2. What is left is sorted into separators ("and", "vs", ","), exclusions ("except"), filler ("I need a model for")
   and content words (hypersan.language.words). Content words right before a matched phrase modify it ("winter coats");
   others must be grounded on their own: by a near spelling of a vocabulary word, or by sentence-embedding
   similarity to the vocabulary's phrases above a calibrated threshold.
3. Any part that cannot be grounded rejects the whole request, naming that part and the nearest classes. So does
   a guess (spelling or embedding) that repeats what another part names ("tops and bottoms" must not read
   "bottoms" as "tops"), a modifier that takes its phrase to another object ("airplane bags"), an exclusion word
   with nothing after it ("everything except"), and a request whose exclusions leave nothing.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

import numpy as np

from ..info import LIST_LIMIT, DatasetInfo, known_names
from .vocabulary import Vocabulary, Entry, extend_vocabulary, lemma, normalize, tokenize
from .words import (ALL_WORDS, BACKGROUND, BACKGROUND_DROP, CONNECTORS, EMBED_ACCEPT, EMBED_NARROW, EXCLUDERS, FILLER,
                    FUZZY_ACCEPT, FUZZY_MIN_LEN, PREPOSITIONS_AFTER, SEPARATOR_TOKENS)

if TYPE_CHECKING:  # pragma: no cover
    from .text import Encoder

__all__ = ["GroundingError", "Match", "Grounding", "Grounder", "ground", "ground_many",
           # re-exported from hypersan.language.vocabulary for code that imported them from here
           "tokenize", "lemma", "Vocabulary", "extend_vocabulary"]


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


# ---------------------------------------------------------------- the grounder

_ALL = "*"  # the target of "everything"


@dataclass
class _Item:
    kind: str  # match | sep | excl | all | filler | content
    start: int  # token index range
    end: int
    entry: Entry | None = None


@dataclass
class _Part:
    """A part of the request to ground: a phrase (maybe modified), or a run of content words."""

    start: int  # token index range of all its words
    end: int
    entry: Entry | None  # what it stands for; None while (or when) not understood
    head: tuple[int, int] | None  # token range of the vocabulary phrase, None for a run of content words
    exclude: bool
    how: str = ""
    score: float = 0.0
    why: str = ""  # why it was not understood, when there is more to say than "it matches nothing"
    unnarrowed: Entry | None = None  # the phrase a modifier narrowed, to fall back on


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
        self._bg_names: list[str] = []
        self._everything = Entry("everything", _ALL, tuple(self.vocab.classes), "all")

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
            self._bg_names = [b for b, s in zip(self.background, near) if s < BACKGROUND_DROP]
            self._bg_emb = bg[near < BACKGROUND_DROP].astype(np.float32)
        return self

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(texts x phrases) and (texts x background objects) cosine similarities."""
        self.warmup()
        q = self.encoder.encode(texts)
        return q @ self._phrase_emb.T, q @ self._bg_emb.T

    def _best_targets(self, sims: np.ndarray) -> list[tuple[Entry, float]]:
        """Targets by their best phrase similarity, best first (one row of similarities)."""
        best: dict[str, tuple[Entry, float]] = {}
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

    def _fuzzy(self, text: str) -> tuple[Entry, float] | None:
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

    def _scan(self, toks: list[str], gaps: list[str], orig: Optional[list[str]] = None) -> list[_Item]:
        """Longest-match the vocabulary over the tokens, then sort the rest by role.

        gaps[i] is the text between token i - 1 and token i ("-" inside "button-up"); orig[i] is token i as
        written (its case), for vocabularies with one-letter phrases ("A" and "a" are two classes of glyphs).
        """
        items: list[_Item] = []
        i, n = 0, len(toks)
        orig = orig or toks
        while i < n:
            cased = self.vocab.cased.get(orig[i]) if self.vocab.cased else None
            # a lone letter names its class unless a longer phrase starts there ("small a") or a word follows it
            # ("a bag", "I need": an article or a pronoun)
            if cased is not None and not any(self.vocab.lookup(toks[i:i + k]) for k in range(2, self.vocab.max_len + 1)
                                             if i + k <= n):
                nxt = orig[i + 1] if i + 1 < n else ""
                if not nxt or len(nxt) == 1 or nxt in SEPARATOR_TOKENS or nxt.lower() in CONNECTORS:
                    if items and items[-1].kind == "match" and items[-1].end == i and \
                            [lemma(t) for t in toks[items[-1].start:i]] == ["letter"]:
                        items.pop()  # "the letter q", "letters A and B": the word introduces the letters
                    items.append(_Item("match", i, i + 1, cased))
                    i += 1
                    continue
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
                elif t == "but":
                    # "everything but bags" excludes; "nothing but sneakers" and "sneakers but also bags" do not.
                    after = toks[i + 1] if i + 1 < n else ""
                    kind = "sep" if (i and toks[i - 1] == "nothing") or after in ("also", "too") else "excl"
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
        # A filler word hyphenated to a content word is part of it ("button-up shirts", "slip-on shoes"):
        # left as filler, it would cut the modifier off from its phrase. Two sweeps join chains from either end.
        for _ in range(2):
            for a, b in zip(items, items[1:]):
                if gaps[b.start] == "-" and {a.kind, b.kind} == {"filler", "content"}:
                    a.kind = b.kind = "content"
        return items

    def _parts(self, items: list[_Item], toks: list[str], gaps: list[str]) -> tuple[list[_Part], bool, int | None]:
        """The request's parts, whether it says "all" on its own, and the token of a trailing exclusion word.

        A part is each phrase, with content words just before it (or "for/in/of ..." just after) as its modifier,
        and each standalone run of content words, trimmed of filler at both ends.
        """
        parts: list[_Part] = []
        excluding = saw_all = False
        dangling: int | None = None  # an exclusion word that no part has followed yet
        all_excluded: int | None = None  # "everything except everything": the token of an "all" after an exclusion
        j = 0
        while j < len(items):
            it = items[j]
            if it.kind == "excl":
                excluding = True
                dangling = it.start if dangling is None else dangling
                j += 1
                continue
            if it.kind == "all":
                if excluding:
                    all_excluded = it.start  # undone if a part follows: "except all the footwear" excludes footwear
                else:
                    saw_all = True
                j += 1
                continue
            if it.kind in ("sep", "filler"):
                j += 1
                continue
            dangling = all_excluded = None
            if it.kind == "match":
                part = _Part(it.start, it.end, it.entry, (it.start, it.end), excluding)
                parts.append(part)
                j += 1
                # "sneakers for running": a run after the phrase that starts with a preposition modifies it.
                if j < len(items) and items[j].kind == "filler" and toks[items[j].start] in PREPOSITIONS_AFTER:
                    k = j
                    while k < len(items) and items[k].kind in ("filler", "content"):
                        k += 1
                    if any(items[m].kind == "content" for m in range(j, k)):
                        last = max(m for m in range(j, k) if items[m].kind == "content")
                        part.end = items[last].end
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
                        and gaps[nxt.start] == "-"):
                    nxt = items[k + 1]
                    k += 1
                parts.append(_Part(a, nxt.end, nxt.entry, (nxt.start, nxt.end), excluding))
                j = k + 1
                continue
            parts.append(_Part(a, b, None, None, excluding))
            j = k
        if all_excluded is not None:
            a = all_excluded
            parts.append(_Part(a, a + 1, self._everything, (a, a + 1), True, "all", 1.0))
            dangling = None
        return parts, saw_all, dangling

    def _resolve(self, parts: list[_Part], toks: list[str]) -> None:
        """Ground what the vocabulary alone does not, in place.

        Standalone runs: by spelling, then by embedding. Modified phrases: embedding may narrow "summer shoes" to
        one of the phrase's classes, and a modifier that takes the phrase nearer to a common object than to any
        class ("airplane bags") leaves the part not understood.
        """
        to_embed = []
        for p in parts:
            if p.how:
                continue
            if p.entry is None:
                fz = self._fuzzy(" ".join(toks[p.start:p.end]))
                if fz is not None:
                    p.entry, p.how, p.score = fz[0], "fuzzy", fz[1]
                    continue
                to_embed.append(p)
            elif (p.start, p.end) != p.head:
                to_embed.append(p)
            else:
                p.how, p.score = p.entry.how, 1.0
        if not to_embed:
            return
        sims, bg_sims = self._embed([" ".join(toks[p.start:p.end]) for p in to_embed])
        for p, row, bg_row in zip(to_embed, sims, bg_sims):
            ranked = self._best_targets(row)
            bg_best = int(bg_row.argmax()) if len(bg_row) else -1
            bg = float(bg_row[bg_best]) if len(bg_row) else -1.0
            if p.entry is None:
                e, s = ranked[0]
                if s >= self.accept and s > bg:
                    p.entry, p.how, p.score = e, "embedding", s
                continue
            head = p.entry
            if ranked[0][1] <= bg:
                # The same test as for a part on its own: nearer to a common object than to every phrase of the
                # vocabulary, the modified phrase is about something else ("airplane bags").
                p.entry = None
                p.why = (f"is nearer to {self._bg_names[bg_best]!r} ({bg:.2f}) than to any class or group "
                         f"(best: {ranked[0][0].target!r}, {ranked[0][1]:.2f}): the words around "
                         f"{' '.join(toks[p.head[0]:p.head[1]])!r} change what it names")
                continue
            head_score = next((s for e, s in ranked if e.target == head.target), 0.0)
            narrower = [(e, s) for e, s in ranked if set(e.classes) < set(head.classes)]
            if narrower and narrower[0][1] >= self.narrow and narrower[0][1] > head_score:
                p.entry, p.how, p.score, p.unnarrowed = narrower[0][0], "modifier", narrower[0][1], head
            else:
                p.how, p.score = head.how, 1.0

    def _refuse_outside(self, parts: list[_Part], toks: list[str]) -> None:
        """A part whose words name something the data set lacks ("Hebrew letters" of a Latin, Greek and Cyrillic
        set) is not understood: widened to its phrase ("letters") it would answer another request."""
        if not self.vocab.outside:
            return
        for p in parts:
            head = range(*p.head) if p.head else range(0)  # the phrase itself ("Arabic numerals") may use one
            hit = next((toks[i] for i in range(p.start, p.end)
                        if i not in head and lemma(toks[i]) in self.vocab.outside), None)
            if hit is not None:
                p.entry = None
                p.why = f"names {hit!r}, which this model has no classes of"

    @staticmethod
    def _refuse_duplicate_guesses(parts: list[_Part], text_of: Callable[[int, int], str]) -> None:
        """Unground guesses that repeat what another part of the request names, in place.

        A guess (by spelling or embedding) that lands on classes the request already names is a sign that its
        words mean something else: "tops and bottoms" must not read "bottoms" as a second "tops". A guess
        repeats a part on its own side (both included, or both excluded) when they share a class, and a part on
        the other side when both name the same classes ("tops except bottoms"); an exclusion inside what is
        included ("shoes except sandels") is what exclusions are for.
        """
        def repeats(p: _Part, q: _Part) -> bool:
            if q is p or q.entry is None:
                return False
            mine, theirs = set(p.entry.classes), set(q.entry.classes)
            return bool(mine & theirs) if p.exclude == q.exclude else mine == theirs

        # A narrowed modifier falls back to its own phrase: the phrase was named, only the narrowing was a guess.
        for p in parts:
            if p.unnarrowed is not None and any(repeats(p, q) for q in parts):
                p.entry, p.how, p.score = p.unnarrowed, p.unnarrowed.how, 1.0
        dup = {id(p): [text_of(q.start, q.end) for q in parts if repeats(p, q)]
               for p in parts if p.how in ("fuzzy", "embedding")}
        for p in parts:
            named = dup.get(id(p))
            if named:
                p.why = (f"looks most like {p.entry.target!r} ({p.how} {p.score:.2f}), which repeats classes that "
                         f"{' and '.join(f'{w!r}' for w in named)} already {'names' if len(named) == 1 else 'name'}, "
                         "so it likely means something else")
                p.entry, p.how = None, ""

    def ground(self, request: str) -> Grounding:
        """The class set a request names; raises GroundingError naming what it could not understand."""
        vocab = self.vocab
        if not isinstance(request, str):
            raise TypeError(f"request must be a string, got {type(request).__name__}")
        tokens = tokenize(request)
        # the listing hint once: after the groups where their list is cut too
        known = known_names(vocab.classes, hint=len(vocab.groups) <= LIST_LIMIT)
        if vocab.groups:
            known += f"; {known_names(list(vocab.groups), 'groups')}"
        if not any(t not in SEPARATOR_TOKENS for t, _, _ in tokens):
            raise GroundingError(f"empty request {request!r}: name one or more classes ({known})", request)
        toks = [t for t, _, _ in tokens]
        norm = normalize(request)
        gaps = [""] + [norm[tokens[i - 1][2]:tokens[i][1]] for i in range(1, len(tokens))]

        # Token offsets index the NFKC-normalized text; quote the request's own words only where they align.
        aligned = len(norm) == len(request)

        def text_of(a: int, b: int) -> str:
            return request[tokens[a][1]:tokens[b - 1][2]] if aligned else " ".join(toks[a:b])

        items = self._scan(toks, gaps, [norm[a:b] for _, a, b in tokens])
        # Adjacent phrases where the second is a group holding the first ("upper body clothing") keep the first.
        kept: list[_Item] = []
        for it in items:
            if (it.kind == "match" and kept and kept[-1].kind == "match" and kept[-1].end == it.start
                    and it.entry.how == "group" and set(kept[-1].entry.classes) <= set(it.entry.classes)):
                kept[-1] = _Item("match", kept[-1].start, it.end, kept[-1].entry)
                continue
            kept.append(it)
        parts, saw_all, dangling = self._parts(kept, toks, gaps)
        if dangling is not None:
            word = text_of(dangling, len(toks))  # the exclusion words and whatever filler follows them
            raise GroundingError(f"request {request!r} ends in \"{word}\" with nothing after it to leave out: name "
                                 f"what to exclude (\"everything except bags\") or drop \"{word}\"", request, [word])

        self._resolve(parts, toks)
        self._refuse_outside(parts, toks)
        self._refuse_duplicate_guesses(parts, text_of)
        unknown = [p for p in parts if p.entry is None]
        if unknown:
            words = [text_of(p.start, p.end) for p in unknown]
            near = self.nearest_classes(" ".join(toks[unknown[0].start:unknown[0].end]))
            quoted = ", ".join(f'"{w}"' for w in words)
            if any(p.why for p in unknown):
                why = "; ".join(f'"{w}" {p.why or "matches no class or group of this model"}'
                                for w, p in zip(words, unknown))
            else:
                why = f"{'it matches' if len(words) == 1 else 'they match'} no class or group of this model"
            raise GroundingError(
                f"could not understand {quoted} in {request!r}: {why}; nearest known classes to \"{words[0]}\": "
                f"{', '.join(f'{c} ({s:.2f})' for c, s in near)}. {known[0].upper() + known[1:]}. Name classes or "
                "groups from these, or add your words as synonyms ([vocab.synonyms] in the config)",
                request, words, [c for c, _ in near], [s for _, s in near])

        matches = [Match(text_of(p.start, p.end), p.entry.target, p.entry.classes, p.how, float(p.score), p.exclude)
                   for p in parts]
        include = [m for m in matches if not m.exclude]
        if not include and saw_all:
            include = [Match("all", _ALL, tuple(vocab.classes), "all", 1.0)]
            matches = include + matches
        if not include:
            what = "only exclusions" if matches else "only filler words"
            raise GroundingError(f"request {request!r} names no class ({what}); {known}", request)
        chosen: dict[str, float] = {}
        for m in include:
            for c in m.classes:
                chosen[c] = max(chosen.get(c, 0.0), m.score)
        for m in matches:
            if m.exclude:
                for c in m.classes:
                    chosen.pop(c, None)
        if not chosen:
            named = sorted({c for m in include for c in m.classes}, key=lambda c: vocab.class_index[c])
            raise GroundingError(f"request {request!r} excludes every class it includes ({', '.join(named)}), "
                                 "leaving nothing to recognize: drop the exclusion or name more classes", request)
        names = sorted(chosen, key=lambda c: vocab.class_index[c])
        return Grounding(request, names, tuple(vocab.class_index[c] for c in names), {c: chosen[c] for c in names},
                         matches)

    __call__ = ground


def ground(request: str, vocab: DatasetInfo | Vocabulary, encoder: "Encoder | None" = None,
           **thresholds) -> Grounding:
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
