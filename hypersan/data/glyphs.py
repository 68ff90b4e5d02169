"""`glyphs`: a many-class character data set rendered from real fonts (digits, Latin, Greek, Cyrillic).

    hypersan data glyphs --out data/glyphs [--fonts FILE|DIR ...] [--seed 0] [--all-test]

One class per distinct shape: Latin A, Greek Alpha and Cyrillic A are one class (`A`); a Greek or Cyrillic
letter is a class of its own only where its shape differs from every Latin letter (and Greek Gamma and Cyrillic
Ghe, say, are one class). Letters that stay ambiguous across fonts (l, I, 1; O, 0) remain separate classes.

Every glyph is drawn in a fixed em box at a fixed baseline, so size and position tell c from C and o from O,
then varied the way scans and photos vary (rotation, scale, shear, shift, perspective, stroke width, blur,
contrast, noise), as 32 x 32 grayscale uint8 images, white on black. A glyph comes only from a font whose
character map holds it: no fallback glyphs, no empty boxes. Splits are by font family (every weight and style of
a family in one split), seeded. The same font files and seed give the same bytes. Needs Pillow and fontTools
(`pip install 'hypersan[glyphs]'`).
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

SIZE = 32  # output images: SIZE x SIZE
SCALE = 4  # rendered at SCALE x the output size, then reduced (anti-aliasing)
EM = 24  # the em box, in output pixels
BASELINE = 24  # the baseline's row, in output pixels from the top
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
# where Debian's font packages install (configs/glyph-fonts.txt pins which): the default --fonts
DEFAULT_FONT_DIRS = ("/usr/share/fonts/truetype", "/usr/share/fonts/opentype")
MIN_LATIN = 52  # a font whose character map lacks Latin letters or digits is no text font (symbols, dingbats)


@dataclass(frozen=True)
class GlyphClass:
    name: str  # what a person would say: "digit 7", "capital A", "Greek small alpha"
    char: str  # the character drawn
    script: str  # "digit", "latin", "greek", "cyrillic"
    case: str  # "capital", "small", "" for digits
    words: tuple[str, ...] = ()  # synonyms: "7", "A", "uppercase A", ...


def _latin() -> list[GlyphClass]:
    out = [GlyphClass(f"digit {d}", str(d), "digit", "", (str(d), f"number {d}")) for d in range(10)]
    for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        out.append(GlyphClass(f"capital {c}", c, "latin", "capital", (c, f"uppercase {c}", f"upper case {c}")))
    for c in "abcdefghijklmnopqrstuvwxyz":
        out.append(GlyphClass(f"small {c}", c, "latin", "small", (c, f"lowercase {c}", f"lower case {c}")))
    return out


# Greek letters whose shapes differ from every Latin letter (Alpha, Beta, Epsilon, ... are Latin shapes; small
# omicron is o). Names as a person says them.
_GREEK_CAPITAL = {"Γ": "Gamma", "Δ": "Delta", "Θ": "Theta", "Λ": "Lambda", "Ξ": "Xi", "Π": "Pi", "Σ": "Sigma",
                  "Φ": "Phi", "Ψ": "Psi", "Ω": "Omega"}
_GREEK_SMALL = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "ζ": "zeta", "η": "eta",
                "θ": "theta", "ι": "iota", "κ": "kappa", "λ": "lambda", "μ": "mu", "ξ": "xi", "π": "pi",
                "ρ": "rho", "σ": "sigma", "ς": "final sigma", "τ": "tau", "φ": "phi", "χ": "chi", "ψ": "psi",
                "ω": "omega"}
# Cyrillic letters whose shapes differ from every Latin and every Greek class above (Ghe is Gamma, Pe is Pi, Ef
# is Phi, small ka is kappa; a, e, o, p, c, y, x are Latin shapes).
_CYRILLIC_CAPITAL = {"Б": "Be", "Д": "De", "Ж": "Zhe", "З": "Ze", "И": "I", "Й": "Short I", "Л": "El", "Ц": "Tse",
                     "Ч": "Che", "Ш": "Sha", "Щ": "Shcha", "Ъ": "Hard sign", "Ы": "Yeru", "Ь": "Soft sign",
                     "Э": "E", "Ю": "Yu", "Я": "Ya"}
_CYRILLIC_SMALL = {"б": "be", "в": "ve", "г": "ghe", "д": "de", "ж": "zhe", "з": "ze", "и": "i", "й": "short i",
                   "л": "el", "м": "em", "н": "en", "п": "pe", "т": "te", "ф": "ef", "ц": "tse",
                   "ч": "che", "ш": "sha", "щ": "shcha", "ъ": "hard sign", "ы": "yeru", "ь": "soft sign",
                   "э": "e", "ю": "yu", "я": "ya"}


def glyph_classes() -> list[GlyphClass]:
    """The classes, in label order: digits, Latin capitals, Latin small, Greek, Cyrillic."""
    out = _latin()
    for table, case in ((_GREEK_CAPITAL, "capital"), (_GREEK_SMALL, "small")):
        out += [GlyphClass(f"Greek {case} {n}", c, "greek", case, (c,)) for c, n in table.items()]
    for table, case in ((_CYRILLIC_CAPITAL, "capital"), (_CYRILLIC_SMALL, "small")):
        out += [GlyphClass(f"Cyrillic {case} {n}", c, "cyrillic", case, (c,)) for c, n in table.items()]
    return out


def case_key(name: str) -> str:
    """A class name with its case dropped: "capital A" and "small a" give "a", "Greek capital Sigma" and "Greek
    small sigma" give "greek sigma"; digits and other names stay as they are (lower-cased). Case-insensitive
    accuracy counts a prediction right when its key is the label's."""
    words = [w for w in name.lower().split() if w not in ("capital", "small")]
    return " ".join(words)


def case_insensitive_accuracy(predicted: Sequence[int], labels: Sequence[int], class_names: Sequence[str]) -> float:
    """The share of images whose predicted class is the label's class up to case (case_key)."""
    keys = [case_key(c) for c in class_names]
    pairs = list(zip(predicted, labels))
    if not pairs:
        raise ValueError("no images to score")
    return sum(keys[int(p)] == keys[int(y)] for p, y in pairs) / len(pairs)


def vocabulary(classes: Sequence[GlyphClass]) -> tuple[dict, dict]:
    """(groups, synonyms) for DatasetInfo: the groups a request names ("digits", "capital letters", "vowels",
    "Greek letters", ...) and each class's other words."""
    names = {c.script: [] for c in classes}
    for c in classes:
        names[c.script].append(c.name)
    latin = [c for c in classes if c.script == "latin"]
    groups = {
        "digits": names.get("digit", []),
        "capital letters": [c.name for c in latin if c.case == "capital"],
        "small letters": [c.name for c in latin if c.case == "small"],
        "vowels": [c.name for c in latin if c.char.lower() in "aeiou"],
        "Latin letters": [c.name for c in latin],
        "Greek letters": names.get("greek", []),
        "Cyrillic letters": names.get("cyrillic", []),
        "letters": [c.name for c in classes if c.script != "digit"],
        **{f"{script.capitalize()} {case} letters": [c.name for c in classes if c.script == script and c.case == case]
           for script in ("greek", "cyrillic") for case in ("capital", "small")},
        "Roman numerals": [c.name for c in latin if c.case == "capital" and c.char in "IVXLCDM"],
    }
    groups = {k: v for k, v in groups.items() if v}
    synonyms = {"capital letters": ["uppercase letters", "capitals"],
                "small letters": ["lowercase letters"], "Greek letters": ["Greek alphabet", "Greek"],
                "Cyrillic letters": ["Cyrillic alphabet", "Cyrillic"], "Latin letters": ["Latin alphabet"],
                "digits": ["numbers", "numerals", "Arabic numerals"]}
    for script in ("Greek", "Cyrillic"):
        synonyms[f"{script} capital letters"] = [f"capital {script} letters", f"{script} capitals",
                                                 f"uppercase {script} letters", f"{script} uppercase letters"]
        synonyms[f"{script} small letters"] = [f"small {script} letters", f"lowercase {script} letters",
                                               f"{script} lowercase letters"]
    synonyms = {k: v for k, v in synonyms.items() if k in groups}
    for c in classes:
        if c.words:
            synonyms[c.name] = list(c.words)
    return groups, synonyms


# Scripts and kinds of character a request may name that the set has none of: "Hebrew letters" is refused, not
# widened to "letters" (DatasetInfo.outside)
OUTSIDE = ("Hebrew", "Arabic", "Armenian", "Georgian", "Devanagari", "Hindi", "Bengali", "Tamil", "Thai", "Chinese",
           "Japanese", "Korean", "Hangul", "Kanji", "Hiragana", "Katakana", "Runic", "Coptic", "Ethiopic", "Cherokee",
           "Mongolian", "Tibetan", "emoji", "punctuation", "symbols", "accented", "handwritten", "cursive")


# ---------------------------------------------------------------- fonts

class GlyphDataError(ValueError):
    """A font or font folder that cannot give glyphs, said in one line."""


@dataclass(frozen=True)
class Face:
    path: str
    index: int  # the face's index in a collection (.ttc); 0 otherwise
    family: str
    style: str
    sha256: str  # of the font file: identity and seed, wherever the file lies
    chars: frozenset  # the characters its character map holds


def _name(font, ids: Iterable[int]) -> Optional[str]:
    for i in ids:
        n = font["name"].getDebugName(i)
        if n:
            return n.strip()
    return None


def read_faces(path: str | os.PathLike) -> list[Face]:
    """The faces of one font file (several for a collection), with their family, style and character map;
    GlyphDataError when the file cannot be read as a font."""
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    p = Path(path)
    try:
        data = p.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        fonts = list(TTCollection(str(p)).fonts) if p.suffix.lower() in (".ttc", ".otc") else [TTFont(str(p))]
        out = []
        for i, f in enumerate(fonts):
            cmap = f.getBestCmap() or {}
            family = _name(f, (16, 1)) or p.stem
            style = _name(f, (17, 2)) or "Regular"
            out.append(Face(str(p), i, family, style, sha, frozenset(chr(c) for c in cmap)))
        return out
    except (TTLibError, OSError, KeyError, AssertionError, ValueError, IndexError) as e:
        raise GlyphDataError(f"{p}: not a readable font ({type(e).__name__}: {e}); remove it or pass another "
                             "--fonts") from None


def find_faces(sources: Sequence[str | os.PathLike], log: Optional[Callable[[str], None]] = None,
               skipped: Optional[dict] = None) -> list[Face]:
    """Every text face under the given font files and folders (recursively), sorted by (family, style, file
    hash). A face whose character map lacks the Latin letters and digits (symbols, dingbats) is skipped and
    counted in `skipped`; a folder with no usable face, no usable face at all, or a path that does not exist, is
    an error."""
    skipped = {} if skipped is None else skipped
    latin = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    faces: dict[tuple, Face] = {}
    for src in sources:
        src = Path(src)
        if not src.exists():
            raise GlyphDataError(f"{src}: no such font file or folder")
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.suffix.lower() in FONT_SUFFIXES)
        usable = 0
        for f in files:
            for face in read_faces(f):
                if len(latin & face.chars) < MIN_LATIN:
                    skipped["no Latin letters or digits (symbol font)"] = skipped.get(
                        "no Latin letters or digits (symbol font)", 0) + 1
                    continue
                faces.setdefault((face.sha256, face.index), face)  # the same file twice is one face
                usable += 1
        if not usable and src.is_dir():
            raise GlyphDataError(f"{src}: no usable font (.ttf, .otf, .ttc with Latin letters and digits) in it")
    if not faces:
        raise GlyphDataError(f"no usable font (.ttf, .otf, .ttc with Latin letters and digits) among {len(sources)} "
                             "font paths")
    return sorted(faces.values(), key=lambda f: (f.family, f.style, f.sha256, f.index))


def split_families(faces: Sequence[Face], seed: int, val: float = 0.15, test: float = 0.2
                   ) -> dict[str, list[Face]]:
    """{"train", "val", "test"}: the faces, every face of one family in one split; families shuffled with the
    seed, at least one family in test and in val when there are three or more."""
    families = sorted({f.family for f in faces})
    order = np.random.default_rng(seed).permutation(len(families)).tolist()
    shuffled = [families[i] for i in order]
    n = len(shuffled)
    n_test = max(1, round(test * n)) if n >= 2 else 0
    n_val = max(1, round(val * n)) if n >= 3 else 0
    part = {fam: "test" for fam in shuffled[:n_test]}
    part.update({fam: "val" for fam in shuffled[n_test:n_test + n_val]})
    out: dict[str, list[Face]] = {"train": [], "val": [], "test": []}
    for f in faces:
        out[part.get(f.family, "train")].append(f)
    return out


# ---------------------------------------------------------------- rendering

def _font(face: Face, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(face.path, size=size, index=face.index)


def render(face: Face, char: str, rng: np.random.Generator, augment: bool = True, font=None) -> Optional[np.ndarray]:
    """One SIZE x SIZE uint8 image of `char` in `face` (white on black): em box EM px at baseline BASELINE,
    centred horizontally on its ink; varied when `augment`. None when the glyph draws no ink."""
    from PIL import Image, ImageDraw, ImageFilter

    big = SIZE * SCALE
    font = font or _font(face, EM * SCALE)
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    left, _, right, _ = draw.textbbox((0, 0), char, font=font, anchor="ls")
    if right <= left:
        return None
    x0 = big / 2 - (left + right) / 2
    stroke = 0
    if augment and rng.random() < 0.3:  # bolder strokes
        stroke = int(rng.integers(1, SCALE + 1))
    draw.text((x0, BASELINE * SCALE), char, fill=255, font=font, anchor="ls", stroke_width=stroke, stroke_fill=255)
    if augment and stroke == 0 and rng.random() < 0.2:  # thinner strokes
        img = img.filter(ImageFilter.MinFilter(3))
    if img.getbbox() is None:
        return None
    if augment:
        angle = math.radians(rng.normal(0, 3.0))
        scale = float(np.exp(rng.normal(0, 0.06)))
        shear = float(rng.normal(0, 0.08))
        dx, dy = rng.normal(0, 0.04 * big, size=2)
        # the inverse affine map (output -> input) about the centre; PIL's transform takes the inverse
        c, s = math.cos(angle), math.sin(angle)
        a, b, d, e = c / scale, (s + shear) / scale, -s / scale, c / scale
        cx = cy = big / 2
        coeffs = (a, b, cx - a * (cx + dx) - b * (cy + dy), d, e, cy - d * (cx + dx) - e * (cy + dy))
        img = img.transform((big, big), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
        if rng.random() < 0.3:  # a little perspective: a camera not square to the page
            p = rng.normal(0, 0.0004 / SCALE, size=2)
            img = img.transform((big, big), Image.Transform.PERSPECTIVE,
                                (1, 0, 0, 0, 1, 0, float(p[0]), float(p[1])), resample=Image.Resampling.BILINEAR)
        blur = float(rng.uniform(0, 1.2)) * SCALE
        if blur > 0.3 * SCALE:
            img = img.filter(ImageFilter.GaussianBlur(blur))
    out = np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float32)
    if augment:
        lo, hi = rng.uniform(0, 70), rng.uniform(160, 255)  # contrast: paper and ink levels
        out = lo + out * (hi - lo) / 255.0 + rng.normal(0, rng.uniform(0, 12), size=out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_split(faces: Sequence[Face], classes: Sequence[GlyphClass], per_glyph: int, seed: int, split: str,
                 progress: bool = False, skipped: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images (N, 1, SIZE, SIZE) uint8, labels, counts {class name: images}) of `per_glyph` variants of every
    class in every face whose character map holds it. Seeded per (seed, split, font file hash, face, class)."""
    from tqdm import tqdm

    skipped = {} if skipped is None else skipped
    xs, ys = [], []
    counts = {c.name: 0 for c in classes}
    for face in tqdm(faces, desc=f"rendering {split}", disable=not progress, leave=False):
        font = _font(face, EM * SCALE)
        for label, cls in enumerate(classes):
            if cls.char not in face.chars:
                skipped["glyph not in the font's character map"] = skipped.get(
                    "glyph not in the font's character map", 0) + 1
                continue
            digest = hashlib.sha256(f"{seed}:{split}:{face.sha256}:{face.index}:{label}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            for _ in range(per_glyph):
                img = render(face, cls.char, rng, augment=True, font=font)
                if img is None:
                    skipped["glyph draws no ink"] = skipped.get("glyph draws no ink", 0) + 1
                    break
                xs.append(img)
                ys.append(label)
                counts[cls.name] += 1
    x = np.stack(xs)[:, None] if xs else np.zeros((0, 1, SIZE, SIZE), np.uint8)
    return x, np.asarray(ys, dtype=np.int64), counts


def build_glyphs(out: str | os.PathLike, fonts: Sequence[str | os.PathLike], seed: int = 0, per_glyph: int = 3,
                 per_glyph_eval: int = 1, all_test: bool = False, force: bool = False,
                 classes: Optional[Sequence[GlyphClass]] = None, progress: bool = False,
                 log: Callable[[str], None] = lambda m: None) -> dict:
    """Render the glyph set from `fonts` into a dataset folder (train.npz, val.npz, test.npz, dataset.json with
    its data card); returns the card. `all_test`: every face goes to the test split only (to score a model on
    your own fonts). A class that no font can draw is an error, never an empty class."""
    from .datasets import save_folder_dataset

    classes = list(classes or glyph_classes())
    skipped: dict[str, int] = {}
    faces = find_faces(fonts, skipped=skipped)
    log(f"{len(faces)} faces of {len({f.family for f in faces})} families")
    parts = {"train": [], "val": [], "test": list(faces)} if all_test else split_families(faces, seed)
    arrays, counts = {}, {}
    for split, n in (("train", per_glyph), ("val", per_glyph_eval), ("test", per_glyph_eval)):
        arrays[split] = render_split(parts[split], classes, n, seed, split, progress, skipped)[:2]
        counts[split] = arrays[split][1].size
        log(f"{split}: {counts[split]:,} images from {len(parts[split])} faces")
    drawn = set(np.concatenate([arrays[s][1] for s in arrays]).tolist())
    missing = [c.name for i, c in enumerate(classes) if i not in drawn]
    if missing:
        raise GlyphDataError(f"no font draws {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}: add a "
                             "font whose character map holds them, or leave those classes out")
    groups, synonyms = vocabulary(classes)
    card = {"seed": seed, "per_glyph": {"train": per_glyph, "val": per_glyph_eval, "test": per_glyph_eval},
            "all_test": all_test, "images": counts, "skipped": skipped,
            "faces": {s: [{"family": f.family, "style": f.style, "file": Path(f.path).name, "sha256": f.sha256}
                          for f in parts[s]] for s in parts},
            "classes": [{"name": c.name, "char": c.char, "script": c.script, "case": c.case} for c in classes],
            "render": {"size": SIZE, "em": EM, "baseline": BASELINE, "supersampling": SCALE}}
    train = arrays["train"] if counts["train"] else arrays["test"]  # --all-test: normalization from the test images
    path = save_folder_dataset(out, [c.name for c in classes], train, arrays["test"], name="glyphs", groups=groups,
                               synonyms=synonyms, outside=list(OUTSIDE), force=force, val=arrays["val"] if counts["val"] else None,
                               card=card)
    return read_card(path)


def read_card(path: str | os.PathLike) -> dict:
    import json

    return json.loads((Path(path) / "dataset.json").read_text()).get("card", {})


__all__ = ["GlyphClass", "Face", "GlyphDataError", "glyph_classes", "vocabulary", "read_faces", "find_faces",
           "split_families", "render", "render_split", "build_glyphs"]
