"""Datasets: Fashion-MNIST (IDX) and CIFAR-10/100 readers, class vocabularies, groups, augmentation."""
from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import math
import os
import pickle
import struct
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..info import FASHION_MNIST, DatasetError, DatasetInfo, channel_stats  # noqa: F401  (part of the interface)

SYSTEM_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _find_dir(data_dir: str | os.PathLike | None, system_dir: str, required: list[str], what: str, how: str) -> Path:
    """The folder holding every required file: data_dir if given, else $HYPERSAN_DATA if set, else system_dir.

    A folder that was asked for explicitly must hold the files: falling back to another copy would train or
    evaluate on data other than the one named, without a word."""
    env = os.environ.get("HYPERSAN_DATA", "")
    if data_dir is not None and str(data_dir).strip():
        p, source = data_home_path(data_dir), "data_dir"
    elif env.strip():
        p, source = Path(env), "$HYPERSAN_DATA"
    else:
        p, source = Path(system_dir), "the system location"
    if not p.is_dir():
        problem = "does not exist" if not p.exists() else "is not a folder"
    else:
        missing = [r for r in required if not (p / r).exists()]
        if not missing:
            return p
        problem = "is empty" if not any(p.iterdir()) else f"lacks {', '.join(missing)}"
    if p.name == "glyphs" and FOLDER_INFO in required:  # the glyph set is built, not written by hand
        how = ("Build the glyph set with `make glyphs` in the checkout (or `hypersan data glyphs --out DIR`, then "
               "pass --data-dir DIR).")
    raise DatasetError(f"{what} not found: {p} ({source}) {problem}; it must hold {', '.join(required)}. {how}")


CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout hypersan runs from, where `make glyphs` writes


def data_home_path(data_dir: str | os.PathLike) -> Path:
    """Where a data folder named in a config is: as given when absolute or present from the working directory;
    else, for a relative path ("data/glyphs"), under $HYPERSAN_DATA_HOME, or else under the checkout hypersan
    runs from (where `make glyphs` writes), so that a shipped model finds its data from any folder."""
    p = Path(data_dir)
    if p.is_absolute() or p.exists():
        return p
    homes = [os.environ.get("HYPERSAN_DATA_HOME", ""), str(CHECKOUT)]
    for home in homes:
        if home.strip() and (Path(home) / p).exists():
            return Path(home) / p
    return p


# ---------------------------------------------------------------- Fashion-MNIST (IDX)

@functools.lru_cache(maxsize=4)
def _decompressed(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> bytes:
    """A gzipped file's bytes, decompressed once per process for each version of the file (its path, size,
    modification and change times, inode): a training run, an evaluation or a test session that reads the same
    split again pays a copy, not another decompression (about 0.25 s for Fashion-MNIST's training images). Holds
    the last 4 files (55 MB for Fashion-MNIST's four); a file changed on disk is read again."""
    with gzip.open(path, "rb") as f:
        return f.read()


def _read_idx(path: Path, magic: int, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """Read one gzipped IDX file, checking magic number, count and shape. The array is read-only: it shares the
    decompressed bytes of `_decompressed`; copy it before changing it."""
    try:
        st = path.stat()
        raw = _decompressed(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: cannot decompress ({e}); the file is truncated or corrupt, reinstall it") from None
    ndim = len(shape) + 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: file too short for an IDX header ({len(raw)} bytes); it is truncated")
    got_magic = struct.unpack(">I", raw[:4])[0]
    if got_magic != magic:
        raise DatasetError(f"{path}: bad magic number {got_magic:#x}, expected {magic:#x}; "
                           "not an IDX file of this kind")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if dims[0] != count or tuple(dims[1:]) != shape:
        raise DatasetError(f"{path}: holds {dims[0]} items of shape {tuple(dims[1:])}, expected {count} of {shape}")
    need = header + count * int(np.prod(shape, dtype=np.int64))
    if len(raw) != need:
        raise DatasetError(f"{path}: {len(raw)} bytes, expected {need}; the file is truncated or has trailing data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape((count, *shape))


FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}


def load_fashion_mnist(split: str, data_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of a Fashion-MNIST split."""
    if split not in FMNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    img_name, lbl_name, count = FMNIST_FILES[split]
    root = _find_dir(data_dir, SYSTEM_FMNIST_DIR, [img_name, lbl_name], "Fashion-MNIST",
                     "Install it with `apt-get install dataset-fashion-mnist`, or point data_dir / $HYPERSAN_DATA "
                     "at a folder holding the four IDX .gz files.")
    images = _read_idx(root / img_name, 0x00000803, count, (28, 28))
    labels = _read_idx(root / lbl_name, 0x00000801, count, ())
    if labels.max() > 9:
        raise DatasetError(f"{root / lbl_name}: label {int(labels.max())} out of range 0..9")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------- CIFAR (python version)

class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds the numpy arrays, lists and dicts a CIFAR batch holds."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")


def _load_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DatasetError(f"{path}: not a readable CIFAR batch ({e}); the file is truncated or corrupt") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{path}: expected a dict batch, got {type(d).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_images(d: dict, path: Path) -> np.ndarray:
    data = np.asarray(d.get("data"))
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise DatasetError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32)


def load_cifar10(split: str, data_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels of CIFAR-10 from its python-version folder."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    root = _find_dir(data_dir, "/usr/share/datasets/cifar-10-batches-py", names, "CIFAR-10",
                     "Point data_dir or $HYPERSAN_DATA at the extracted cifar-10-batches-py folder.")
    xs, ys = [], []
    for n in names:
        d = _load_cifar_batch(root / n)
        xs.append(_cifar_images(d, root / n))
        ys.append(np.asarray(d.get("labels"), dtype=np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) != len(y) or y.min() < 0 or y.max() > 9:
        raise DatasetError(f"{root}: labels do not match images or fall outside 0..9")
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


def load_cifar100(split: str, data_dir: str | os.PathLike | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """Images, fine labels and the vocabulary (with the 20 superclasses as groups) of CIFAR-100."""
    name = "train" if split == "train" else "test"
    root = _find_dir(data_dir, "/usr/share/datasets/cifar-100-python", [name, "meta"], "CIFAR-100",
                     "Point data_dir or $HYPERSAN_DATA at the extracted cifar-100-python folder.")
    d = _load_cifar_batch(root / name)
    meta = _load_cifar_batch(root / "meta")
    x = _cifar_images(d, root / name)
    fine = np.asarray(d.get("fine_labels"), dtype=np.int64)
    coarse = np.asarray(d.get("coarse_labels"), dtype=np.int64)
    fine_names = [s.decode() if isinstance(s, bytes) else s for s in meta["fine_label_names"]]
    coarse_names = [s.decode() if isinstance(s, bytes) else s for s in meta["coarse_label_names"]]
    if len(fine) != len(x) or len(coarse) != len(x) or fine.max() >= len(fine_names):
        raise DatasetError(f"{root}: labels do not match images or the names in 'meta'")
    groups: dict[str, list[str]] = {c: [] for c in coarse_names}
    for f_idx, c_idx in sorted(set(zip(fine.tolist(), coarse.tolist()))):
        if fine_names[f_idx] not in groups[coarse_names[c_idx]]:
            groups[coarse_names[c_idx]].append(fine_names[f_idx])
    info = DatasetInfo("cifar100", fine_names, (3, 32, 32), CIFAR_MEAN, CIFAR_STD, groups=groups)
    return torch.from_numpy(x.copy()), torch.from_numpy(fine), info


# ---------------------------------------------------------------- your own data (a folder of .npz files)

FOLDER_DATASET_KIND = "dataset"  # the marker kind of a folder written by save_folder_dataset
FOLDER_FILES = {"train": "train.npz", "val": "val.npz", "test": "test.npz"}
FOLDER_INFO = "dataset.json"


def save_folder_dataset(path: str | os.PathLike, classes: list[str], train: tuple, test: tuple,
                        name: str | None = None, groups: dict | None = None, synonyms: dict | None = None,
                        force: bool = False, val: tuple | None = None, card: dict | None = None,
                        outside: list | None = None) -> Path:
    """Write your own data as a folder `data.dataset = "folder"` reads: train.npz, test.npz, dataset.json.

    `train` / `test`: (images, labels). Images are uint8 arrays or tensors of shape (N, H, W) (one channel)
    or (N, C, H, W); labels are integers in 0..len(classes)-1. The per-channel mean and std used to normalize
    inside the net are computed from the training images. `groups` (name -> class names) and `synonyms`
    (class or group name -> other words) extend what requests in words can name; `outside`: words naming kinds
    of class the data lacks, refused in requests (DatasetInfo.outside). Written atomically; an
    existing dataset folder is replaced only with force=True. `val`: a validation split of its own (val.npz;
    `data.val_split = "dataset"` trains with it). `card`: provenance stored in dataset.json under "card", with
    the SHA-256 of every array added.
    """
    import hashlib

    from ..io import atomic_dir, write_json

    arrays = {split: _check_arrays(*pair, len(classes), f"{split} split") for split, pair in
              (("train", train), ("val", val), ("test", test)) if pair is not None}
    if "val" in arrays and arrays["val"][0].shape[1:] != arrays["train"][0].shape[1:]:
        raise ValueError("validation images must have the training images' (C, H, W)")
    if arrays["train"][0].shape[1:] != arrays["test"][0].shape[1:]:
        raise ValueError(f"train images are {arrays['train'][0].shape[1:]} and test images "
                         f"{arrays['test'][0].shape[1:]}; both splits need the same (C, H, W)")
    x = arrays["train"][0]
    mean, std = channel_stats(x)
    info = DatasetInfo(name or Path(os.path.abspath(path)).name, list(classes), tuple(x.shape[1:]), mean, std,
                       dict(groups or {}), dict(synonyms or {}), list(outside or []))
    info = DatasetInfo.from_dict(info.to_dict())  # every field checked, as a reader would
    meta = info.to_dict()
    if card is not None:
        meta["card"] = dict(card, arrays={s: {"images": hashlib.sha256(xs.tobytes()).hexdigest(),
                                              "labels": hashlib.sha256(ys.tobytes()).hexdigest()}
                                          for s, (xs, ys) in arrays.items()})
    with atomic_dir(path, FOLDER_DATASET_KIND, force) as tmp:
        write_json(tmp / FOLDER_INFO, meta)
        for split, (xs, ys) in arrays.items():
            np.savez(tmp / FOLDER_FILES[split], images=xs, labels=ys)
    return Path(path)


def _check_arrays(images, labels, num_classes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if x.dtype != np.uint8:
        raise DatasetError(f"{where}: images must be uint8 (0..255), got {x.dtype}; convert with "
                           "(x * 255).round().astype(np.uint8) if they are floats in [0, 1]")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or min(x.shape) < 1:
        raise DatasetError(f"{where}: images must have shape (N, H, W) or (N, C, H, W), got {tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{where}: labels must be {len(x)} integers, one per image, got {y.dtype} of shape "
                           f"{tuple(y.shape)}")
    if y.min() < 0 or y.max() >= num_classes:
        raise DatasetError(f"{where}: labels must lie in 0..{num_classes - 1} (one per class name), found "
                           f"{int(y.min())}..{int(y.max())}")
    return np.ascontiguousarray(x), y.astype(np.int64)


def load_folder_dataset(split: str, data_dir: str | os.PathLike | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                DatasetInfo]:
    """(images, labels, vocabulary) of one split of a folder written by save_folder_dataset (or by hand:
    train.npz / test.npz with arrays `images` and `labels`, and dataset.json as DatasetInfo.to_dict gives
    it). Nothing is unpickled."""
    import json

    if split not in FOLDER_FILES:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if data_dir is None or not str(data_dir).strip():
        raise DatasetError("data.dataset = 'folder' needs data.data_dir: a folder holding train.npz, test.npz and "
                           "dataset.json (write one with hypersan.data.save_folder_dataset)")
    root = _find_dir(data_dir, "", [FOLDER_INFO, FOLDER_FILES[split]], "dataset folder",
                     "Write one with hypersan.data.save_folder_dataset.")
    try:
        raw = json.loads((root / FOLDER_INFO).read_text())
        if isinstance(raw, dict):
            raw.pop("card", None)  # the data card: provenance, not vocabulary
        info = DatasetInfo.from_dict(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{root / FOLDER_INFO}: {e}") from None
    try:
        with np.load(root / FOLDER_FILES[split], allow_pickle=False) as z:
            if not {"images", "labels"} <= set(z.files):
                raise DatasetError(f"{root / FOLDER_FILES[split]} must hold arrays 'images' and 'labels', "
                                   f"has {sorted(z.files)}")
            x, y = _check_arrays(z["images"], z["labels"], len(info.classes), str(root / FOLDER_FILES[split]))
    except (OSError, ValueError) as e:  # not a zip, truncated, or object arrays (which would need pickle)
        raise DatasetError(f"{root / FOLDER_FILES[split]} is not a readable .npz of plain arrays: {e}") from None
    if tuple(x.shape[1:]) != tuple(info.input_shape):
        raise DatasetError(f"{root / FOLDER_FILES[split]}: images are {tuple(x.shape[1:])}, {FOLDER_INFO} says "
                           f"input_shape {tuple(info.input_shape)}")
    return torch.from_numpy(x), torch.from_numpy(y), info


def load_dataset(name: str, split: str, data_dir: str | None = None, channels: int = 0,
                 corrupt: str = "error", image_size: int = 0) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """(images uint8 NCHW, labels int64, vocabulary) of a named dataset split. `channels`, `corrupt`, `image_size`:
    for image folders (data.channels, data.corrupt_images, data.image_size; see hypersan.data.imagefolder)."""
    if name == "fashion_mnist":
        return (*load_fashion_mnist(split, data_dir), FASHION_MNIST)
    if name == "cifar10":
        info = DatasetInfo("cifar10", CIFAR10_CLASSES, (3, 32, 32), CIFAR_MEAN, CIFAR_STD)
        return (*load_cifar10(split, data_dir), info)
    if name == "cifar100":
        return load_cifar100(split, data_dir)
    if name == "folder":
        return load_folder_dataset(split, data_dir)
    if name == "imagefolder":
        from .imagefolder import load_image_folder

        return load_image_folder(split, data_dir, channels, corrupt, image_size)
    raise ValueError(f"unknown dataset {name!r}; choose fashion_mnist, cifar10, cifar100, folder or imagefolder")


def load_split(data, split: str, data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """(images, labels, vocabulary) of one split of the data set a [data] section (a DataConfig) names: its
    dataset, its folder (`data_dir` overrides it), its image-folder options, and the normalization it asks for
    (data.mean, data.std) in place of the data set's own."""
    x, y, info = load_dataset(data.dataset, split, data_dir or data.data_dir or None, data.channels,
                              data.corrupt_images, data.image_size)
    return x, y, with_normalization(info, data.mean, data.std)


def with_normalization(info: DatasetInfo, mean=(), std=()) -> DatasetInfo:
    """`info` with its per-channel mean and/or std replaced where given (non-empty): the normalization a user's
    weights were trained with, such as ImageNet's, in place of the one computed from the training images. Each
    needs one value per channel of the images."""
    channels = info.input_shape[0]
    for key, values in (("mean", mean), ("std", std)):
        if values and len(values) != channels:
            convert = f", or convert the images with data.channels = {len(values)}" if len(values) in (1, 3) else ""
            raise DatasetError(f"data.{key} has {len(values)} value(s) and the images have {channels} channel(s): "
                               f"give one value per channel{convert}")
    if not mean and not std:
        return info
    return dataclasses.replace(info, mean=tuple(float(v) for v in mean) if mean else info.mean,
                               std=tuple(float(v) for v in std) if std else info.std)


# ---------------------------------------------------------------- validation split

def has_own_validation(data, data_dir: str | None = None) -> bool:
    """Whether the data set a [data] section names has a validation split of its own: an image folder's val/,
    a dataset folder's val.npz (the built-in data sets have none)."""
    if data.dataset not in ("folder", "imagefolder"):
        return False
    root = data_dir or data.data_dir
    if not root:
        return False
    return (data_home_path(root) / ("val.npz" if data.dataset == "folder" else "val")).exists()


def validation_rule(data, data_dir: str | None, labels: torch.Tensor | None = None) -> tuple[str, int]:
    """("dataset", 0) where the validation split is the data set's own, else ("sample", n): n training images held
    out (stratified, seeded). data.val_split = "auto" takes the data set's own split where it has one, else
    data.val_size images when it is set, else data.val_fraction of the `labels`' images. A held-out count must
    leave every class one image to train on and give each at least one to validate: a folder too small for that
    is an error that says how many images per class it needs."""
    from ..config import ConfigError

    if data.val_split == "dataset" or (data.val_split == "auto" and has_own_validation(data, data_dir)):
        return "dataset", 0
    if data.val_split == "sample" or data.val_size:
        n = data.val_size
        if labels is not None and n >= len(labels):
            raise ConfigError(f"data.val_size = {n} leaves no training images out of {len(labels)}; lower it, or "
                              "leave it at 0 for a share of them (data.val_fraction)")
        return "sample", n
    if labels is None or not data.val_fraction:
        return "sample", 0
    counts = torch.bincount(labels)
    counts = counts[counts > 0]
    n = max(len(counts), round(data.val_fraction * len(labels)))
    if int(counts.min()) < 2 or n >= len(labels) - len(counts) + 1:
        small = int(counts.min())
        raise ConfigError(f"too few images to hold out a validation split: a class has {small} image(s), and each "
                          "needs at least 2 (one to train on, one to validate), better 10 or more; add images, give "
                          "the folder a val/ split of its own, or set data.val_fraction = 0 (no validation: "
                          "choices are then made on the training images)")
    return "sample", n


def limit_indices(labels: torch.Tensor, limit: int) -> torch.Tensor:
    """The training images data.train_limit keeps: the first `limit`, as stored; where those lack a class that
    the split has (a folder read class by class), the first images of every class instead, each class in its
    share of the split (at least one), in stored order."""
    n = len(labels)
    if limit >= n:
        return torch.arange(n)
    if set(labels[:limit].tolist()) == set(labels.tolist()):
        return torch.arange(limit)
    classes, counts = labels.unique(return_counts=True)
    take = {int(c): max(1, round(limit * int(k) / n)) for c, k in zip(classes, counts)}
    keep = torch.zeros(n, dtype=torch.bool)
    for c, k in take.items():
        keep[(labels == c).nonzero().flatten()[:k]] = True
    return keep.nonzero().flatten()


def split_train_val(data, data_dir: str | None = None, val: bool = True) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor | None,
                                                                               torch.Tensor | None, DatasetInfo]:
    """(train_x, train_y, val_x, val_y, info) of the data set a [data] section names: its training images (the
    first data.train_limit, if set) minus the seeded, stratified validation split (`validation_rule`), or all of
    them and the data set's own validation split (read only when `val`; else val_x and val_y are None). With
    neither, the validation tensors are empty. The test split is not read."""
    x, y, info = load_split(data, "train", data_dir)
    if data.train_limit:
        pick = limit_indices(y, data.train_limit)
        x, y = x[pick], y[pick]
    kind, n = validation_rule(data, data_dir, y)
    if kind == "dataset":
        vx, vy = load_split(data, "val", data_dir)[:2] if val else (None, None)
        return x, y, vx, vy, info
    tr, va = validation_split(y, n, data.val_seed)
    return x[tr], y[tr], x[va], y[va], info


def validation_images(data, data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(val_x, val_y) of split_train_val alone: the data set's own validation file, without reading the training
    images; else the seeded split drawn from them."""
    if validation_rule(data, data_dir)[0] == "dataset":
        return load_split(data, "val", data_dir)[:2]
    _, _, vx, vy, _ = split_train_val(data, data_dir)
    return vx, vy


def validation_split(labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_indices, val_indices), both sorted: a seeded, stratified split with `size` validation samples.

    Each class gives its share of `size` in proportion to its count (largest remainders round up, lower
    class first on ties): 500 per class for 5,000 of Fashion-MNIST's 60,000. The draw depends only on the
    labels, size and seed, so every run (training, evaluation, surgery) sees the same split."""
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
    n = len(labels)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < max(n, 1):
        raise ValueError(f"validation size must be an integer in 0..{n - 1} (there are {n} samples, and training "
                         f"needs at least one), got {size!r}; lower data.val_size")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"validation seed must be a non-negative integer, got {seed!r}")
    if size == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    y = labels.cpu().numpy().astype(np.int64)
    classes, counts = np.unique(y, return_counts=True)
    share = size * counts / n
    quota = np.floor(share).astype(np.int64)
    extra = np.argsort(-(share - quota), kind="stable")[: size - int(quota.sum())]
    quota[extra] += 1  # never past a class's count: size < n makes every share < count
    # one seeded shuffle, then a stable sort by label: each class's samples in random order
    perm = np.random.default_rng(seed).permutation(n)
    grouped = perm[np.argsort(y[perm], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    val = np.sort(np.concatenate([grouped[s:s + q] for s, q in zip(starts, quota)]))
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    return torch.from_numpy(np.flatnonzero(~is_val)), torch.from_numpy(val)


# ---------------------------------------------------------------- augmentation

CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios of a random resized crop, as torchvision's RandomResizedCrop draws them


def crop_boxes(b: int, h: int, w: int, scale_min: float, gen: torch.Generator,
               ratio: tuple[float, float] = CROP_RATIO) -> torch.Tensor:
    """(b, 4) random boxes (x0, y0, width, height) in pixels of an h x w image, drawn as torchvision's
    RandomResizedCrop draws them: an area of U(scale_min, 1) of the image's, an aspect ratio log-uniform in
    `ratio`, a uniform position. A side longer than the image's is cut to it, where torchvision draws again (up to
    ten times) and then takes the centre."""
    area = (torch.rand(b, generator=gen) * (1 - scale_min) + scale_min) * (h * w)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(torch.rand(b, generator=gen) * (hi - lo) + lo)
    cw, ch = torch.sqrt(area * r).clamp(max=w), torch.sqrt(area / r).clamp(max=h)
    x0, y0 = torch.rand(b, generator=gen) * (w - cw), torch.rand(b, generator=gen) * (h - ch)
    return torch.stack([x0, y0, cw, ch], 1)


def resize_boxes(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image's box (x0, y0, width, height in pixels) resized to the image's size, bilinear: output pixel i
    reads x0 + (i + 0.5) * width / W - 0.5, as resizing the cropped box does (F.interpolate, align_corners=False),
    except that at the box's edge the pixels just outside it take part, where a crop repeats its edge."""
    b, c, h, w = x.shape
    x0, y0, cw, ch = boxes.to(x.dtype).unbind(1)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = cw / w, (2 * x0 + cw) / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = ch / h, (2 * y0 + ch) / h - 1
    grid = torch.nn.functional.affine_grid(theta.to(x.device), [b, c, h, w], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(x: torch.Tensor, padding: int, hflip: bool, gen: torch.Generator, crop_scale: float = 0.0) -> torch.Tensor:
    """Random crop and random horizontal flip of a float batch (B, C, H, W). The crop: with `crop_scale` > 0 a
    random resized crop (crop_boxes, resize_boxes: data.crop_scale), else a crop after zero padding by `padding`
    pixels (data.crop_padding)."""
    b, c, h, w = x.shape
    if crop_scale > 0:
        x = resize_boxes(x, crop_boxes(b, h, w, crop_scale, gen))
    elif padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
        cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
        x = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    # canonical strides: with one channel the permuted tensor counts as contiguous yet keeps strides (HW, 1, W, 1),
    # and a conv backward on such an input crashed the process (torch 2.13 CPU, batch 123)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """How training images are augmented (data.crop_padding, data.hflip, data.crop_scale; see augment): training,
    fine-tuning and BN calibration draw their batches alike. Called on a float batch and a generator."""

    crop_padding: int = 2
    hflip: bool = True
    crop_scale: float = 0.0

    @classmethod
    def of(cls, data) -> "Augmentation":
        """The augmentation a [data] section (a DataConfig) asks for."""
        return cls(data.crop_padding, data.hflip, data.crop_scale)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return augment(x, self.crop_padding, self.hflip, gen, self.crop_scale)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]."""
    return x.float().div_(255.0)


def folder_name(cls: str) -> str:
    """A class name as a folder name (no path separators)."""
    return cls.replace("/", "-").replace(os.sep, "-")


def write_fashion_mnist_folder(out: str | os.PathLike, limit: int = 0, data_dir: str | None = None,
                               per_class: int = 0, classes: Optional[Sequence[str]] = None,
                               val_per_class: int = 0) -> dict:
    """Fashion-MNIST written out as an image folder, OUT/train/<class>/*.png and OUT/test/<class>/*.png (the
    layout `data.dataset = "imagefolder"` reads): the same data as the built-in loader, for comparisons, or cut to a
    small folder such as a user brings. `limit`: the first N images of each split; `per_class`: the first N of each
    class in each split; `classes`: only these classes (names, any case); `val_per_class`: also OUT/val/, the next
    N training images of each class after those in train/ (`per_class` is then required: val/ never repeats a
    training image). Class folders are the class names with "/" written "-"; files are 8-bit grayscale PNGs named
    by their index in the split they come from. Written under a temporary name and renamed into place; an existing
    `out` is never touched. Returns {split: images written}."""
    import shutil

    from PIL import Image

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; it is left as it is: choose a new folder")
    if min(limit, per_class, val_per_class) < 0:
        raise ValueError("limit, per_class and val_per_class count images: give 0 (all / none) or more")
    if val_per_class and not per_class:
        raise ValueError("a val/ split (val_per_class, --val-per-class) needs a training cut as well (per_class, "
                         "--per-class): val/ takes the training images after the first per_class of each class, so "
                         "it never repeats one")
    keep = list(range(len(FASHION_MNIST.classes)))
    if classes:
        try:
            keep = sorted({FASHION_MNIST.index(c) for c in classes})
        except KeyError as e:  # names the class and the nearest known one
            raise ValueError(f"Fashion-MNIST: {e.args[0]}") from None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    plan = [("train", "train", 0, per_class), ("test", "test", 0, per_class)]
    if val_per_class:
        plan.insert(1, ("val", "train", per_class, per_class + val_per_class))
    try:
        loaded = {}  # each source split read once (val/ cuts the training images again)
        for split, source, lo, hi in plan:
            if source not in loaded:
                loaded[source] = load_dataset("fashion_mnist", source, data_dir)
            x, y, info = loaded[source]
            index = torch.arange(len(y))
            if limit:
                index = index[:limit]
            picked = []
            for c in keep:
                of_c = index[y[index] == c]
                picked.append(of_c[lo:hi] if hi else of_c)
            index = torch.sort(torch.cat(picked)).values
            for c in keep:
                (tmp / split / folder_name(info.classes[c])).mkdir(parents=True, exist_ok=True)
            for i in index.tolist():
                Image.fromarray(x[i, 0].numpy(), mode="L").save(
                    tmp / split / folder_name(info.classes[int(y[i])]) / f"{i:05d}.png")
            counts[split] = len(index)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts
