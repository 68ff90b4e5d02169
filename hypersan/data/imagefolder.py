"""Image folders (`data.dataset = "imagefolder"`): one subfolder per class of PNG or JPEG images, decoded with
Pillow.

    ROOT/train/<class>/*.png|jpg      the training split (or ROOT/<class>/... when there is no train/ folder)
    ROOT/val/<class>/...              optional: a validation split of its own (used when present)
    ROOT/test/<class>/...             optional: the test split (hypersan eval, the ablation, the demo)

Class names are the training split's folder names, sorted; the other splits must use the same names (a class
may be absent from them, never unknown). Every image must have the same size, or `image_size` (data.image_size)
makes them so: each image's shorter side is resized to it (bilinear, antialiased), then its centre square is cut
out, as torchvision's Resize(N) + CenterCrop(N) do. Grayscale ("L") images give one channel, everything else is
converted to RGB (three channels; alpha is dropped) unless `channels` says otherwise. The per-channel mean and
std that the net normalizes with are computed from the training images.

Errors name the file and the fix: an empty class folder, a file that is not an image (by extension: hidden
files and other extensions are refused, never skipped silently), a mixed size. A corrupt image (its extension
says image, Pillow cannot decode it) is refused, or, with `corrupt = "skip"`, left out and counted
(`last_skipped`, and a warning).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

import numpy as np

from ..info import DatasetError, DatasetInfo, MissingSplitError, channel_stats

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
CORRUPT_MODES = ("error", "skip")

last_skipped: dict[str, list[str]] = {}  # split folder -> corrupt files its last read left out (corrupt = "skip")


def _split_dir(root: Path, split: str) -> Optional[Path]:
    if (root / split).is_dir():
        return root / split
    if split == "train" and not any((root / s).is_dir() for s in SPLITS):
        return root  # the root itself holds the class folders
    return None


def _class_dirs(folder: Path) -> list[Path]:
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    stray = sorted(p.name for p in folder.iterdir() if p.is_file())
    if stray:
        raise DatasetError(f"{folder} holds files beside its class folders ({', '.join(stray[:3])}"
                           f"{', ...' if len(stray) > 3 else ''}); an image folder holds one folder per class: "
                           "move them into their class's folder or out of the data folder")
    if not dirs:
        raise DatasetError(f"{folder} has no class folders; put each class's images in a folder named after it")
    return dirs


def fit_size(im, size: int):
    """A Pillow image with its shorter side resized to `size` (bilinear, antialiased; the longer side in
    proportion, rounded) and then cut to its centre `size` x `size` square."""
    from PIL import Image

    w, h = im.size
    if min(w, h) != size:
        scale = size / min(w, h)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def read_split(root: str | os.PathLike, split: str, channels: int = 0, corrupt: str = "error",
               classes: Optional[list[str]] = None, image_size: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, C, H, W), labels int64 (N,), class names) of one split. `classes`: the training split's
    names, which this split's folders must be among (None for the training split itself). `image_size`: 0, or
    the side every image is brought to (`fit_size`)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DatasetError("image folders are decoded with Pillow: pip install pillow "
                           "(or pip install 'hypersan[glyphs]')") from None
    if corrupt not in CORRUPT_MODES:
        raise ValueError(f"corrupt must be one of {', '.join(CORRUPT_MODES)}, got {corrupt!r}")
    if channels not in (0, 1, 3):
        raise ValueError(f"channels must be 0 (from the images), 1 or 3, got {channels}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 0:
        raise ValueError(f"image_size must be 0 (the images as they are) or a side in pixels, got {image_size!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; give data.data_dir = the folder that holds train/ "
                           "(or the class folders)")
    folder = _split_dir(root, split)
    if folder is None:
        raise MissingSplitError(f"image folder {root} has no {split}/ folder; add ROOT/{split}/<class>/... images",
                                split)
    dirs = _class_dirs(folder)
    names = [d.name for d in dirs]
    if classes is not None:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise DatasetError(f"{folder}: class folder(s) {unknown} are not classes of the training split "
                               f"({', '.join(classes)}); every split uses the training split's class names")
    index = {n: i for i, n in enumerate(classes if classes is not None else names)}
    images, labels, skipped, size, first = [], [], [], None, None
    for d in dirs:
        files = sorted(p for p in d.iterdir())
        bad = [p.name for p in files if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES]
        if bad:
            raise DatasetError(f"{d} holds {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}, which are not "
                               f"{'/'.join(IMAGE_SUFFIXES)} images; move them out of the data folder")
        count = 0
        for p in files:
            try:
                with Image.open(p) as im:
                    im.load()
                    mode = "L" if (channels == 1 or (channels == 0 and im.mode in ("L", "1", "I;16", "I"))) \
                        else "RGB"
                    im = im.convert(mode)
                    arr = np.asarray(fit_size(im, image_size) if image_size else im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                if corrupt == "skip":
                    skipped.append(str(p))
                    continue
                raise DatasetError(f"{p} cannot be decoded ({e}); replace or remove it, or set "
                                   "data.corrupt_images = \"skip\" to leave corrupt images out (counted)") from None
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if size is None:
                size, first = arr.shape, p
            elif arr.shape != size:
                fix = ("set data.image_size = N to make each N x N (its shorter side resized to N, then the "
                       "centre crop)" if arr.shape[1:] != size[1:] else "set data.channels = 1 or 3 to convert them")
                raise DatasetError(f"{p} is {arr.shape[2]}x{arr.shape[1]} with {arr.shape[0]} channel(s), but {first} "
                                   f"is {size[2]}x{size[1]} with {size[0]}: every image of an image folder has the "
                                   f"same size and channels; {fix}")
            images.append(arr)
            labels.append(index[d.name])
            count += 1
        if count == 0:
            raise DatasetError(f"class folder {d} holds no readable image; add images or remove the folder")
    last_skipped[str(folder)] = skipped
    if skipped:
        import warnings

        warnings.warn(f"{folder}: {len(skipped)} corrupt image(s) left out (data.corrupt_images = \"skip\"): "
                      f"{', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''}", stacklevel=2)
    return np.stack(images), np.asarray(labels, dtype=np.int64), names if classes is None else list(classes)


def load_image_folder(split: str, data_dir: str | os.PathLike | None, channels: int = 0,
                      corrupt: str = "error", image_size: int = 0):
    """(images, labels, DatasetInfo) of one split, as load_dataset gives them; the vocabulary is the training
    split's folder names, and the normalization its images' per-channel mean and std."""
    import torch

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if data_dir is None or not str(data_dir).strip():
        raise DatasetError("data.dataset = 'imagefolder' needs data.data_dir: the folder holding train/ (or the "
                           "class folders)")
    tx, ty, names = _cached(str(data_dir), "train", channels, corrupt, None, image_size)
    if split == "train":
        x, y = tx, ty
    else:
        x, y, _ = _cached(str(data_dir), split, channels, corrupt, tuple(names), image_size)
    if tx.shape[1:] != x.shape[1:]:
        raise DatasetError(f"the {split} images of {data_dir} are {x.shape[1:]}, the training images {tx.shape[1:]}; "
                           "every split has the same size and channels")
    mean, std = channel_stats(tx)
    info = DatasetInfo(Path(os.path.abspath(data_dir)).name, list(names), tuple(tx.shape[1:]), mean, std)
    return torch.from_numpy(x), torch.from_numpy(y), info


_CACHE: dict[tuple, tuple] = {}


def _signature(root: str, split: str) -> tuple:
    """Names, sizes and modification times of a split's files: a folder changed on disk is read again."""
    folder = _split_dir(Path(root), split)
    if folder is None:
        return ()
    stats = ((str(p), p.stat()) for p in sorted(folder.rglob("*")))
    return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats if stat.S_ISREG(st.st_mode))


def _cached(root: str, split: str, channels: int, corrupt: str, classes: Optional[tuple], image_size: int = 0):
    """read_split, kept in memory per process while the files are unchanged (calibration and training read the
    training split more than once)."""
    key = (os.path.abspath(root), split, channels, corrupt, classes, image_size)
    sig = _signature(root, split)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    out = read_split(root, split, channels, corrupt, None if classes is None else list(classes), image_size)
    if len(_CACHE) >= 8:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (sig, out)
    return out
