import gzip
import pickle
import re
import struct

import numpy as np
import pytest
import torch

from hypersan.data.datasets import (FASHION_MNIST, DatasetError, DatasetInfo, augment, load_cifar10, load_cifar100,
                           load_fashion_mnist, validation_split)

from .conftest import needs_fmnist


def _write_idx(path, magic, arr):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def test_missing_system_dataset_names_it_and_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("HYPERSAN_DATA", raising=False)
    monkeypatch.setattr("hypersan.data.datasets.SYSTEM_FMNIST_DIR", str(tmp_path / "sys"))
    with pytest.raises(DatasetError) as e:
        load_fashion_mnist("test", "")  # empty: unset, so the system location is used
    msg = str(e.value)
    assert all(p in msg for p in (str(tmp_path / "sys"), "does not exist", "apt-get install dataset-fashion-mnist"))


@pytest.mark.parametrize("how", ["argument", "env"])
@pytest.mark.parametrize("state", ["missing", "empty", "lacking"])
def test_a_named_folder_without_the_files_is_an_error_not_a_fallback(tmp_path, monkeypatch, how, state):
    system = tmp_path / "sys"
    system.mkdir()
    _write_idx(system / "t10k-images-idx3-ubyte.gz", 0x803, np.zeros((10000, 28, 28), np.uint8))
    _write_idx(system / "t10k-labels-idx1-ubyte.gz", 0x801, np.zeros(10000, np.uint8))
    monkeypatch.setattr("hypersan.data.datasets.SYSTEM_FMNIST_DIR", str(system))
    assert load_fashion_mnist("test", None)[0].shape[0] == 10000  # unset: the system copy is fine
    named = tmp_path / "named"
    if state != "missing":
        named.mkdir()
    if state == "lacking":
        (named / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    want = {"missing": "does not exist", "empty": "is empty", "lacking": "lacks t10k-images-idx3-ubyte.gz"}[state]
    if how == "env":
        monkeypatch.setenv("HYPERSAN_DATA", str(named))
    source = "data_dir" if how == "argument" else "$HYPERSAN_DATA"
    with pytest.raises(DatasetError, match=re.escape(f"{named} ({source}) {want}")):
        load_fashion_mnist("test", named if how == "argument" else None)


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
        meta = {b"fine_label_names": [b"apple", b"pear", b"bee"], b"coarse_label_names": [b"fruit", b"insects"]}
        pickle.dump(meta, f)
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


def test_random_resized_crops_draw_torchvisions_boxes_and_resize_them_as_a_crop_resized():
    from hypersan.data.datasets import crop_boxes, resize_boxes

    gen = torch.Generator().manual_seed(0)
    boxes = crop_boxes(4000, 24, 32, 0.08, gen)
    x0, y0, w, h = boxes.unbind(1)
    area = w * h / (24 * 32)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 32 + 1e-4).all() and (y0 + h <= 24 + 1e-4).all()
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6 and 0.35 < area.median() < 0.6
    unclipped = (w < 32) & (h < 24)  # where no side was cut to the image, the aspect ratio lies in [3/4, 4/3]
    assert (w / h)[unclipped].min() >= 0.75 - 1e-4 and (w / h)[unclipped].max() <= 4 / 3 + 1e-4
    x = torch.rand(3, 2, 12, 16)
    whole = torch.tensor([[0.0, 0.0, 16.0, 12.0]] * 3)
    assert torch.allclose(resize_boxes(x, whole), x, atol=1e-6)  # the whole image: itself
    box = torch.tensor([[2.0, 4.0, 8.0, 6.0]] * 3)  # a quarter of the image, twice as large again
    want = torch.nn.functional.interpolate(x[:, :, 4:10, 2:10], size=(12, 16), mode="bilinear", align_corners=False)
    got = resize_boxes(x, box)
    assert torch.allclose(got[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1], atol=1e-5)  # the edge reads one pixel beyond
    out = augment(x, 2, False, torch.Generator().manual_seed(1), crop_scale=0.5)
    assert out.shape == x.shape and not torch.allclose(out, x) and out.is_contiguous()
    assert torch.equal(out, augment(x, 2, False, torch.Generator().manual_seed(1), crop_scale=0.5))  # seeded
    flat = torch.full((2, 1, 8, 8), 0.3)
    assert torch.allclose(augment(flat, 0, True, gen, crop_scale=0.08), flat)  # values are only resampled


# ---------------------------------------------------------------- vocabulary records

def test_dataset_info_round_trips():
    info = DatasetInfo.from_dict(FASHION_MNIST.to_dict())
    assert info == FASHION_MNIST
    assert "bottoms" in info.synonyms["Trouser"]


@pytest.mark.parametrize("change, message", [
    ({"classes": []}, r"'classes' must be a non-empty list"),
    ({"classes": "Bag"}, r"'classes' must be a non-empty list"),
    ({"classes": ["Bag", "bag"]}, r"'bag' repeats 'Bag'"),
    ({"classes": ["Bag", 3]}, r"'classes'\[1\] = 3"),
    ({"classes": ["Bag", " Hat"]}, r"'classes'\[1\] = ' Hat'"),
    ({"input_shape": [1, 28]}, r"'input_shape' must be three positive ints"),
    ({"input_shape": [1, 28, 0]}, r"'input_shape' must be three positive ints"),
    ({"input_shape": [1, 28.0, 28]}, r"'input_shape' must be three positive ints"),
    ({"mean": [0.1, 0.2]}, r"'mean' must be 1 finite numbers"),
    ({"std": ["0.3"]}, r"'std' must be 1 finite numbers"),
    ({"std": [0.0]}, r"'std' must be positive"),
    ({"groups": {"footwear": ["Sandal", "Hat"]}}, r"'groups'\['footwear'\]: unknown class\(es\) \['Hat'\]"),
    ({"groups": {"footwear": "Sandal"}}, r"'groups'\['footwear'\] must be a list of non-empty strings"),
    ({"groups": {"footwear": ["Sandal", "Sandal"]}}, r"lists a class twice"),
    ({"groups": ["footwear"]}, r"'groups' must map names to lists of strings"),
    ({"synonyms": {"Bag": [""]}}, r"'synonyms'\['Bag'\] must be a list of non-empty strings"),
    ({"name": ""}, r"'name' must be a non-empty string"),
    ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
])
def test_dataset_info_from_dict_names_the_bad_field(change, message):
    with pytest.raises(ValueError, match=message):
        DatasetInfo.from_dict({**FASHION_MNIST.to_dict(), **change})
    d = FASHION_MNIST.to_dict()
    del d["std"]
    with pytest.raises(ValueError, match=r"missing field\(s\) \['std'\]"):
        DatasetInfo.from_dict(d)


# ---------------------------------------------------------------- validation split

def test_validation_split_is_stratified_disjoint_and_complete():
    labels = torch.arange(60000) % 10  # Fashion-MNIST's training labels: 6,000 per class
    train_idx, val_idx = validation_split(labels, 5000, 0)
    assert torch.bincount(labels[val_idx], minlength=10).tolist() == [500] * 10
    assert len(train_idx) == 55000 and not set(train_idx.tolist()) & set(val_idx.tolist())
    assert torch.equal(torch.sort(torch.cat([train_idx, val_idx])).values, torch.arange(60000))
    assert torch.equal(val_idx, val_idx.sort().values) and train_idx.dtype == val_idx.dtype == torch.long


def test_validation_split_is_seeded():
    labels = torch.randint(0, 10, (3000,), generator=torch.Generator().manual_seed(0))
    a, b, c = (validation_split(labels, 300, s)[1] for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a fixed draw: the split must not move between releases (checkpoints record only size and seed)
    assert validation_split(torch.tensor([0, 1] * 5), 4, 3)[1].tolist() == [0, 1, 6, 9]


def test_validation_split_proportions_and_edges():
    labels = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    _, val = validation_split(labels, 10, 0)
    assert torch.bincount(labels[val], minlength=3).tolist() == [7, 2, 1]
    _, val = validation_split(labels, 15, 0)  # shares 10.5, 3, 1.5: the largest remainders (lower class first)
    assert torch.bincount(labels[val], minlength=3).tolist() == [11, 3, 1]
    train_idx, val = validation_split(labels, 0, 0)
    assert len(val) == 0 and torch.equal(train_idx, torch.arange(100))
    with pytest.raises(ValueError, match=r"validation size must be an integer in 0\.\.99.*data\.val_size"):
        validation_split(labels, 100, 0)
    with pytest.raises(ValueError, match="validation seed"):
        validation_split(labels, 5, -1)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        validation_split(labels.float(), 5, 0)


def test_a_relative_data_folder_is_found_from_any_working_directory(tmp_path, monkeypatch):
    from hypersan.data.datasets import DatasetError, data_home_path, load_folder_dataset, save_folder_dataset
    home = tmp_path / "home"
    save_folder_dataset(home / "data" / "mine", ["a", "b"], (np.zeros((4, 1, 8, 8), np.uint8), np.array([0, 1, 0, 1])),
                        (np.zeros((2, 1, 8, 8), np.uint8), np.array([0, 1])))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HYPERSAN_DATA_HOME", str(home))
    assert data_home_path("data/mine") == home / "data" / "mine"
    x, y, info = load_folder_dataset("train", "data/mine")  # as a checkpoint's config names it
    assert len(y) == 4 and info.classes == ["a", "b"]
    from hypersan.data import datasets

    monkeypatch.setattr(datasets, "CHECKOUT", tmp_path / "a-checkout-without-data")  # whether or not this one has it
    with pytest.raises(DatasetError, match="make glyphs"):  # a missing glyph set says what builds it
        load_folder_dataset("train", "data/glyphs")


def test_a_split_read_twice_is_decompressed_once_and_a_changed_file_again(tmp_path, monkeypatch):
    import hypersan.data.datasets as ds

    imgs = np.arange(10000 * 28 * 28, dtype=np.int64).astype(np.uint8).reshape(10000, 28, 28)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, (np.arange(10000) % 10).astype(np.uint8))
    opened = []
    real = gzip.open
    monkeypatch.setattr(ds.gzip, "open", lambda path, mode="rb": (mode == "rb" and opened.append(path)) or
                        real(path, mode))
    ds._decompressed.cache_clear()
    x1, y1 = load_fashion_mnist("test", tmp_path)
    x1[0, 0, 0, 0] = 255  # the caller's copy: changing it changes nothing that is cached
    x2, y2 = load_fashion_mnist("test", tmp_path)
    assert len(opened) == 2  # images and labels, once each
    assert x2[0, 0, 0, 0] == 0 and torch.equal(x2[1:], torch.from_numpy(imgs[1:]).unsqueeze(1))
    assert torch.equal(y1, y2)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, ((np.arange(10000) + 1) % 10).astype(np.uint8))
    y3 = load_fashion_mnist("test", tmp_path)[1]
    assert len(opened) == 3 and torch.equal(y3, (y1 + 1) % 10)  # the changed file is read again
