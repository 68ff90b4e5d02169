"""Budgets said in words: "shoes and bags, under 10% of the compute" -> ("shoes and bags", 0.1).

A budget is the largest MAC ratio of the subnet to the dense net. A request may state one in any of these forms
(case does not matter):
- a percentage with a limit word: "under 10% of the compute", "at most 15 percent of the MACs", "within 5%";
- a fraction: "at most a fifth of the MACs", "a tenth of the compute", "one third of the FLOPs";
- a ratio: "budget 0.1", "a budget of 0.25", "0.2 of the compute", "MAC ratio 0.3";
- the ends: "as small as possible" / "smallest" (the model's smallest budget) and "full accuracy" / "no limit" /
  "full compute" (1, no limit).
A request that mentions compute (a cue word such as "compute", "MACs", "FLOPs", "budget", "%") in no form above is
refused, like an unknown class: its budget was meant, and a guess would be wrong.
"""
from __future__ import annotations

import re
from typing import Optional

from .grounding import GroundingError

SMALLEST = "smallest"  # the budget of "as small as possible": the model's own minimum, decided by the caller

_COST = r"(?:the\s+)?(?:compute|computation|macs?|flops?|operations|ops|cost|dense\s+(?:net|model|network)|" \
        r"full\s+(?:net|model|network|size)|size)"
_LIMIT = r"(?:under|below|within|at\s+most|up\s+to|no\s+more\s+than|less\s+than|not\s+over|max(?:imum)?|<=?)"
_FRACTIONS = {"half": 2, "third": 3, "quarter": 4, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
              "ninth": 9, "tenth": 10, "twentieth": 20, "fiftieth": 50, "hundredth": 100}
_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"

_FORMS: list[tuple[re.Pattern, str]] = [
    (re.compile(rf"\b(?:{_LIMIT}\s*)?{_NUMBER}\s*(?:%|\s+percent\b|\s+per\s*cent\b)(?:\s+of\s+{_COST})?"
                r"(?:\s+budget)?", re.I), "percent"),
    (re.compile(rf"\b(?:{_LIMIT}\s+)?(?:a|one)\s+({'|'.join(_FRACTIONS)})\s+of\s+{_COST}\b", re.I), "fraction"),
    (re.compile(rf"\b(?:with\s+)?(?:a\s+)?(?:mac\s+ratio|budget)\s+(?:of\s+)?(?:{_LIMIT}\s+)?{_NUMBER}\b", re.I),
     "ratio"),
    (re.compile(rf"\b(?:{_LIMIT}\s+)?{_NUMBER}\s+of\s+{_COST}\b", re.I), "ratio"),
    (re.compile(r"\b(?:as\s+small|as\s+cheap|as\s+fast)\s+as\s+possible\b|\b(?:the\s+)?smallest(?:\s+possible)?"
                r"(?:\s+(?:net|model|network|subnet))?\b|\bminimal\s+compute\b", re.I), "smallest"),
    (re.compile(r"\bfull\s+(?:accuracy|compute|size|budget)\b|\bno\s+(?:limit|budget)\b|\bunlimited\b", re.I),
     "full"),
]
_CUES = re.compile(r"%|\b(?:compute|computation|macs?|flops?|budget|percent|cheap(?:er)?|small(?:er|est)?\s+as|"
                   r"mac\s+ratio)\b", re.I)
_LEFTOVER = re.compile(r"^[\s,;:.\-]+|[\s,;:.\-]+$|\s+(?:with|at|in|using|for)$", re.I)


def split_budget(request: str) -> tuple[str, Optional[float | str]]:
    """(the request without its budget phrase, the budget): a number in (0, 1], SMALLEST, or None when the request
    states none. Raises GroundingError when it mentions compute in a form it cannot read, or states two budgets."""
    found: list[tuple[int, int, float | str]] = []
    for pattern, kind in _FORMS:
        for m in pattern.finditer(request):
            if any(a < m.end() and m.start() < b for a, b, _ in found):
                continue  # part of a phrase read already
            found.append((m.start(), m.end(), _value(kind, m, request)))
    if len(found) > 1:
        said = ", ".join(repr(request[a:b].strip()) for a, b, _ in sorted(found))
        raise GroundingError(f"{request!r} states more than one budget ({said}); state one", request,
                             unknown=[request[a:b].strip() for a, b, _ in found])
    rest = request
    if found:
        a, b, _ = found[0]
        rest = request[:a] + " " + request[b:]
    cue = _CUES.search(rest)
    if cue:
        raise GroundingError(
            f"could not understand the budget in {request!r} (it mentions {cue.group(0)!r}): state it as 'under 10% "
            "of the compute', 'at most a fifth of the MACs', 'budget 0.1', 'as small as possible' or 'full accuracy'",
            request, unknown=[rest.strip()])
    for _ in range(3):  # "shoes and bags, with" -> "shoes and bags"
        rest = _LEFTOVER.sub("", rest.strip())
    rest = re.sub(r"\s+", " ", rest).strip()
    return rest, (found[0][2] if found else None)


def _value(kind: str, m: re.Match, request: str) -> float | str:
    if kind == "smallest":
        return SMALLEST
    if kind == "full":
        return 1.0
    if kind == "fraction":
        value = 1.0 / _FRACTIONS[m.group(1).lower()]
    else:
        value = float(m.group(1)) / (100.0 if kind == "percent" else 1.0)
    if not 0 < value <= 1:
        raise GroundingError(f"the budget {m.group(0).strip()!r} in {request!r} is not a share of the dense net's "
                             "MACs between 0 and 100%", request, unknown=[m.group(0).strip()])
    return value


__all__ = ["split_budget", "SMALLEST"]
