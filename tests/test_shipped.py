"""The models shipped inside the package: the Fashion-MNIST ones, and the glyph model."""
import pytest
import torch

from hypersan.nn.checkpoint import default_checkpoint, resolve_checkpoint
from hypersan.data.datasets import DatasetError, load_fashion_mnist
from hypersan.prune.engine import PruningEngine
from hypersan.training.evaluate import evaluate
from hypersan.io import ArtifactError
from hypersan.nn.model import SubtaskAdaptiveNet
from hypersan.shipped import SHIPPED

from .conftest import ROOT, needs_fmnist

GLYPHS = ROOT / "data" / "glyphs"  # make glyphs
needs_glyphs = pytest.mark.skipif(not (GLYPHS / "dataset.json").exists(), reason="the glyph set is not built: make "
                                  "glyphs")

# Recomputed statistics differ from the recorded ones by float summation order only (the same seeded batches
# are drawn); over 1,000-3,000 test images that moves an accuracy by at most a few images.
ACC_TOL = 0.002
FMNIST = [n for n in SHIPPED if n.startswith("fmnist") and n != "fmnist_budget"]  # fixed-size models


@pytest.mark.parametrize("name", FMNIST)
def test_shipped_model_is_small_and_self_describing(name):
    d = default_checkpoint(name)
    assert (d / "model.safetensors").is_file(), "the shipped model is missing from the package"
    assert sum(f.stat().st_size for f in d.iterdir()) <= 10 * 2**20
    assert not (d / "optimizer.safetensors").exists()
    model = SubtaskAdaptiveNet.from_pretrained(name)
    metrics = model.meta["metrics"]
    assert model.meta["holdout"]["combinations"] and metrics["summary"]["pairs"]["n"] > 0
    assert len(metrics["subtasks"]) >= 45
    prov = model.meta["provenance"]
    assert prov["train_command"].startswith("hypersan train --config configs/")
    assert prov["metrics_command"].startswith("python tools/bench_core.py")
    assert "test" in prov["selection"]  # says plainly which choices saw the test set


# Each shipped model is checked on two class-set sizes, and the two models together on all four: each evaluation is
# a recalibration and a pass over every test image, the same code for every size.
SIZES = {"fmnist": (1, 5), "fmnist_b16": (2, 10)}


def test_every_fixed_size_model_has_sizes_to_reproduce():
    assert set(SIZES) == set(FMNIST) and sorted(k for v in SIZES.values() for k in v) == [1, 2, 5, 10]


@needs_fmnist
@pytest.mark.parametrize("name", FMNIST)
def test_shipped_model_reproduces_its_recorded_metrics_from_fresh_statistics(name):
    engine = PruningEngine.from_pretrained(name)
    engine.cache.clear()  # recalibrate from the training images: nothing cached is fed back
    rec = engine.model.meta["metrics"]
    by_size = {}
    for s in rec["subtasks"]:
        by_size.setdefault(s["size"], s)
    picked = [by_size[k] for k in SIZES[name]]
    test_x, test_y = load_fashion_mnist("test")
    r = evaluate(engine, test_x, test_y, [tuple(s["indices"]) for s in picked], progress=False)
    assert len(engine.cache) == len(picked) + 1  # really recalibrated: the dense net and every subtask
    assert abs(r["dense"]["acc"] - rec["dense"]["acc"]) <= ACC_TOL
    for got, want in zip(r["subtasks"], picked):
        assert got["mac_ratio"] == pytest.approx(want["mac_ratio"], abs=1e-9)
        assert got["param_ratio"] == pytest.approx(want["param_ratio"], abs=1e-9)
        assert abs(got["map"] - want["map"]) <= ACC_TOL
        # the recorded metrics of a single class are at logit 0; today's acc is at the calibrated threshold
        at0 = "acc_logit0" in want or "acc_logit0" not in got
        assert abs(got["acc" if at0 else "acc_logit0"] - want["acc"]) <= ACC_TOL, got["classes"]
        assert abs(got["dense_acc" if at0 else "dense_acc_logit0"] - want["dense_acc"]) <= ACC_TOL
        if not at0:  # calibrated on the training images, the threshold does no worse on test here
            assert got["acc"] >= got["acc_logit0"] - 0.005


@needs_fmnist
def test_shipped_statistics_match_a_recalibration():
    engine = PruningEngine.from_pretrained("fmnist_b16")
    t = (7, 8)
    cached = {k: v.clone() for k, v in engine.cache.get(engine.key(t)).items()}
    engine.cache.clear()
    fresh = engine.statistics(t)
    masks, _ = engine.masks(t)
    from hypersan.prune.surgery import kept_channels, layer_plan

    keep = kept_channels(masks, engine.model.sites)
    for layer in layer_plan(engine.model.backbone)[0]:  # pruned channels carry no statistics that matter
        idx = keep[layer.out_site]
        for stat in ("running_mean", "running_var"):
            k = f"{layer.prefix}.1.{stat}"
            # the cached ones came from the masked backbone on 2 threads, these from the pruned net: the same
            # sums in another order (means of about 1e-2 differ by about 2e-5 on 2 threads, 1.1e-4 on 1)
            assert torch.allclose(cached[k][idx], fresh[k][idx], rtol=1e-3, atol=1e-4), k


@needs_fmnist
@pytest.mark.parametrize("fold", [False, True])
def test_pruned_equals_masked_on_the_shipped_weights(fold):
    engine = PruningEngine.from_pretrained("fmnist_b16")
    x, _ = load_fashion_mnist("test")
    x = x[:64]
    for t in [(7, 8), (0, 2, 4, 6), tuple(range(10))]:
        masked = engine.predict(x, t)[:, list(t)]
        net = engine.subnet(t, fold_bn=fold)
        with torch.no_grad():
            got = net(x.float() / 255)
        assert (got - masked).abs().max().item() <= 1e-4, t


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
    assert b16.config.data.val_size == 5000  # retrained with a validation split (meta.json provenance)
    assert SubtaskAdaptiveNet.from_pretrained("fmnist").config.data.val_size == 0  # all 60,000: predates it
    t = b16.resolve(["Sneaker", "Bag"])
    masks = b16.subtask_masks(t)
    assert all(int(masks[s.name].sum()) % 16 == 0 for s in b16.sites if s.kind == "utility")


def test_the_cli_help_names_the_default_and_every_shipped_model():
    from hypersan.cli.commands import CHECKPOINT_HELP
    from hypersan.shipped import DEFAULT

    assert DEFAULT == "fmnist_b16"
    curve = [f"glyphs_dense_w{w}" for w in (2, 4, 8, 16)]
    assert list(SHIPPED) == ["fmnist_b16", "fmnist", "fmnist_budget", "glyphs", "glyphs_budget", *curve]
    assert CHECKPOINT_HELP == ("checkpoint directory, or a shipped model: fmnist_b16 (the default), fmnist, "
                               "fmnist_budget, glyphs, glyphs_budget, " + ", ".join(curve))


def test_the_glyph_model_is_small_self_describing_and_serves_its_groups_without_the_data(tmp_path, monkeypatch):
    d = default_checkpoint("glyphs")
    assert sum(f.stat().st_size for f in d.iterdir()) <= 10 * 2**20
    monkeypatch.chdir(tmp_path)  # its config's data_dir (data/glyphs) is not there: only shipped statistics serve
    from hypersan.data import datasets

    monkeypatch.setattr(datasets, "CHECKOUT", tmp_path / "a-checkout-without-data")  # nor in a data home
    monkeypatch.delenv("HYPERSAN_DATA_HOME", raising=False)
    engine = PruningEngine.from_pretrained("glyphs")
    meta = engine.model.meta
    assert len(engine.model.classes) == 135 and "validation" in meta["provenance"]["selection"]
    named = {r["request"]: r for r in meta["metrics"]["named_requests"]}
    assert {"digits", "capital letters and digits", "Greek letters"} <= set(named)
    net = engine.subnet("digits", fold_bn=True)
    assert net.classes == [f"digit {i}" for i in range(10)]
    assert engine.cost(net)["mac_ratio"] == pytest.approx(named["digits"]["mac_ratio"], rel=1e-6)
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(DatasetError, match="could not be read"):  # a class set without shipped statistics
        engine.subnet(["digit 0", "small q"])


def test_the_glyph_curve_is_class_agnostic_grows_with_width_and_serves_any_class_set_without_the_data(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no glyph data here: the dense statistics travel with each checkpoint
    from hypersan.data import datasets

    monkeypatch.setattr(datasets, "CHECKOUT", tmp_path / "a-checkout-without-data")
    monkeypatch.delenv("HYPERSAN_DATA_HOME", raising=False)
    macs, top1 = [], []
    for w in (2, 4, 8, 16):
        d = default_checkpoint(f"glyphs_dense_w{w}")
        assert sum(f.stat().st_size for f in d.iterdir()) <= 4 * 2**20 and not (d / "optimizer.safetensors").exists()
        engine = PruningEngine.from_pretrained(f"glyphs_dense_w{w}")
        model = engine.model
        assert model.class_agnostic and model.config.model.widths == [w, 2 * w, 4 * w]
        assert model.meta["metrics"]["run"].startswith(f"dense-w{w}")
        net = engine.subnet(["digit 0", "small q", "greek small alpha"], fold_bn=True)  # any class set
        assert net.arch["site_widths"] == engine.subnet(None).arch["site_widths"]  # the dense body, head cut
        assert net(torch.rand(2, 1, 32, 32)).shape == (2, 3)
        macs.append(engine.dense_cost()[0])
        top1.append(model.meta["metrics"]["dense"]["test"]["top1"])
    assert macs == sorted(macs) and top1 == sorted(top1)  # wider nets cost more and are more accurate


@pytest.mark.parametrize("name, script, init", [("fmnist_budget", "tools/budget_warm.sh", "fmnist"),
                                                 ("glyphs_budget", "tools/glyph_budget_warm.sh",
                                                  "runs/glyph-sweep/dense-w16")])
def test_the_budget_models_are_small_self_describing_and_say_where_their_figures_come_from(name, script, init):
    d = default_checkpoint(name)
    assert sum(f.stat().st_size for f in d.iterdir()) <= 10 * 2**20
    assert not (d / "optimizer.safetensors").exists()
    model = SubtaskAdaptiveNet.from_pretrained(name)
    assert model.budgeted and model.config.generator.budget_min == 0.05 and model.config.generator.budget_nested
    prov, metrics = model.meta["provenance"], model.meta["metrics"]
    assert prov["train_command"].startswith(script) and prov["init_from"] == init
    assert model.config.train.init_from == init  # named as the repository's scripts name it, not by one machine
    assert prov["metrics_command"].startswith("python tools/budget_study.py") and "test" in prov["selection"]
    assert metrics["analysis"]["test"]["budget_met"] == 1.0
    assert len(metrics["rows"]) == 150 and {r["budget"] for r in metrics["rows"]} == {0.08, 0.12, 0.2, 0.3, 0.5}
    if name == "glyphs_budget":  # its guarded requests' figures too: each served at a budget no larger than asked
        rows = metrics["guarded"]["rows"]
        assert len(rows) == 150 and metrics["guarded"]["command"].split().count("--guard") == 1
        assert all(r["served_budget"] <= r["budget"] and r["mac_ratio"] <= r["served_budget"] + 0.005 for r in rows)
        assert any(r["served_budget"] < r["budget"] for r in rows)


@needs_fmnist
def test_the_budget_model_reproduces_its_recorded_figures_from_fresh_statistics():
    from hypersan.training.evaluate import plain_accuracy

    engine = PruningEngine.from_pretrained("fmnist_budget")
    rows = engine.model.meta["metrics"]["rows"]
    test_x, test_y = load_fashion_mnist("test")
    for want in (rows[0], rows[-1]):  # a pair at the smallest budget, a 5-class set at the largest
        net = engine.subnet(want["classes"], fold_bn=True, budget=want["budget"])
        got = engine.cost(net)["mac_ratio"]
        assert got == pytest.approx(want["mac_ratio"], abs=1e-9) and got <= want["budget"] + 0.005
        acc = plain_accuracy(net, tuple(want["classes"]), test_x, test_y)
        assert abs(acc - want["acc_test"]) <= ACC_TOL, want["classes"]


@needs_glyphs
def test_the_glyph_budget_model_reproduces_its_recorded_figures_guarded_and_not():
    from hypersan.data.datasets import load_split
    from hypersan.training.evaluate import plain_accuracy

    engine = PruningEngine.from_pretrained("glyphs_budget", data_dir=str(GLYPHS))
    metrics = engine.model.meta["metrics"]
    test_x, test_y, _ = load_split(engine.model.config.data, "test", str(GLYPHS))
    for want, guard in ((metrics["rows"][0], False), (metrics["guarded"]["rows"][-1], True)):
        net = engine.subnet(want["classes"], fold_bn=True, budget=want["budget"], guard=guard)
        assert engine.cost(net)["mac_ratio"] == pytest.approx(want["mac_ratio"], abs=1e-9)
        if guard:
            assert net.guard["budget"] == want["served_budget"]
        acc = plain_accuracy(net, tuple(want["classes"]), test_x, test_y)
        assert abs(acc - want["acc_test"]) <= ACC_TOL, want["classes"]
