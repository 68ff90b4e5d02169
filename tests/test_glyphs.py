"""The glyph set builder on three small fonts: deterministic bytes, font-disjoint splits, glyphs only from fonts
whose character map holds them, clear errors for bad fonts; its vocabulary."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL", reason="the glyph builder needs Pillow: pip install 'hypersan[glyphs]'")
pytest.importorskip("fontTools", reason="the glyph builder needs fontTools: pip install 'hypersan[glyphs]'")

from hypersan.data.datasets import load_folder_dataset  # noqa: E402
from hypersan.data.glyphs import (GlyphClass, GlyphDataError, build_glyphs, find_faces, glyph_classes,  # noqa: E402
                             split_families, vocabulary)

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
FONTS = [DEJAVU / n for n in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")]
needs_fonts = pytest.mark.skipif(not all(f.is_file() for f in FONTS),
                                 reason="needs the DejaVu fonts: apt-get install fonts-dejavu-core (make glyphs "
                                        "installs every font the set uses)")
# five classes; the last (Coptic Shei) is drawn by DejaVu Sans only: skipped and counted in the other two
FIVE = [GlyphClass("digit 7", "7", "digit", ""), GlyphClass("capital A", "A", "latin", "capital"),
        GlyphClass("small a", "a", "latin", "small"), GlyphClass("Greek small alpha", "α", "greek", "small"),
        GlyphClass("Coptic Shei", "Ϣ", "coptic", "capital")]


def _sha(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(Path(path).glob("*.npz"))}


@needs_fonts
def test_the_same_fonts_and_seed_give_the_same_bytes_and_disjoint_font_splits(tmp_path):
    a = build_glyphs(tmp_path / "a", FONTS, seed=3, per_glyph=2, per_glyph_eval=1, classes=FIVE)
    b = build_glyphs(tmp_path / "b", FONTS, seed=3, per_glyph=2, per_glyph_eval=1, classes=FIVE)
    assert _sha(tmp_path / "a") == _sha(tmp_path / "b") and a["arrays"] == b["arrays"]
    c = build_glyphs(tmp_path / "c", FONTS, seed=4, per_glyph=2, per_glyph_eval=1, classes=FIVE)
    assert c["arrays"]["test"] != a["arrays"]["test"] or c["faces"] != a["faces"]
    families = {s: {f["family"] for f in a["faces"][s]} for s in ("train", "val", "test")}
    assert all(families[s] for s in families)  # three families: one in each split
    assert not (families["train"] & families["test"]) and not (families["val"] & families["test"])
    assert not (families["train"] & families["val"])
    # a glyph only from a font whose character map holds it: Shei from DejaVu Sans alone, the rest skipped
    assert a["skipped"]["glyph not in the font's character map"] == 2
    x, y, info = load_folder_dataset("test", tmp_path / "a")
    assert x.shape[1:] == (1, 32, 32) and str(x.dtype) == "torch.uint8" and info.classes[0] == "digit 7"
    vx, vy, _ = load_folder_dataset("val", tmp_path / "a")
    assert len(vy) > 0
    shei = {s: int((load_folder_dataset(s, tmp_path / "a")[1] == 4).sum()) for s in ("train", "val", "test")}
    assert sum(shei.values()) == (2 if "DejaVu Sans" in families["train"] else 1)
    # size and position are kept: a capital's ink stands higher than a small letter's in the same font
    img = x[y == 1][0, 0].numpy().astype(float), x[y == 2][0, 0].numpy().astype(float)
    top = [int(np.argmax(i.max(axis=1) > 0.5 * i.max())) for i in img]
    assert top[0] < top[1]


@needs_fonts
def test_bad_fonts_and_missing_glyphs_are_clear_errors(tmp_path):
    bad = tmp_path / "broken.ttf"
    bad.write_bytes(b"not a font at all")
    with pytest.raises(GlyphDataError, match="broken.ttf: not a readable font"):
        find_faces([bad])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no fonts here")
    with pytest.raises(GlyphDataError, match="no usable font"):
        find_faces([empty])
    with pytest.raises(GlyphDataError, match="no such font file"):
        find_faces([tmp_path / "nowhere"])
    nobody = [*FIVE[:2], GlyphClass("Linear B syllable", "\U00010000", "other", "")]
    with pytest.raises(GlyphDataError, match="no font draws Linear B syllable"):
        build_glyphs(tmp_path / "x", FONTS[:1], per_glyph=1, per_glyph_eval=1, classes=nobody)
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_split_families_keeps_a_family_together():
    from hypersan.data.glyphs import Face

    faces = [Face(f"/f/{fam}-{st}.ttf", 0, fam, st, f"{fam}{st}", frozenset())
             for fam in "ABCDEFGHIJ" for st in ("Regular", "Bold")]
    parts = split_families(faces, seed=0)
    where = {}
    for split, fs in parts.items():
        for f in fs:
            assert where.setdefault(f.family, split) == split
    assert len({f.family for f in parts["test"]}) >= 2 and parts["val"]


def test_the_classes_and_their_vocabulary():
    classes = glyph_classes()
    names = [c.name for c in classes]
    assert len(classes) >= 90 and len(set(names)) == len(names)
    chars = [c.char for c in classes]
    assert len(set(chars)) == len(chars)
    assert "Α" not in chars and "А" not in chars and "Г" not in chars  # Alpha and Cyrillic A are A; Ghe is Gamma
    assert "Γ" in chars and "0" in chars and "O" in chars and "l" in chars and "I" in chars  # ambiguous: kept
    groups, synonyms = vocabulary(classes)
    assert groups["digits"] == [f"digit {d}" for d in range(10)]
    assert "capital A" in groups["capital letters"] and "small a" not in groups["capital letters"]
    assert set(groups["vowels"]) == {f"capital {v}" for v in "AEIOU"} | {f"small {v}" for v in "aeiou"}
    assert "Greek small alpha" in groups["Greek letters"] and "Cyrillic capital Zhe" in groups["Cyrillic letters"]
    assert "7" in synonyms["digit 7"] and "A" in synonyms["capital A"]


def test_requests_ground_on_the_glyph_vocabulary():
    from hypersan.data.datasets import DatasetInfo
    from hypersan.language.grounding import Grounder, GroundingError

    from hypersan.data.glyphs import OUTSIDE

    classes = glyph_classes()
    groups, synonyms = vocabulary(classes)
    info = DatasetInfo("glyphs", [c.name for c in classes], (1, 32, 32), (0.2,), (0.3,), groups, synonyms,
                       list(OUTSIDE))
    assert DatasetInfo.from_dict(info.to_dict()) == info  # the words outside the set travel with the vocabulary
    g = Grounder(info, None)  # the lexical grounder: no encoder

    def names(request):
        return g.ground(request).classes

    assert names("digits") == [f"digit {d}" for d in range(10)]
    assert names("capital letters and digits") == groups["digits"] + groups["capital letters"]
    assert set(names("Greek letters")) == set(groups["Greek letters"]) and len(names("Greek letters")) == 32
    assert set(names("vowels")) == set(groups["vowels"])
    assert names("7") == ["digit 7"]
    assert names("A") == ["capital A"] and names("a") == ["small a"]  # the case names the class
    assert names("A and a") == ["capital A", "small a"]
    assert names("Ж") == ["Cyrillic capital Zhe"] and names("ж") == ["Cyrillic small zhe"]
    assert names("the letter q") == ["small q"] and names("letters A and B") == ["capital A", "capital B"]
    assert names("a net for digits") == groups["digits"]  # "a" before a word is an article, not the letter
    assert names("Greek capital letters") == groups["Greek capital letters"] and len(names("Greek capitals")) == 10
    assert names("small Cyrillic letters") == groups["Cyrillic small letters"]
    assert names("Roman numerals") == [f"capital {c}" for c in "CDILMVX"]
    assert names("Arabic numerals") == groups["digits"]  # a phrase of the vocabulary may use a word of OUTSIDE
    for request in ("Hebrew letters", "Armenian letters", "digits and Hebrew letters", "Hebrew"):
        with pytest.raises(GroundingError, match="names 'hebrew'|names 'armenian'"):  # never widened to "letters"
            g.ground(request)
    for outside in ("ש", "ü"):  # letters outside the set are refused, never guessed
        with pytest.raises(GroundingError, match="could not understand"):
            g.ground(outside)


@needs_fonts
def test_a_tiny_glyph_model_trains_prunes_to_digits_and_exports(tmp_path):
    import torch

    from hypersan.config import load_config
    from hypersan.prune.engine import PruningEngine
    from hypersan.training.train import train

    from .conftest import ROOT

    from hypersan.cli.demo import format_demo, run_demo

    few = [c for c in glyph_classes() if c.char in "0123ABabα"]
    build_glyphs(tmp_path / "g", FONTS, per_glyph=6, per_glyph_eval=1, classes=few)
    cfg = load_config(ROOT / "configs" / "glyphs.toml", [
        f'data.data_dir="{tmp_path / "g"}"', "model.widths=[8, 16]", "model.blocks=[1, 1]", "generator.hidden=32",
        "train.epochs=1", "train.batch_size=16", "train.eval_every=0", "calib.batches=1", "calib.batch_size=16",
        "subtasks.size_weights=[1, 1, 1]", "train.progress=false"])
    train(cfg, tmp_path / "run", log=lambda m: None)
    engine = PruningEngine.from_pretrained(tmp_path / "run")
    summary = engine.export("digits", tmp_path / "art", ["safetensors", "onnx"])
    assert summary["classes"] == ["digit 0", "digit 1", "digit 2", "digit 3"] and 0 < summary["mac_ratio"] <= 1
    net = engine.subnet("capital A and a")
    assert net.classes == ["capital A", "small a"] and net(torch.rand(2, 1, 32, 32)).shape == (2, 2)
    # the demo's own requests for a glyph model
    r = run_demo(tmp_path / "demo", checkpoint=str(tmp_path / "run"), log=lambda m: None, repeats=1)
    assert [row["request"] for row in r["rows"]] == ["digits", "capital letters and digits", "Greek letters"]
    assert r["rows"][1]["classes"] == ["digit 0", "digit 1", "digit 2", "digit 3", "capital A", "capital B"]
    assert r["rows"][2]["classes"] == ["Greek small alpha"] and (tmp_path / "demo" / "digits").is_dir()
    assert "thread(s) of" in format_demo(r, str(tmp_path / "demo")) and r["machine"]["isa"]  # the CPU it ran on


@needs_fonts
def test_eval_scores_a_test_set_rendered_from_other_fonts(tmp_path):
    import json
    import subprocess
    import sys

    from hypersan.config import load_config
    from hypersan.training.train import train

    from .conftest import ROOT

    few = [c for c in glyph_classes() if c.char in "01AB"]
    build_glyphs(tmp_path / "g", FONTS, per_glyph=4, per_glyph_eval=1, classes=few)
    mono = [DEJAVU / "DejaVuSansMono-Bold.ttf"]
    if not mono[0].is_file():
        pytest.skip("needs DejaVu Sans Mono Bold (fonts-dejavu-core)")
    build_glyphs(tmp_path / "mine", mono, per_glyph=1, per_glyph_eval=3, classes=few, all_test=True)
    cfg = load_config(ROOT / "configs" / "glyphs.toml", [
        f'data.data_dir="{tmp_path / "g"}"', "model.widths=[8, 16]", "model.blocks=[1, 1]", "generator.hidden=32",
        "train.epochs=1", "train.batch_size=16", "train.eval_every=0", "calib.batches=1", "calib.batch_size=16",
        "subtasks.size_weights=[1, 1]", "train.progress=false"])
    train(cfg, tmp_path / "run", log=lambda m: None)
    r = subprocess.run([sys.executable, "-m", "hypersan", "eval", "--checkpoint", str(tmp_path / "run"),
                        "--test-data", str(tmp_path / "mine"), "--subtasks", "digit 0,digit 1", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["subtasks"][0]["classes"] == ["digit 0", "digit 1"]
    other = [c for c in glyph_classes() if c.char in "01Ab"]
    build_glyphs(tmp_path / "other", mono, per_glyph=1, per_glyph_eval=1, classes=other, all_test=True)
    r = subprocess.run([sys.executable, "-m", "hypersan", "eval", "--checkpoint", str(tmp_path / "run"),
                        "--test-data", str(tmp_path / "other")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "classes or image shape differ" in r.stderr


def test_case_insensitive_accuracy_merges_a_letters_two_cases_only():
    from hypersan.data.glyphs import case_insensitive_accuracy, case_key

    names = ["digit 0", "capital O", "small o", "Greek capital Sigma", "Greek small sigma", "Greek small final sigma"]
    assert case_key("capital O") == case_key("small o") == "o"
    assert case_key("Greek capital Sigma") == case_key("Greek small sigma") != case_key("Greek small final sigma")
    labels = [1, 2, 3, 0, 5]
    pred = [2, 1, 4, 1, 4]  # O/o both ways and Sigma/sigma count; 0 -> O and final sigma -> sigma do not
    assert case_insensitive_accuracy(pred, labels, names) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="no images"):
        case_insensitive_accuracy([], [], names)
