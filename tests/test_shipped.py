"""The Fashion-MNIST model shipped inside the package."""
import torch

from hypersan.data import load_fashion_mnist
from hypersan.evaluate import evaluate
from hypersan.model import SubtaskAdaptiveNet, default_checkpoint

from .conftest import needs_fmnist


def test_shipped_model_is_small_and_self_describing():
    d = default_checkpoint()
    assert (d / "model.safetensors").is_file(), "the shipped model is missing from the package"
    assert sum(f.stat().st_size for f in d.iterdir()) <= 10 * 2**20
    assert not (d / "optimizer.safetensors").exists()
    model = SubtaskAdaptiveNet.from_pretrained()
    metrics = model.meta["metrics"]
    assert model.meta["holdout"]["combinations"] and metrics["summary"]["pairs"]["n"] > 0
    assert len(metrics["subtasks"]) >= 45


@needs_fmnist
def test_shipped_model_reproduces_its_recorded_metrics():
    model = SubtaskAdaptiveNet.from_pretrained()
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
