import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from hypersan.data import DatasetError, augment, load_cifar10, load_cifar100, load_fashion_mnist

from .conftest import needs_fmnist


def _write_idx(path, magic, arr):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def test_missing_dataset_names_every_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERSAN_DATA", str(tmp_path / "env"))
    monkeypatch.setattr("hypersan.data.SYSTEM_FMNIST_DIR", str(tmp_path / "sys"))
    with pytest.raises(DatasetError) as e:
        load_fashion_mnist("test", tmp_path / "explicit")
    msg = str(e.value)
    assert all(p in msg for p in ("explicit", "env", "sys", "apt-get install dataset-fashion-mnist"))


@pytest.mark.parametrize("damage", ["truncated_gzip", "bad_magic", "wrong_count", "short_payload"])
def test_corrupt_idx_gives_clear_error(tmp_path, damage):
    imgs = np.zeros((10000, 28, 28), np.uint8)
    labels = np.zeros(10000, np.uint8)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, labels)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    if damage == "bad_magic":
        _write_idx(p, 0x1234, imgs)
    elif damage == "wrong_count":
        _write_idx(p, 0x803, imgs[:9000])
    else:
        _write_idx(p, 0x803, imgs)
        raw = p.read_bytes()
        if damage == "truncated_gzip":
            p.write_bytes(raw[: len(raw) // 2])
        else:
            with gzip.open(p, "wb") as f:
                f.write(gzip.decompress(raw)[:-100])
    with pytest.raises(DatasetError, match=str(p)):
        load_fashion_mnist("test", tmp_path)


@needs_fmnist
def test_real_fashion_mnist_shapes_and_labels():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10000,) and set(y.unique().tolist()) == set(range(10))
    assert torch.bincount(y).eq(1000).all()


def test_cifar_readers_on_written_files(tmp_path):
    rng = np.random.default_rng(0)
    c10 = tmp_path / "c10"
    c10.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(c10 / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 9]}, f)
    x, y = load_cifar10("train", c10)
    assert x.shape == (20, 3, 32, 32) and y.tolist()[:4] == [0, 1, 2, 9]
    c100 = tmp_path / "c100"
    c100.mkdir()
    with open(c100 / "train", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 255, (3, 3072), dtype=np.uint8), b"fine_labels": [0, 1, 2],
                     b"coarse_labels": [0, 0, 1]}, f)
    with open(c100 / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"apple", b"pear", b"bee"], b"coarse_label_names": [b"fruit", b"insects"]}, f)
    x, y, info = load_cifar100("train", c100)
    assert info.groups == {"fruit": ["apple", "pear"], "insects": ["bee"]} and y.tolist() == [0, 1, 2]


def test_cifar_reader_refuses_foreign_pickles(tmp_path):
    d = tmp_path / "c10"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(d / name, "wb") as f:
            pickle.dump({"data": __import__("collections").OrderedDict()}, f)
    with pytest.raises(DatasetError, match="refusing to load collections.OrderedDict"):
        load_cifar10("train", d)


def test_augment_crops_and_flips_within_padding():
    x = torch.rand(16, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = augment(x, 2, True, gen)
    assert out.shape == x.shape
    for b in range(16):
        padded = torch.nn.functional.pad(x[b], (2, 2, 2, 2))
        crops = [padded[:, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], c) or torch.equal(out[b], c.flip(2)) for c in crops)
