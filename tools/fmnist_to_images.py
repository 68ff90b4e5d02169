"""Write Fashion-MNIST out as an image folder: ROOT/train/<class>/*.png and ROOT/test/<class>/*.png.

    python tools/fmnist_to_images.py --out data/fmnist-png [--limit N] [--data-dir DIR]

The layout `data.dataset = "imagefolder"` reads (hypersan/data/imagefolder.py): a user's own data arrives this
way, and this is the same data as the built-in loader, for comparisons. Class folders are the class names with
"/" written "-" ("T-shirt-top"). Files are 8-bit grayscale PNGs named by their index in the split. The folder is
written under a temporary name and renamed into place; an existing --out is never touched.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypersan.data.datasets import load_dataset  # noqa: E402


def folder_name(cls: str) -> str:
    """A class name as a folder name (no path separators)."""
    return cls.replace("/", "-").replace(os.sep, "-")


def write_images(out: str | os.PathLike, limit: int = 0, data_dir: str | None = None) -> dict:
    from PIL import Image

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; it is left as it is: choose a new --out folder")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    try:
        for split in ("train", "test"):
            x, y, info = load_dataset("fashion_mnist", split, data_dir)
            if limit:
                x, y = x[:limit], y[:limit]
            for c in info.classes:
                (tmp / split / folder_name(c)).mkdir(parents=True, exist_ok=True)
            for i, (img, label) in enumerate(zip(x.numpy(), y.tolist())):
                Image.fromarray(img[0], mode="L").save(tmp / split / folder_name(info.classes[label]) / f"{i:05d}.png")
            counts[split] = len(y)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the image folder to write (must not exist)")
    p.add_argument("--limit", type=int, default=0, help="the first N images of each split (0: all)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder, if not the system one")
    args = p.parse_args(argv)
    try:
        counts = write_images(args.out, args.limit, args.data_dir)
    except (FileExistsError, ValueError) as e:
        print(f"fmnist_to_images: {e}", file=sys.stderr)
        return 2
    print(f"wrote {counts['train']:,} training and {counts['test']:,} test images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
