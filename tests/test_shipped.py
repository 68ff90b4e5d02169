"""The Fashion-MNIST models shipped inside the package."""
import pytest
import torch

from hypersan.data import load_fashion_mnist
from hypersan.evaluate import evaluate
from hypersan.io import ArtifactError
from hypersan.model import SHIPPED, SubtaskAdaptiveNet, default_checkpoint, resolve_checkpoint

from .conftest import needs_fmnist


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_model_is_small_and_self_describing(name):
    d = default_checkpoint(name)
    assert (d / "model.safetensors").is_file(), "the shipped model is missing from the package"
    assert sum(f.stat().st_size for f in d.iterdir()) <= 10 * 2**20
    assert not (d / "optimizer.safetensors").exists()
    model = SubtaskAdaptiveNet.from_pretrained(name)
    metrics = model.meta["metrics"]
    assert model.meta["holdout"]["combinations"] and metrics["summary"]["pairs"]["n"] > 0
    assert len(metrics["subtasks"]) >= 45


@needs_fmnist
@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_model_reproduces_its_recorded_metrics(name):
    model = SubtaskAdaptiveNet.from_pretrained(name)
    rec = model.meta["metrics"]
    pair = next(s for s in rec["subtasks"] if s["size"] == 2)
    train_x, _ = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    r = evaluate(model, test_x, test_y, train_x, [tuple(pair["indices"])], progress=False)
    assert abs(r["dense"]["acc"] - rec["dense"]["acc"]) < 1e-9
    got = r["subtasks"][0]
    for key in ("acc", "dense_acc", "map", "mac_ratio", "param_ratio"):
        assert abs(got[key] - pair[key]) < 1e-9, key
    # recalibrating from scratch (seeded) gives the same statistics, up to float summation order
    cached = {k: v.clone() for k, v in model.bn_cache["dense"].items()}
    fresh = model.calibrate(None, train_x, force=True)
    for k in cached:
        assert torch.allclose(cached[k], fresh[k], rtol=1e-4, atol=1e-5), k


def test_shipped_models_by_name_and_clear_errors(tmp_path):
    assert resolve_checkpoint(None) == default_checkpoint("fmnist_b16")  # the default
    assert resolve_checkpoint("fmnist") == default_checkpoint("fmnist")
    assert resolve_checkpoint("fmnist_b16") == default_checkpoint("fmnist_b16")
    assert resolve_checkpoint(tmp_path) == tmp_path  # a directory wins over a name
    with pytest.raises(ArtifactError, match="not found.*fmnist_b16"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="no shipped model 'mnist'"):
        default_checkpoint("mnist")
    b16 = SubtaskAdaptiveNet.from_pretrained("fmnist_b16")
    assert b16.config.generator.keep_multiple == 16
    t = b16.resolve(["Sneaker", "Bag"])
    masks = b16.subtask_masks(t)
    assert all(int(masks[s.name].sum()) % 16 == 0 for s in b16.sites if s.kind == "utility")


def test_the_cli_help_names_the_default_and_every_shipped_model():
    from hypersan.cli import CHECKPOINT_HELP
    from hypersan.shipped import DEFAULT

    assert DEFAULT == "fmnist_b16" and list(SHIPPED) == ["fmnist_b16", "fmnist"]
    assert CHECKPOINT_HELP == "checkpoint directory, or a shipped model: fmnist_b16 (the default), fmnist"
