"""The vocabulary of a dataset for grounding requests: tokens, singular forms, and phrase lookup.

A Vocabulary indexes a DatasetInfo's class names, synonyms and group names for longest-match lookup, ignoring
case and plural forms; `extend_vocabulary` adds a config's [vocab] section to a DatasetInfo.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from ..info import DatasetInfo, known_names
from .words import SEPARATOR_TOKENS

__all__ = ["normalize", "tokenize", "lemma", "Vocabulary", "extend_vocabulary"]

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'"})
_SEPARATOR_CHARS = frozenset(t for t in SEPARATOR_TOKENS if len(t) == 1)


def _lower(c: str) -> str:
    """c in lower case, always one character, so that token offsets keep indexing the text they came from."""
    low = c.lower()
    if len(low) == 1:
        return low
    # "İ".lower() is "i" plus a combining dot above: keep the letter, drop the mark.
    base = "".join(x for x in unicodedata.normalize("NFD", low) if not unicodedata.combining(x))
    return base if len(base) == 1 else c


def _is_word(c: str) -> bool:
    # Letters, digits and combining marks of any script: a word in Cyrillic, Arabic or Devanagari stays one token
    # (and is then reported as not understood, rather than dropped).
    return unicodedata.category(c)[0] in "LNM"


def _is_symbol(c: str, inside: bool) -> bool:
    # Pictographs (emoji) are tokens too, so "sneakers and 👜" is not silently read as "sneakers"; joiners,
    # variation selectors and skin-tone modifiers continue a pictograph.
    cat = unicodedata.category(c)
    return cat == "So" or (inside and cat in ("Sk", "Mn", "Me", "Cf"))


def normalize(text: str) -> str:
    """The text that tokenize() reads (NFKC, curly quotes straightened); its token spans index this text."""
    return unicodedata.normalize("NFKC", text).translate(_QUOTES)


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Lower-case word, symbol and separator tokens of text, each with its character span in normalize(text)."""
    norm = normalize(text)
    low = "".join(_lower(c) for c in norm)  # one character per character: offsets index norm
    out: list[tuple[str, int, int]] = []
    i, n = 0, len(low)
    while i < n:
        c = low[i]
        if c in _SEPARATOR_CHARS:
            out.append((c, i, i + 1))
            i += 1
        elif _is_word(c):
            j = i + 1
            while j < n and (_is_word(low[j]) or (low[j] == "'" and j + 1 < n and _is_word(low[j + 1]))):
                j += 1
            out.append((low[i:j].replace("'", ""), i, j))
            i = j
        elif _is_symbol(c, False):
            j = i + 1
            while j < n and _is_symbol(low[j], True):
                j += 1
            out.append((low[i:j], i, j))
            i = j
        else:
            i += 1
    return out


def is_cased_letter(text: str) -> bool:
    """One letter that has an upper and a lower case ("A", "a", "б"): such a phrase is matched case-sensitively."""
    return len(text) == 1 and text.lower() != text.upper()


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
class Entry:
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
                raise ValueError(f"group {g!r} names unknown class(es) {bad}; {known_names(self.classes, near=bad[0])}")
            groups[g] = tuple(sorted({low[m.lower()] for m in members}, key=lambda c: self.class_index[c]))
        self.groups = groups
        entries: list[Entry] = [Entry(c, c, (c,), "name") for c in self.classes]
        glow = {g.lower(): g for g in groups}
        syn_entries = []
        for owner, words in info.synonyms.items():
            if owner.lower() in low:
                c = low[owner.lower()]
                syn_entries += [Entry(w, c, (c,), "synonym") for w in words]
            elif owner.lower() in glow:
                g = glow[owner.lower()]
                syn_entries += [Entry(w, g, groups[g], "group") for w in words]
            else:
                raise ValueError(f"synonyms given for {owner!r}, which is neither a class nor a group; "
                                 f"classes: {', '.join(self.classes)}; groups: {', '.join(groups) or '(none)'}")
        entries += [e for e in syn_entries if e.how == "synonym"]
        entries += [Entry(g, g, cs, "group") for g, cs in groups.items()]
        entries += [e for e in syn_entries if e.how == "group"]
        # A phrase of one cased letter ("A", "a", "Б") names its class with its case: looked up as written
        self.cased: dict[str, Entry] = {}
        for e in [e for e in entries if is_cased_letter(e.phrase)]:
            prev = self.cased.setdefault(e.phrase, e)
            if prev.classes != e.classes:
                raise ValueError(f"{e.phrase!r} would stand for both {prev.target!r} and {e.target!r}; "
                                 "a phrase may name only one class or group")
        entries = [e for e in entries if not is_cased_letter(e.phrase)]
        self.entries = entries
        self.exact: dict[tuple[str, ...], Entry] = {}
        self.singular: dict[tuple[str, ...], Entry] = {}
        explicit: dict[tuple[str, ...], Entry] = {}
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
        # Words naming what the data set lacks (a phrase of the vocabulary may still use one: "Arabic numerals")
        self.outside = {lemma(t) for w in info.outside for t, _, _ in tokenize(w)}

    def lookup(self, toks: Sequence[str]) -> Entry | None:
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
                             f"{known_names(info.classes, near=bad[0] if bad else None)}")
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

