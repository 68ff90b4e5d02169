"""The small folders of docs/RESULTS.md, *Small folders train for a number of steps*: Fashion-MNIST as PNG class
folders (`hypersan data fashion-mnist-png --out fm --limit 20000`, run first), cut to 3 classes x 30 training
images (v3x30: Bag, Sneaker, Trouser) and 10 classes x 30 (v10x30), each with a val/ of 100 other training
images a class (choices) and a test/ of 100 test images a class (final figures). Run from the folder holding fm/."""
import os
import shutil
from pathlib import Path

SRC = Path("fm")


def cut(dst: str, classes: list[str], n: int) -> None:
    for split, source, lo, hi in (("train", "train", 0, n), ("val", "train", 1000, 1100), ("test", "test", 0, 100)):
        for c in classes:
            d = Path(dst) / split / c
            d.mkdir(parents=True, exist_ok=True)
            for f in sorted(os.listdir(SRC / source / c))[lo:hi]:
                shutil.copy(SRC / source / c / f, d / f)


cut("v3x30", ["Bag", "Sneaker", "Trouser"], 30)
cut("v10x30", sorted(os.listdir(SRC / "train")), 30)
# fm10x300: 300 training images a class and no val/ (training holds out a tenth), test/ as above
for c in sorted(os.listdir(SRC / "train")):
    for split, n in (("train", 300), ("test", 100)):
        d = Path("fm10x300") / split / c
        d.mkdir(parents=True, exist_ok=True)
        for f in sorted(os.listdir(SRC / split / c))[:n]:
            shutil.copy(SRC / split / c / f, d / f)
