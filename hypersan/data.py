"""Datasets: Fashion-MNIST (IDX) and CIFAR-10/100 readers, class vocabularies, groups, augmentation."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SYSTEM_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DatasetError(RuntimeError):
    """Dataset files are missing, truncated or malformed."""


@dataclass
class DatasetInfo:
    """A dataset's vocabulary: class names, named groups, synonyms and image statistics."""

    name: str
    classes: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    groups: dict[str, list[str]] = field(default_factory=dict)  # group name -> class names
    synonyms: dict[str, list[str]] = field(default_factory=dict)  # class or group name -> other words for it

    def index(self, name: str) -> int:
        """Index of a class by its canonical name (case-insensitive)."""
        low = {c.lower(): i for i, c in enumerate(self.classes)}
        try:
            return low[name.strip().lower()]
        except KeyError:
            raise KeyError(f"unknown class {name!r}; known classes: {', '.join(self.classes)}") from None

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": self.classes, "input_shape": list(self.input_shape),
                "mean": list(self.mean), "std": list(self.std), "groups": self.groups, "synonyms": self.synonyms}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        return cls(name=d["name"], classes=list(d["classes"]), input_shape=tuple(d["input_shape"]),
                   mean=tuple(d["mean"]), std=tuple(d["std"]), groups=dict(d.get("groups", {})),
                   synonyms=dict(d.get("synonyms", {})))


FASHION_MNIST = DatasetInfo(
    name="fashion_mnist",
    classes=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    input_shape=(1, 28, 28),
    mean=(0.2860,),
    std=(0.3530,),
    groups={
        "footwear": ["Sandal", "Sneaker", "Ankle boot"],
        "tops": ["T-shirt/top", "Pullover", "Shirt"],
        "outerwear": ["Pullover", "Coat"],
        "upper body": ["T-shirt/top", "Pullover", "Coat", "Shirt"],
        "clothing": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Shirt"],
        "accessories": ["Bag"],
    },
    # Plurals need no entry: grounding (hypersan.grounding) matches singular and plural forms of every phrase.
    synonyms={
        "T-shirt/top": ["t-shirt", "tshirt", "tee", "tee shirt", "top", "t shirt", "tank top", "singlet", "crop top"],
        "Trouser": ["trousers", "pants", "jeans", "slacks", "chinos", "leggings", "joggers"],
        "Pullover": ["sweater", "jumper", "hoodie", "sweatshirt", "cardigan", "fleece", "knitwear", "turtleneck"],
        "Dress": ["gown", "frock", "sundress"],
        "Coat": ["jacket", "overcoat", "parka", "anorak", "raincoat", "trench coat", "windbreaker", "blazer"],
        "Sandal": ["flip-flop", "flip flop", "slipper", "espadrille"],
        "Shirt": ["blouse", "button-down", "dress shirt", "polo shirt", "flannel shirt"],
        "Sneaker": ["trainer", "running shoe", "sports shoe", "tennis shoe", "athletic shoe", "gym shoe", "kicks"],
        "Bag": ["handbag", "purse", "backpack", "tote", "satchel", "clutch", "shoulder bag", "tote bag", "rucksack",
                "duffel bag", "messenger bag"],
        "Ankle boot": ["boot", "booties", "bootie"],
        "footwear": ["shoes", "shoe", "footgear"],
        "tops": [],
        "outerwear": ["outer wear"],
        "clothing": ["clothes", "apparel"],
    },
)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _find_dir(data_dir: str | os.PathLike | None, system_dir: str, required: list[str], what: str, how: str) -> Path:
    """First of data_dir, $HYPERSAN_DATA, system_dir that holds every required file."""
    tried = []
    for cand in (data_dir, os.environ.get("HYPERSAN_DATA"), system_dir):
        if not cand:
            continue
        p = Path(cand)
        tried.append(str(p))
        if all((p / r).exists() for r in required):
            return p
    raise DatasetError(f"{what} not found; looked for {', '.join(required)} in: {', '.join(tried) or '(nothing)'}. {how}")


# ---------------------------------------------------------------- Fashion-MNIST (IDX)

def _read_idx(path: Path, magic: int, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """Read one gzipped IDX file, checking magic number, count and shape."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: cannot decompress ({e}); the file is truncated or corrupt, reinstall it") from None
    ndim = len(shape) + 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: file too short for an IDX header ({len(raw)} bytes); it is truncated")
    got_magic = struct.unpack(">I", raw[:4])[0]
    if got_magic != magic:
        raise DatasetError(f"{path}: bad magic number {got_magic:#x}, expected {magic:#x}; not an IDX file of this kind")
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


def load_cifar100(split: str, data_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
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


def load_dataset(name: str, split: str, data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """(images uint8 NCHW, labels int64, vocabulary) of a named dataset split."""
    if name == "fashion_mnist":
        return (*load_fashion_mnist(split, data_dir), FASHION_MNIST)
    if name == "cifar10":
        return (*load_cifar10(split, data_dir), DatasetInfo("cifar10", CIFAR10_CLASSES, (3, 32, 32), CIFAR_MEAN, CIFAR_STD))
    if name == "cifar100":
        return load_cifar100(split, data_dir)
    raise ValueError(f"unknown dataset {name!r}; choose fashion_mnist, cifar10 or cifar100")


# ---------------------------------------------------------------- augmentation

def augment(x: torch.Tensor, padding: int, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of a float batch (B, C, H, W)."""
    b, c, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
        cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
        x = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]."""
    return x.float().div_(255.0)
