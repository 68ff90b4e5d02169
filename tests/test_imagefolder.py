"""Image folders (data.dataset = "imagefolder"): PNG and JPEG class folders decoded with Pillow, the vocabulary
from the folder names, normalization from the training images, and a clear error (or a counted skip) for every
kind of bad input."""
import json

import numpy as np
import pytest

PIL = pytest.importorskip("PIL", reason="image folders are decoded with Pillow: pip install pillow")
from PIL import Image  # noqa: E402

from hypersan.data.datasets import DatasetError, load_dataset  # noqa: E402
from hypersan.data.imagefolder import last_skipped  # noqa: E402
from .conftest import needs_fmnist  # noqa: E402

CLASSES = ["cat", "dog", "fish"]


def _make(root, splits=("train", "test"), per_class=4, size=(12, 10), mode="L", fmt="png", seed=0):
    rng = np.random.default_rng(seed)
    for split in splits:
        for k, c in enumerate(CLASSES):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                shape = (size[1], size[0]) + (() if mode == "L" else (3,))
                arr = np.clip(rng.normal(60 * k + 40, 10, shape), 0, 255).astype(np.uint8)
                Image.fromarray(arr, mode).save(d / f"{i}.{fmt}")
    return root


def test_a_folder_of_class_folders_loads_with_its_vocabulary_and_statistics(tmp_path):
    root = _make(tmp_path / "pets")
    x, y, info = load_dataset("imagefolder", "train", str(root))
    assert str(x.dtype) == "torch.uint8" and tuple(x.shape) == (12, 1, 10, 12) and y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert info.classes == CLASSES and info.name == "pets" and info.input_shape == (1, 10, 12)
    assert info.mean[0] == pytest.approx(x.float().mean().item() / 255, rel=1e-5)
    tx, ty, tinfo = load_dataset("imagefolder", "test", str(root))
    assert len(ty) == 12 and tinfo.classes == CLASSES and tinfo.mean == info.mean  # the training split's statistics
    with pytest.raises(DatasetError, match="no val/ folder"):
        load_dataset("imagefolder", "val", str(root))


def test_rgb_jpegs_and_a_root_without_split_folders(tmp_path):
    _make(tmp_path, splits=("flat",), mode="RGB", fmt="jpg")
    x, y, info = load_dataset("imagefolder", "train", str(tmp_path / "flat"))  # the class folders at the root
    assert tuple(x.shape[1:]) == (3, 10, 12) and info.classes == CLASSES and len(info.mean) == 3
    x1, _, _ = load_dataset("imagefolder", "train", str(tmp_path / "flat"), channels=1)
    assert tuple(x1.shape[1:]) == (1, 10, 12)


def test_photos_of_mixed_sizes_are_brought_to_one_size_as_torchvisions_resize_and_centre_crop(tmp_path):
    from hypersan.config import ConfigError, load_config

    root = tmp_path / "photos" / "train"
    for c in CLASSES:
        (root / c).mkdir(parents=True)
    cols = np.tile(np.arange(14, dtype=np.uint8) * 10, (8, 1))  # 14 wide, 8 high: its shorter side is the size
    Image.fromarray(cols, "L").save(root / "cat" / "wide.png")
    halves = np.zeros((10, 20), np.uint8)
    halves[:, 10:] = 255  # 20 x 10, dark left half: resized to 16 x 8, then its centre 8 columns
    Image.fromarray(halves, "L").save(root / "dog" / "halves.png")
    Image.fromarray(np.full((3, 5), 200, np.uint8), "L").save(root / "fish" / "small.png")  # enlarged
    with pytest.raises(DatasetError, match="data.image_size = N"):
        load_dataset("imagefolder", "train", str(root.parent))
    x, y, info = load_dataset("imagefolder", "train", str(root.parent), image_size=8)
    assert tuple(x.shape) == (3, 1, 8, 8) and info.input_shape == (1, 8, 8) and y.tolist() == [0, 1, 2]
    assert np.array_equal(x[0, 0].numpy(), cols[:, 3:11])  # no resize: the centre crop, exactly
    dog = x[1, 0].numpy()
    assert (dog[:, :3] == 0).all() and (dog[:, 5:] == 255).all()  # the edge in the middle, blended at most there
    assert (x[2] == 200).all()
    assert tuple(load_dataset("imagefolder", "train", str(root.parent), image_size=6)[0].shape) == (3, 1, 6, 6)
    assert load_config(None, ['data.dataset="imagefolder"', "data.image_size=224"]).data.image_size == 224
    with pytest.raises(ConfigError, match="data.image_size"):
        load_config(None, ['data.dataset="imagefolder"', "data.image_size=-1"])
    with pytest.raises(ConfigError, match="the fashion_mnist images are read as they are: remove it"):
        load_config(None, ["data.image_size=224"])


def test_bad_input_is_a_clear_error_and_corrupt_images_can_be_skipped_and_counted(tmp_path):
    root = _make(tmp_path / "a")
    (root / "train" / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match=r"3.png cannot be decoded .*corrupt_images = \"skip\""):
        load_dataset("imagefolder", "train", str(root))
    with pytest.warns(UserWarning, match="1 corrupt image"):
        x, y, _ = load_dataset("imagefolder", "train", str(root), corrupt="skip")
    assert len(y) == 11 and (y == 1).sum() == 3
    assert [p.endswith("3.png") for p in last_skipped[str(root / "train")]] == [True]

    root = _make(tmp_path / "b")
    (root / "train" / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="notes.txt, which are not .png/.jpg/.jpeg images"):
        load_dataset("imagefolder", "train", str(root))

    root = _make(tmp_path / "c")
    Image.fromarray(np.zeros((20, 20), np.uint8), "L").save(root / "train" / "fish" / "big.png")
    with pytest.raises(DatasetError, match=r"big.png is 20x20 .* same size and channels; set data.image_size = N"):
        load_dataset("imagefolder", "train", str(root))
    Image.fromarray(np.zeros((10, 12, 3), np.uint8), "RGB").save(root / "train" / "fish" / "big.png")
    with pytest.raises(DatasetError, match=r"big.png is 12x10 with 3 channel\(s\).* set data.channels = 1 or 3"):
        load_dataset("imagefolder", "train", str(root))

    root = _make(tmp_path / "d")
    (root / "train" / "bird").mkdir()
    with pytest.raises(DatasetError, match="bird holds no readable image"):
        load_dataset("imagefolder", "train", str(root))

    root = _make(tmp_path / "e")
    (root / "test" / "cow").mkdir()
    Image.fromarray(np.zeros((10, 12), np.uint8), "L").save(root / "test" / "cow" / "0.png")
    with pytest.raises(DatasetError, match=r"\['cow'\] are not classes of the training split"):
        load_dataset("imagefolder", "test", str(root))

    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("imagefolder", "train", str(tmp_path / "missing"))


def test_a_model_trains_on_an_image_folder_and_prunes_to_named_classes(tmp_path):
    from hypersan.config import load_config
    from hypersan.prune.engine import PruningEngine
    from hypersan.training.train import train

    root = _make(tmp_path / "pets", splits=("train", "val", "test"), per_class=8, size=(16, 16))
    cfg = load_config(None, ['data.dataset="imagefolder"', f'data.data_dir="{root}"', 'data.val_split="dataset"',
                             "model.widths=[4, 8]", "model.blocks=[1, 1]", "generator.hidden=16", "train.epochs=1",
                             "train.batch_size=8", "train.eval_every=0", "calib.batches=1", "calib.batch_size=8",
                             "subtasks.size_weights=[1, 1]", "train.progress=false", "vocab.synonyms.dog=['puppy']"])
    train(cfg, tmp_path / "run", log=lambda m: None)
    engine = PruningEngine.from_pretrained(tmp_path / "run")
    assert engine.model.classes == CLASSES
    net = engine.subnet("puppies and fish")
    assert net.classes == ["dog", "fish"]


def test_photo_settings_the_normalization_your_weights_expect_and_random_resized_crops(tmp_path):
    import dataclasses

    import torch

    from hypersan.config import ConfigError, load_config
    from hypersan.data.datasets import load_split
    from hypersan.prune.engine import PruningEngine
    from hypersan.training.train import train

    root = _make(tmp_path / "pets", per_class=8, size=(16, 16), mode="RGB")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, as torchvision's weights expect
    base = ['data.dataset="imagefolder"', f'data.data_dir="{root}"']
    cfg = load_config(None, [*base, f"data.mean={mean}", f"data.std={std}", "data.val_size=6", "data.crop_scale=0.35",
                             "model.widths=[4, 8]", "model.blocks=[1, 1]", "generator.hidden=16", "train.epochs=1",
                             "train.batch_size=8", "train.eval_every=0", "calib.batches=1", "calib.batch_size=8",
                             "subtasks.size_weights=[1, 1]", "train.progress=false"])
    own = load_dataset("imagefolder", "train", str(root))[2]
    for split in ("train", "test"):
        info = load_split(cfg.data, split)[2]
        assert info.mean == tuple(mean) and info.std == tuple(std) and info.classes == CLASSES
    assert own.mean != tuple(mean)
    train(cfg, tmp_path / "run", log=lambda m: None)
    engine = PruningEngine.from_pretrained(tmp_path / "run")  # the checkpoint keeps it, and so does every subnet
    spec = engine.calib_spec()  # BN calibrates on images augmented as in training: random resized crops here
    assert spec.augmentation.crop_scale == 0.35
    padded = dataclasses.replace(spec, augmentation=dataclasses.replace(spec.augmentation, crop_scale=0.0))
    assert spec.fingerprint() != padded.fingerprint()
    for net in (engine.model.backbone, engine.subnet(["cat", "dog"])):
        assert torch.allclose(net.norm.mean.flatten(), torch.tensor(mean))
        assert torch.allclose(net.norm.std.flatten(), torch.tensor(std))
    # either alone: the other stays the folder's own
    info = load_split(load_config(None, [*base, "data.mean=[0.5, 0.5, 0.5]"]).data, "train")[2]
    assert info.mean == (0.5, 0.5, 0.5) and info.std == own.std
    gray = _make(tmp_path / "gray", splits=("train",))
    with pytest.raises(DatasetError, match=r"data.std has 3 value\(s\) and the images have 1 channel.*"
                                           r"data.channels = 3"):
        load_split(load_config(None, ['data.dataset="imagefolder"', f'data.data_dir="{gray}"',
                                      f"data.std={std}"]).data, "train")
    with pytest.raises(ConfigError, match=r"data.std\[1\] must be > 0"):
        load_config(None, ["data.std=[0.2, 0.0, 0.2]"])


@needs_fmnist
def test_fashion_mnist_written_as_an_image_folder_reads_back_the_same_pixels(tmp_path):
    pytest.importorskip("PIL")

    from hypersan.data.datasets import load_dataset
    from hypersan.data.imagefolder import load_image_folder

    from hypersan.cli.commands import main
    from hypersan.data.datasets import folder_name

    assert main(["data", "fashion-mnist-png", "--out", str(tmp_path / "png"), "--limit", "40"]) == 0
    mark = tmp_path / "png" / "train"
    assert main(["data", "fashion-mnist-png", "--out", str(tmp_path / "png"), "--limit", "40"]) == 2
    assert mark.is_dir()  # never over an existing folder
    x, y, info = load_image_folder("test", tmp_path / "png")
    want_x, want_y, fm = load_dataset("fashion_mnist", "test")
    order = sorted(range(40), key=lambda i: (folder_name(fm.classes[int(want_y[i])]), i))
    assert info.classes == sorted(folder_name(c) for c in fm.classes if any(
        fm.classes[int(v)] == c for v in want_y[:40]))
    assert x.shape == (40, 1, 28, 28) and (x.numpy() == want_x[order].numpy()).all()


@needs_fmnist
def test_a_small_fashion_mnist_folder_per_class_with_its_own_val(tmp_path):
    pytest.importorskip("PIL")
    from hypersan.data.datasets import load_dataset, write_fashion_mnist_folder
    from hypersan.data.imagefolder import load_image_folder

    counts = write_fashion_mnist_folder(tmp_path / "f", per_class=3, classes=["bag", "Sneaker "], val_per_class=2)
    assert counts == {"train": 6, "val": 4, "test": 6}
    train_x, train_y, fm = load_dataset("fashion_mnist", "train")
    for split, want in (("train", 3), ("val", 2), ("test", 3)):
        x, y, info = load_image_folder(split, tmp_path / "f")
        assert info.classes == ["Bag", "Sneaker"] and np.bincount(y.numpy()).tolist() == [want, want]
    files = {split: {p.name for p in (tmp_path / "f" / split).rglob("*.png")} for split in ("train", "val")}
    assert not files["train"] & files["val"]  # val/ never repeats a training image
    bags = [i for i in range(len(train_y)) if train_y[i] == fm.classes.index("Bag")]
    assert sorted(p.name for p in (tmp_path / "f" / "val" / "Bag").glob("*.png")) == [f"{i:05d}.png" for i in bags[3:5]]
    x, _, _ = load_image_folder("val", tmp_path / "f")
    assert (x[0].numpy() == train_x[bags[3]].numpy()).all()  # the same pixels as the built-in loader's
    with pytest.raises(ValueError, match="needs a training cut"):
        write_fashion_mnist_folder(tmp_path / "g", val_per_class=2)
    with pytest.raises(ValueError, match="Fashion-MNIST: unknown class 'shoes'; known classes: T-shirt/top"):
        write_fashion_mnist_folder(tmp_path / "g", per_class=2, classes=["shoes"])
    assert not (tmp_path / "g").exists()


def _folder_config(root, *extra):
    from hypersan.config import load_config
    from .conftest import ROOT
    return load_config(ROOT / "configs" / "folder.toml", [f'data.data_dir="{root}"', "train.progress=false", *extra])


def test_a_small_folder_trains_with_the_documented_config(tmp_path, capsys):
    from hypersan.config import load_config
    from hypersan.training.train import split_training_data, train
    from .conftest import ROOT

    root = _make(tmp_path / "pets", splits=("train",), per_class=30, size=(16, 16))  # 3 x 30 images, no val/, test/
    # the documented config; one epoch and 4 steps keep the test short (the config asks for train.min_steps)
    assert load_config(ROOT / "configs" / "folder.toml").train.min_steps >= 300
    cfg = _folder_config(root, "train.epochs=1", "train.min_steps=4")
    tx, ty, vx, vy, _ = split_training_data(cfg)
    assert (len(tx), len(vx)) == (81, 9) and sorted(vy.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # a tenth, stratified
    lines = []
    model = train(cfg, tmp_path / "run", log=lines.append)
    assert model.classes == CLASSES
    # 81 images at 64 a batch make 2 steps an epoch: 2 epochs take the 4 steps asked for, and the run says so
    assert [h["epoch"] for h in model.meta["history"]] == [1, 2]
    assert any("training 2 epochs, not 1" in m and "train.min_steps = 4" in m for m in lines), lines
    # it prints a line for each epoch asked for (the one), while meta.json's history keeps both
    assert [json.loads(m)["epoch"] for m in lines if m.startswith("{")] == [2]
    # the stretched run evaluates as often as the one asked for (every 10 of 1 epoch: at the end only)
    assert ["val_dense_acc" in h for h in model.meta["history"]] == [False, True]
    assert any("evaluating at its end" in m for m in lines), lines  # not "every 20 epochs" of a 2-epoch run
    assert json.loads((tmp_path / "run" / "train_state.json").read_text())["epochs"] == 2
    # the documented config builds widths in the CPU's vector blocks (free widths run slower than their MACs say)
    from hypersan.prune.engine import PruningEngine, vector_block

    engine = PruningEngine.from_pretrained(tmp_path / "run")
    full = {s.name: s.size for s in engine.model.sites if s.kind == "utility"}
    widths = engine.subnet(CLASSES[:2]).arch["site_widths"]
    assert all(w % vector_block() == 0 or w == full[name] for name, w in widths.items()), widths
    # no test/ folder: eval says how to add one, or to score the validation split instead, which works
    from hypersan.cli import main

    names = ",".join(CLASSES[:2])
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--subtasks", names]) == 2
    err = capsys.readouterr().err
    assert "has no test/ folder" in err and err.rstrip().endswith("hypersan eval --split val")
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--subtasks", names, "--split", "val"]) == 0
    capsys.readouterr()
    # the demo has no example requests for a user's data set: it names the model's own classes as examples
    assert main(["demo", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "demo")]) == 2
    assert '"cat" "dog")' in capsys.readouterr().err and not (tmp_path / "demo").exists()


def test_a_folder_with_val_validates_on_it_and_a_tiny_one_says_what_it_needs(tmp_path):
    from hypersan.config import ConfigError
    from hypersan.training.train import split_training_data

    root = _make(tmp_path / "pets", splits=("train", "val"), per_class=5, size=(16, 16))
    tx, _, vx, _, _ = split_training_data(_folder_config(root))
    assert (len(tx), len(vx)) == (15, 15)  # every training image trains; val/ validates
    tiny = _make(tmp_path / "one", per_class=1, size=(16, 16))
    with pytest.raises(ConfigError, match="at least 2"):
        split_training_data(_folder_config(tiny))
    assert len(split_training_data(_folder_config(tiny, "data.val_fraction=0"))[0]) == 3  # no validation: allowed


def test_a_training_limit_keeps_every_class_of_a_folder_read_class_by_class():
    import torch

    from hypersan.data.datasets import limit_indices

    mixed = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    assert limit_indices(mixed, 4).tolist() == [0, 1, 2, 3]  # the first N, as stored, when they hold every class
    by_class = torch.tensor([0] * 6 + [1] * 3 + [2] * 3)
    pick = limit_indices(by_class, 6)
    assert pick.tolist() == [0, 1, 2, 6, 7, 9, 10]  # each class its share (6 x 6/12, 6 x 3/12 rounded), in order
    assert limit_indices(by_class, 50).tolist() == list(range(12))


def test_a_val_or_test_folder_without_a_class_trains_and_scores_the_others(tmp_path, capsys):
    import shutil

    from hypersan.cli import main
    from hypersan.training.train import train

    root = _make(tmp_path / "pets", splits=("train", "val", "test"), per_class=6, size=(16, 16))
    shutil.rmtree(root / "val" / "fish")  # val/ and test/ without fish: allowed, and said so
    shutil.rmtree(root / "test" / "fish")
    lines = []
    train(_folder_config(root, "train.epochs=1", "train.min_steps=0", "train.eval_subtasks=6"), tmp_path / "run",
          log=lines.append)
    assert any("validation split has no images of 1 class(es) (fish)" in m for m in lines), lines
    last = json.loads([m for m in lines if m.startswith("{")][-1])
    assert 0 <= last["val_dense_acc"] <= 1 and 0 <= last["val_sub_acc"] <= 1  # cat-dog scored; no set with fish
    run = str(tmp_path / "run")
    assert main(["eval", "--checkpoint", run, "--subtasks", "cat,fish"]) == 2  # nothing to score fish on
    err = capsys.readouterr().err
    assert "hold no image of 'fish'" in err and "add images of that class" in err
    assert main(["eval", "--checkpoint", run, "--subtasks", "cat,dog", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["absent_classes"] == ["fish"] and 0 <= r["dense"]["map"] <= 1 and r["subtasks"][0]["classes"] == ["cat", "dog"]
    assert main(["eval", "--checkpoint", run, "--subtasks", "cat,dog"]) == 0
    assert "no images of 1 class(es) (fish): the dense mAP averages the others" in capsys.readouterr().out
    # a single class: the footnote names the decision rule its acc used (a threshold calibrated on training images)
    assert main(["eval", "--checkpoint", run, "--subtasks", "cat"]) == 0
    assert "every test image, at a logit threshold calibrated on labelled training images" in capsys.readouterr().out


def test_a_message_names_at_most_five_classes():
    from hypersan.info import few_names

    assert few_names(["fish"]) == "fish" and few_names("abcde") == "a, b, c, d, e"
    assert few_names("abcdefg") == "a, b, c, d, e, ..."
