"""PruningEngine: statistics that match what they were computed for, surgery through it, and the module's guard."""
import pytest
import torch
from safetensors.torch import save_file

from hypersan.data.datasets import DatasetError
from hypersan.prune.engine import PruningEngine
from hypersan.training.evaluate import evaluate, plain_accuracy, subtask_metrics
from hypersan.prune.metrics import subset_accuracy
from hypersan.nn.model import StatisticsError, SubtaskAdaptiveNet
from hypersan.prune.stats import STATS_FILE, StatsCacheError, get_bn_stats, recalibrate, set_bn_stats
from hypersan.prune.surgery import round_widths

from .conftest import needs_fmnist
from .test_surgery import _engine, _images, _model


def _x(n=8, seed=1):
    return _images(n, seed).float() / 255


@pytest.mark.parametrize("arch", ["resnet", "vgg"])
def test_subnet_equals_masked_net_with_its_own_statistics(arch):
    eng = _engine(arch)
    model = eng.model
    net = eng.subnet(["Bag", "Sneaker", "Trouser"])
    t = (1, 7, 8)
    assert eng.key(t) in eng.cache  # calibrated on demand
    assert net.classes == ["Trouser", "Sneaker", "Bag"]  # ascending class index
    assert net.input_shape == [1, 28, 28]
    x = _x()
    with torch.no_grad(), eng.using_statistics(t):
        want = model(x, model.select([t] * len(x)))[:, list(t)]
    with torch.no_grad():
        got = net(x)
        model.stats_tag = (("1-7-8"), None, None)  # pretend: the mixture statistics are loaded under its name
        stale = model(x, model.select([t] * len(x)))[:, list(t)]
        model.stats_tag = None
    assert (got - want).abs().max().item() <= 1e-4
    assert (got - stale).abs().max().item() > 1e-3  # the mixture statistics give another function


def test_eval_forward_without_the_subtasks_statistics_is_an_error_that_names_the_fix():
    eng = _engine()
    model, x = eng.model, _x(4)
    sel = model.select([(7, 8)] * 4)
    with pytest.raises(StatisticsError, match="using_statistics"):
        model(x, sel)
    with pytest.raises(StatisticsError, match="mixture"):
        model(x)  # the dense net needs its own statistics too
    with torch.no_grad(), eng.using_statistics(["Sneaker", "Bag"]):
        model(x, sel)  # accepted
        with pytest.raises(StatisticsError, match="'5-7'"):
            model(x, model.select([(5, 7)] * 4))  # another subtask
        with pytest.raises(StatisticsError, match="mixes"):
            model(x[:2], model.select([(7, 8), (5, 7)]))
    with pytest.raises(StatisticsError):
        model(x, sel)  # the context restored the training statistics and the tag
    model.train()
    assert model(x, sel).shape == (4, 10)  # training mode uses batch statistics: no guard


def test_from_pretrained_is_in_eval_mode_and_a_forward_changes_no_statistic(tmp_path):
    eng = _engine()
    eng.model.save_pretrained(tmp_path / "ck")
    loaded = SubtaskAdaptiveNet.from_pretrained(tmp_path / "ck")
    assert not loaded.training
    before = get_bn_stats(loaded.backbone)
    engine = PruningEngine(loaded, images=_images())
    with torch.no_grad(), engine.using_statistics((7, 8)):
        loaded(_x(4), loaded.select([(7, 8)] * 4))
    after = get_bn_stats(loaded.backbone)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_predict_is_the_masked_module_with_its_statistics():
    eng = _engine()
    t = (2, 4)
    logits = eng.predict(_images(16, 2), t)
    net = eng.subnet(t)
    assert (logits[:, list(t)] - net(_images(16, 2).float() / 255)).abs().max().item() <= 1e-4


def test_the_dense_subnet_is_the_unmasked_module():
    eng = _engine()
    net = eng.subnet(None)
    assert net.classes == eng.model.classes
    assert net.arch["site_widths"] == eng.model.backbone.arch["site_widths"]
    x = _x(4)
    with torch.no_grad(), eng.using_statistics(None):
        assert (net(x) - eng.model(x)).abs().max().item() <= 1e-4


def test_pruned_calibration_equals_masked_calibration_on_kept_channels():
    eng = _engine()
    model, t = eng.model, (0, 3, 9)
    got = eng.statistics(t)
    masks = model.subtask_masks(t)
    spec = eng.calib_spec()
    want = recalibrate(model.backbone, lambda x: model.backbone(x, masks), spec.stream(_images(), model.device))
    from hypersan.prune.surgery import kept_channels, layer_plan

    keep = kept_channels(masks, model.sites)
    for layer in layer_plan(model.backbone)[0]:
        idx = keep[layer.out_site]
        for stat in ("running_mean", "running_var"):
            k = f"{layer.prefix}.1.{stat}"
            assert torch.allclose(got[k][idx], want[k][idx], rtol=1e-4, atol=1e-5), k


def test_cache_key_covers_seed_images_rounding_text_and_weights():
    eng = _engine()
    t = (5, 7)
    first = eng.statistics(t)
    assert eng.statistics(t) is first  # same settings: reused
    other_seed = eng.statistics(t, seed=1)
    assert other_seed is not first and not torch.equal(other_seed["stem.1.running_mean"], first["stem.1.running_mean"])
    other_images = eng.statistics(t, images=_images(64, seed=9))
    assert not torch.equal(other_images["stem.1.running_mean"], first["stem.1.running_mean"])
    assert len(eng.cache) == 3
    rounded = eng.statistics(t, round_to=4)
    assert len(eng.cache) == 4 and eng.key(t, rounding="up4") in eng.cache
    assert rounded is not first
    with torch.no_grad():  # fine-tuning: weights change in place, so old statistics are stale
        eng.model.backbone.stem[0].weight.mul_(1.5)
    fresh = eng.statistics(t)
    assert fresh is not first and len(eng.cache) == 5
    assert not torch.equal(fresh["stem.1.running_var"], first["stem.1.running_var"])
    with pytest.raises(ValueError, match="conditioned on 'multihot'"):
        eng.statistics(t, text="sneakers and sandals")


def test_round_to_gives_multiples_and_its_own_statistics():
    eng = _engine()
    model, t = eng.model, (4, 5)
    plain = eng.subnet(t)
    rounded = eng.subnet(t, round_to=4)
    sizes = {s.name: s.size for s in model.sites if s.kind == "utility"}
    for name, w in rounded.arch["site_widths"].items():
        assert w % 4 == 0 or w == sizes[name], (name, w)
        assert w >= plain.arch["site_widths"][name]
    assert rounded.arch["site_widths"] != plain.arch["site_widths"]
    masks, raw = model.generate(model.select([t]))
    wide = round_widths(masks, raw, model.sites, 4)
    x = _x(4)
    with torch.no_grad():
        set_bn_stats(model.backbone, eng.cache.get(eng.key(t, rounding="up4")))
        want = model.backbone(x, wide)[:, list(t)]
        assert (rounded(x) - want).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="round mode"):
        eng.subnet(t, round_mode="down")


def test_a_models_config_chooses_its_builds_rounding_and_an_argument_wins():
    from hypersan.config import ConfigError, load_config
    from hypersan.prune.engine import vector_block

    from .conftest import ROOT

    t = (4, 5)
    assert _engine().round_multiple(None) == 0  # a built-in backbone, nothing configured: the exact widths
    eng = _engine(extra=['generator.round_to="4"'])
    assert eng.round_multiple(None) == 4 and eng.round_multiple(0) == 0  # the argument (--round-to) wins
    assert eng.subnet(t).arch["site_widths"] == eng.subnet(t, round_to=4).arch["site_widths"]
    assert _engine(extra=['generator.round_to="auto"']).round_multiple(None) == vector_block()
    with pytest.raises(ConfigError, match=r"generator.round_to = 'fast'.*16, 0 \(the exact widths\), or auto"):
        load_config(ROOT / "configs" / "tiny.toml", ['generator.round_to="fast"'])


def test_block_aligned_keep_rule_gives_block_widths_and_stays_exact():
    eng = _engine(extra=["generator.keep_multiple=4"])
    t = (4, 5)
    net = eng.subnet(t)
    sizes = {s.name: s.size for s in eng.model.sites if s.kind == "utility"}
    widths = net.arch["site_widths"]
    assert all(w % 4 == 0 and 0 < w <= sizes[n] for n, w in widths.items()), widths
    assert any(w < sizes[n] for n, w in widths.items())  # it does prune
    assert eng.subnet(t, round_to=4).arch["site_widths"] == widths  # already aligned: nothing changes
    x = _x(4)
    with torch.no_grad(), eng.using_statistics(t):
        want = eng.model(x, eng.model.select([t] * 4))[:, list(t)]
    assert (net(x) - want).abs().max().item() <= 1e-4


def test_missing_training_images_are_a_clear_error(monkeypatch):
    import hypersan.prune.engine

    def unavailable(*a, **k):
        raise DatasetError("fashion_mnist not found")

    monkeypatch.setattr(hypersan.prune.engine, "split_train_val", unavailable)
    eng = PruningEngine(_model())
    with pytest.raises(DatasetError, match="recalibrated on the fashion_mnist training images.*install the dataset"):
        eng.subnet(["Bag", "Coat"])


def test_cache_round_trips_and_a_malformed_cache_is_refused(tmp_path):
    eng = _engine()
    eng.statistics((7, 8))
    eng.statistics(None)
    eng.save_pretrained(tmp_path / "ck")
    loaded = PruningEngine.from_pretrained(tmp_path / "ck", images=_images())
    assert sorted(loaded.cache.keys()) == sorted(eng.cache.keys())
    assert loaded.statistics((7, 8)) is loaded.cache.get(eng.key((7, 8)))  # reused, not recalibrated
    bad = {"junk/stem.1.running_mean": torch.full((1,), 7.0)}
    save_file(bad, str(tmp_path / "ck" / STATS_FILE))
    with pytest.raises(StatsCacheError, match="not a statistics key"):
        PruningEngine.from_pretrained(tmp_path / "ck")
    key = str(eng.key((7, 8)))
    good = {f"{key}/{k}": v for k, v in eng.cache.get(key).items()}
    good[f"{key}/stem.1.running_mean"] = torch.full((1,), 7.0)  # a broadcastable, wrong shape
    save_file(good, str(tmp_path / "ck" / STATS_FILE))
    with pytest.raises(StatsCacheError, match=r"stem.1.running_mean is \(1,\)"):
        PruningEngine.from_pretrained(tmp_path / "ck")


def test_pruned_evaluation_equals_masked_evaluation():
    eng = _engine()
    x = _images(300, seed=3)
    y = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(4))
    subtasks = [(7, 8), (0, 2, 6), (3,)]
    r = evaluate(eng, x, y, subtasks, progress=False)
    for t, row in zip(subtasks, r["subtasks"]):
        masked = eng.predict(x, t)
        net = eng.subnet(t, fold_bn=True)
        assert (masked[:, list(t)] - net(x.float() / 255)).abs().max().item() <= 1e-4
        want = subtask_metrics(masked, y, t)
        assert abs(row["acc"] - want["acc"]) <= 0.0005 and abs(row["map"] - want["map"]) <= 1e-4
    assert r["dense"]["acc"] == pytest.approx(subset_accuracy(eng.predict(x), y, list(range(10))), abs=0.0005)
    single = r["subtasks"][2]  # one class: one-vs-rest accuracy over every image, not a constant 1
    assert single["acc"] == pytest.approx(((eng.predict(x)[:, 3] > 0) == (y == 3)).float().mean().item(), abs=0.0005)


def test_plain_accuracy_of_the_subnet_equals_the_masked_modules():
    eng = _engine()
    t = (1, 7, 8)
    net = eng.subnet(t)
    x = _images(200, seed=3)
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(4))
    want = subset_accuracy(eng.predict(x, t), y, list(t))
    assert plain_accuracy(net, t, x, y, batch_size=64) == pytest.approx(want, abs=1e-9)
    with pytest.raises(ValueError, match="no sample"):
        plain_accuracy(net, t, x[y == 0][:3], y[y == 0][:3])


def test_export_says_each_slow_step_once_and_a_cached_step_not_at_all(tmp_path):
    eng = _engine()
    lines: list[str] = []
    eng.log = lines.append
    eng.export(["Sneaker", "Bag"], tmp_path / "a", ["safetensors", "onnx"])
    assert [ln.split()[0] for ln in lines] == ["calibrating", "calibrated", "writing", "writing"]
    assert "model.safetensors" in lines[2] and "model.onnx" in lines[3]
    lines.clear()
    eng.export(["Sneaker", "Bag"], tmp_path / "b", ["safetensors"])
    assert lines == ["writing model.safetensors"]  # the statistics came from the cache


def test_statistics_are_keyed_by_the_settings_that_decide_the_widths_and_by_the_images():
    eng = _engine()
    t = (1, 7, 8)
    eng.statistics(t)
    before = eng.key(t)
    assert before in eng.cache
    gen = eng.model.config.generator
    for name, value in (("threshold", gen.threshold + 0.3), ("keep_multiple", 4), ("min_keep", 12)):
        old = getattr(gen, name)
        setattr(gen, name, value)
        try:
            changed = eng.masks(t)[0] is not None and eng.key(t) != before
            assert changed, name  # new widths: a new key, so a recalibration, never the old statistics
            assert eng.key(t) not in eng.cache
        finally:
            setattr(gen, name, old)
    assert eng.key(t) == before
    # the same settings on other calibration images: another key
    other = PruningEngine(eng.model, images=_images(seed=5))
    assert other.key(t) != before


def test_a_masks_fingerprint_names_the_kept_channels_not_the_scalings_last_bits():
    from hypersan.prune.stats import masks_fingerprint

    eng = _engine()
    masks, _ = eng.masks((1, 7, 8))
    fp = masks_fingerprint(masks)
    scaling = next(s.name for s in eng.model.sites if s.kind == "scaling")
    utility = next(s.name for s in eng.model.sites if s.kind == "utility")
    assert not torch.all((masks[scaling] == 0) | (masks[scaling] == 1))  # real scalings, not 0/1
    # another CPU's kernels round the generator's scalings differently in the last bits: the same masks
    nudged = {**masks, scaling: masks[scaling] * (1 + 2 ** -22)}
    assert not torch.equal(nudged[scaling], masks[scaling]) and masks_fingerprint(nudged) == fp
    # one channel more or less, at a utility site or a scaling site: other masks
    for site in (utility, scaling):
        flipped = masks[site].clone()
        flipped[0, -1] = 1.0 - float(flipped[0, -1] != 0)
        assert masks_fingerprint({**masks, site: flipped}) != fp, site
    assert masks_fingerprint(None) == "dense"


@needs_fmnist
def test_a_single_class_threshold_is_calibrated_on_labelled_images():
    from hypersan.training.evaluate import calibrated_threshold, plain_logits
    calib_x = _images(256, seed=5)
    calib_y = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(6))
    eng = PruningEngine(_engine().model, images=calib_x, labels=calib_y)
    x = _images(300, seed=3)
    y = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(4))
    row = evaluate(eng, x, y, [(3,)], progress=False)["subtasks"][0]
    net = eng.subnet((3,), fold_bn=True)
    want = calibrated_threshold(plain_logits(net, calib_x)[:, 0], calib_y == 3)
    assert row["threshold"] == pytest.approx(want, abs=1e-3)  # the same logits, batched otherwise
    logit = net(x.float() / 255)[:, 0]
    assert row["acc"] == pytest.approx(((logit > want) == (y == 3)).float().mean().item(), abs=0.0005)
    assert row["acc_logit0"] == pytest.approx(((logit > 0) == (y == 3)).float().mean().item(), abs=0.0005)
    # on the images it was chosen on, the threshold is at least as right as logit 0
    calib_logit = net(calib_x.float() / 255)[:, 0]
    assert ((calib_logit > want) == (calib_y == 3)).sum() >= ((calib_logit > 0) == (calib_y == 3)).sum()
    assert "dense_threshold" in row and "calibrated" in evaluate(eng, x, y, [(3,)], progress=False)["metric_notes"]
    with pytest.raises(ValueError, match="one label per image"):
        PruningEngine(eng.model, images=calib_x, labels=calib_y[:5])


def test_the_dense_logits_are_cached_by_weights_and_images(tmp_path):
    from hypersan.training.evaluate import dense_logits_cached
    eng = _engine()
    x = _images(50, seed=3)
    dense = eng.subnet(None, fold_bn=True)
    first, hit = dense_logits_cached(eng, dense, x, 0, cache_dir=tmp_path)
    assert not hit and len(list((tmp_path / "dense-logits").glob("*.safetensors"))) == 1
    again, hit = dense_logits_cached(eng, dense, x, 0, cache_dir=tmp_path)
    assert hit and torch.equal(first, again)
    assert not dense_logits_cached(eng, dense, _images(50, seed=4), 0, cache_dir=tmp_path)[1]  # other images
    with torch.no_grad():
        next(eng.model.backbone.parameters()).add_(0.01)  # other weights: another key
    assert not dense_logits_cached(eng, eng.subnet(None, fold_bn=True), x, 0, cache_dir=tmp_path)[1]
    y = torch.randint(0, 10, (50,), generator=torch.Generator().manual_seed(4))
    cached = evaluate(eng, x, y, [(7, 8)], progress=False, cache_dir=tmp_path)
    plain = evaluate(eng, x, y, [(7, 8)], progress=False)
    assert cached["dense"] == plain["dense"] and cached["subtasks"] == plain["subtasks"]


def test_a_class_agnostic_net_serves_every_class_set_with_its_dense_body():
    """A net trained without masks (subtasks.dense_share = 1, the glyph study's curve): its generator never
    learned, so a class set's net is the dense body with the head cut to the set, on the dense statistics."""
    eng = _engine(extra=["subtasks.dense_share=1.0"])
    assert eng.model.class_agnostic and not _engine().model.class_agnostic
    x = _x()
    dense = eng.subnet(None)
    t = (1, 7, 8)
    net = eng.subnet(["Bag", "Sneaker", "Trouser"])
    assert eng.masks(t) == (None, None)
    assert net.arch["site_widths"] == dense.arch["site_widths"]  # nothing pruned: the masks were never trained
    assert eng.key(t) not in eng.cache and eng.key(None) in eng.cache  # one calibration serves every class set
    with torch.no_grad():
        assert torch.allclose(net(x), dense(x)[:, list(t)], atol=1e-5)
        assert torch.allclose(eng.predict(x, ["Bag", "Sneaker", "Trouser"]), dense(x), atol=1e-4)
    got = evaluate(eng, _x(10), torch.arange(10), [t, (0, 2)], progress=False)
    assert all(s["acc"] == s["dense_acc"] for s in got["subtasks"])
    assert all(s["mac_ratio"] < 1.0 for s in got["subtasks"])  # the head cut to the class set
