"""Your own data: a folder of .npz files read without unpickling, through training, pruning and evaluation."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hypersan.config import ConfigError, load_config
from hypersan.data.datasets import DatasetError, load_dataset, save_folder_dataset
from hypersan.prune.engine import PruningEngine
from hypersan.io import OutputExistsError
from hypersan.training.train import train

from .conftest import PATTERN_CLASSES as CLASSES
from .conftest import ROOT
from .conftest import pattern_images as _images

def _folder(tmp_path, **kw):
    return save_folder_dataset(tmp_path / "mine", CLASSES, _images(96, 0), _images(32, 1),
                               groups={"round": ["circle"], "lines": ["cross", "stripes"]}, **kw)


def test_folder_round_trips_with_its_vocabulary_and_statistics(tmp_path):
    folder = _folder(tmp_path)
    x, y, info = load_dataset("folder", "train", str(folder))
    want_x, want_y = _images(96, 0)
    assert torch.equal(x, torch.from_numpy(want_x)) and torch.equal(y, torch.from_numpy(want_y))
    assert info.classes == CLASSES and info.input_shape == (3, 12, 12) and info.name == "mine"
    assert info.groups["lines"] == ["cross", "stripes"]
    assert info.mean == pytest.approx((want_x.mean(axis=(0, 2, 3)) / 255).tolist())
    xt, yt, _ = load_dataset("folder", "test", str(folder))
    assert xt.shape == (32, 3, 12, 12) and yt.dtype == torch.int64
    gray = save_folder_dataset(tmp_path / "gray", ["a", "b"], (np.zeros((4, 5, 5), np.uint8), [0, 1, 0, 1]),
                               (np.zeros((2, 5, 5), np.uint8), [1, 0]))
    assert load_dataset("folder", "train", str(gray))[2].input_shape == (1, 5, 5)  # (N, H, W): one channel
    with pytest.raises(OutputExistsError):
        _folder(tmp_path)  # never replaced without force
    _folder(tmp_path, force=True)


@pytest.mark.parametrize("bad, message", [
    (lambda x, y: (x.astype(np.float32), y), "must be uint8"),
    (lambda x, y: (x, y[:-1]), "one per image"),
    (lambda x, y: (x, y + 1), r"must lie in 0\.\.3"),
    (lambda x, y: (x[:, :, :, :, None], y), "shape"),
])
def test_bad_arrays_are_refused_with_the_fix(tmp_path, bad, message):
    with pytest.raises(DatasetError, match=message):
        save_folder_dataset(tmp_path / "d", CLASSES, bad(*_images(8, 0)), _images(8, 1))
    assert not (tmp_path / "d").exists()


def test_reader_refuses_pickles_missing_files_and_a_missing_folder(tmp_path):
    folder = _folder(tmp_path)
    with pytest.raises(DatasetError, match="needs data.data_dir"):
        load_dataset("folder", "train", None)
    np.savez(folder / "test.npz", images=np.array([object()], dtype=object), labels=np.zeros(1, np.int64))
    with pytest.raises(DatasetError, match="not a readable .npz of plain arrays"):
        load_dataset("folder", "test", str(folder))
    (folder / "train.npz").unlink()
    with pytest.raises(DatasetError, match="lacks train.npz"):
        load_dataset("folder", "train", str(folder))
    with pytest.raises(ConfigError, match="folder"):
        load_config(None, ["data.dataset=imagenet"])


def test_own_data_trains_prunes_exports_and_evaluates(tmp_path):
    folder = _folder(tmp_path)
    cfg = load_config(ROOT / "configs" / "tiny.toml", ["data.dataset=folder", f"data.data_dir={folder}",
                                                       "data.val_size=16", "data.hflip=false",
                                                       "train.batch_size=16", "train.epochs=1",
                                                       "calib.batch_size=16", "train.eval_subtasks=1"])
    model = train(cfg, tmp_path / "run", log=lambda m: None)
    assert model.classes == CLASSES and model.info.input_shape == (3, 12, 12)
    engine = PruningEngine.from_pretrained(tmp_path / "run")
    summary = engine.export("lines", tmp_path / "art", ["safetensors", "onnx"])  # a group of your own, in words
    assert summary["classes"] == ["cross", "stripes"] and 0 < summary["mac_ratio"] <= 1
    net = engine.subnet(["cross", "stripes"])
    assert net(torch.rand(2, 3, 12, 12)).shape == (2, 2)
    r = subprocess.run([sys.executable, "-m", "hypersan", "eval", "--checkpoint", str(tmp_path / "run"),
                        "--subtasks", "square,cross", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["subtasks"]
    assert [row["classes"] for row in rows] == [["square", "cross"]]

    # a checkpoint's cached statistics serve without its training images (a shipped model on a machine without
    # the data); a class set it has none for still needs them, and says so
    engine.save_pretrained(tmp_path / "ship")
    assert engine.model.meta["calibration_source"].startswith("folder:train")
    folder.rename(tmp_path / "moved")
    away = PruningEngine.from_pretrained(tmp_path / "ship")
    again = away.subnet(["cross", "stripes"])
    x = torch.rand(4, 3, 12, 12)
    assert torch.allclose(again(x), net(x), atol=1e-6)
    with pytest.raises(DatasetError, match="could not be read"):
        away.subnet(["circle", "square"])


def test_a_dataset_folder_with_its_own_validation_split(tmp_path):
    import numpy as np
    import pytest

    from hypersan.config import ConfigError, load_config
    import torch

    from hypersan.data.datasets import save_folder_dataset, validation_images
    from hypersan.prune.engine import training_split
    from hypersan.training.train import split_training_data

    from .conftest import ROOT

    g = np.random.default_rng(0)
    make = lambda n: (g.integers(0, 255, (n, 8, 8), dtype=np.uint8), np.arange(n) % 3)  # noqa: E731
    save_folder_dataset(tmp_path / "d", ["a", "b", "c"], make(30), make(9), val=make(6), card={"source": "test"})
    over = ['data.dataset="folder"', f'data.data_dir="{tmp_path / "d"}"', 'data.val_split="dataset"']
    cfg = load_config(ROOT / "configs" / "tiny.toml", over)
    tx, ty, vx, vy, _ = split_training_data(cfg)
    assert len(ty) == 30 and len(vy) == 6  # every training image trains; validation is val.npz
    info = __import__("json").loads((tmp_path / "d" / "dataset.json").read_text())
    assert info["card"]["source"] == "test" and set(info["card"]["arrays"]) == {"train", "val", "test"}

    class M:  # training_split reads only the config
        config = cfg
    assert len(training_split(M)[1]) == 30
    # the validation file alone (what a guarded budget picks on): the training images are not read
    (tmp_path / "d" / "train.npz").rename(tmp_path / "train.npz.away")
    gx, gy = validation_images(cfg.data)
    assert torch.equal(gx, vx) and torch.equal(gy, vy)
    (tmp_path / "train.npz.away").rename(tmp_path / "d" / "train.npz")
    with pytest.raises(ConfigError, match="val_split = 'dataset'"):
        load_config(ROOT / "configs" / "tiny.toml", ['data.val_split="dataset"'])
