import json

import pytest
import torch

from hypersan.cli.commands import main
from hypersan.config import load_config
from hypersan.data.datasets import FASHION_MNIST
from hypersan.config import ConfigError
from hypersan.prune.engine import PruningEngine
from hypersan.io import ArtifactError, OutputExistsError
from hypersan.prune.metrics import kept_widths
from hypersan.nn.model import SubtaskAdaptiveNet
from hypersan.training.train import split_training_data, train

from .conftest import ROOT, needs_fmnist

pytestmark = needs_fmnist

TINY = ["data.train_limit=512", "data.test_limit=256", "data.val_size=128", "train.epochs=3", "train.batch_size=128",
        "train.eval_every=0", "train.eval_subtasks=2"]


def _cfg(*extra):
    return load_config(ROOT / "configs" / "tiny.toml", TINY + list(extra))


def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    # 384 training images at 128 a batch: 3 steps an epoch, so train.min_steps = 9 makes the one epoch asked three
    cfg = _cfg("train.epochs=1", "train.min_steps=9")
    saved = []
    real_save = SubtaskAdaptiveNet.save_pretrained
    monkeypatch.setattr(SubtaskAdaptiveNet, "save_pretrained",
                        lambda self, *a, **k: (saved.append(self.meta["epoch"]), real_save(self, *a, **k))[1])
    full = train(cfg, tmp_path / "full", log=lambda m: None)
    assert saved == [3]  # a stretched run saves as often as the run asked for: once, at its end
    train(cfg, tmp_path / "part", log=lambda m: None, stop_after_epoch=1)
    with pytest.raises(OutputExistsError, match=r"\(epoch 1 of 3\)"):
        train(cfg, tmp_path / "part", log=lambda m: None)
    resumed = train(cfg, tmp_path / "part", resume=True, log=lambda m: None)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((tmp_path / "part" / "train_state.json").read_text())["epoch"] == 3
    assert [h["epoch"] for h in resumed.meta["history"]] == [1, 2, 3]


def test_a_stretched_run_shows_one_bar_over_all_its_steps(tmp_path, monkeypatch):
    # min_steps makes many short epochs: one bar over the run's 9 steps, its epoch in the description; a run of
    # the epochs asked for keeps a bar an epoch (3 steps each)
    import hypersan.training.train as train_module

    bars = []

    class Recorder(train_module.tqdm):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            bars.append(self)
            self.descs, self.updates = [], 0

        def set_description(self, desc=None, refresh=True):
            self.descs.append(desc)
            super().set_description(desc, refresh)

        def update(self, n=1):
            self.updates += n
            return super().update(n)

    monkeypatch.setattr(train_module, "tqdm", Recorder)
    train(_cfg("train.epochs=1", "train.min_steps=9", "train.progress=true"), tmp_path / "long", log=lambda m: None)
    assert [(b.total, b.updates) for b in bars] == [(9, 9)] and bars[0].descs[-1] == "epoch 3/3"
    bars.clear()
    train(_cfg("train.epochs=2", "train.progress=true"), tmp_path / "plain", log=lambda m: None)
    assert [(b.total, b.updates) for b in bars] == [(3, 3), (3, 3)] and bars[1].descs == ["epoch 2/2"]


def test_evaluating_more_or_less_often_trains_the_same_weights(tmp_path):
    # train.min_steps scales eval_every with the epochs it adds: the weights must not depend on it
    often = train(_cfg("train.epochs=2", "train.eval_every=1"), tmp_path / "often", log=lambda m: None)
    never = train(_cfg("train.epochs=2"), tmp_path / "never", log=lambda m: None)
    assert "val_dense_acc" in often.meta["history"][0] and "val_dense_acc" not in never.meta["history"][0]
    a, b = often.state_dict(), never.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_writer_of_a_run_folder_is_refused_while_the_first_trains(tmp_path):
    from hypersan.io import writer_lock

    train(_cfg("train.epochs=2"), tmp_path / "run", log=lambda m: None, stop_after_epoch=1)
    assert not (tmp_path / ".run.lock").exists()  # the lock goes with the run that held it
    with writer_lock(tmp_path / "run", "training into"):  # a run still training there (this process stands in)
        with pytest.raises(OutputExistsError, match=r"another process \(pid \d+\) is training into .*run"):
            train(_cfg("train.epochs=2"), tmp_path / "run", resume=True, log=lambda m: None)
    # once it is done, the resume goes ahead
    assert train(_cfg("train.epochs=2"), tmp_path / "run", resume=True, log=lambda m: None).meta["epoch"] == 2


def test_resume_refuses_a_different_config(tmp_path):
    train(_cfg(), tmp_path / "run", log=lambda m: None, stop_after_epoch=1)
    with pytest.raises(ConfigError, match="config differs.*loss.beta"):
        train(_cfg("loss.beta=2.0"), tmp_path / "run", resume=True, log=lambda m: None)
    for change in ("train.seed=1", "train.batch_size=64", "train.epochs=4", "train.optimizer=adamw"):
        with pytest.raises(ConfigError, match=r"\[train\] settings differ.*--allow-config-change"):
            train(_cfg(change), tmp_path / "run", resume=True, log=lambda m: None)
    # execution settings may change; a deliberate change is accepted with the flag, and recorded
    train(_cfg("train.threads=1", "train.epochs=2"), tmp_path / "run", resume=True, log=lambda m: None,
          allow_config_change=True)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["config_changes"] == [{"at_epoch": 1, "changes": {"train.epochs": [3, 2]}}]
    assert meta["epoch"] == 2


def test_train_never_replaces_what_it_did_not_write(tmp_path):
    train(_cfg("train.epochs=1"), tmp_path / "run", log=lambda m: None)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(OutputExistsError, match="already holds a training run.*--resume.*--force"):
        train(_cfg("train.epochs=1"), tmp_path / "run", log=lambda m: None)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before  # the finished run is intact
    train(_cfg("train.epochs=1", "train.seed=3"), tmp_path / "run", log=lambda m: None, force=True)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() != before
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(OutputExistsError):
            train(_cfg("train.epochs=1"), user, log=lambda m: None, force=force)
    assert (user / "notes.txt").read_text() == "keep me" and sorted(p.name for p in user.iterdir()) == ["notes.txt",
                                                                                                        "sub"]


def test_training_uses_a_validation_split_and_never_the_test_set(tmp_path, monkeypatch):
    import hypersan.training.train

    cfg = _cfg("train.epochs=1", "train.eval_every=1")
    tx, ty, vx, vy, _ = split_training_data(cfg)
    assert len(vx) == 128 and len(tx) == 512 - 128
    share = torch.bincount(torch.cat([ty, vy]), minlength=10).float() * 128 / 512
    assert (torch.bincount(vy, minlength=10).float() - share).abs().max() <= 1  # stratified: classes in proportion
    import hypersan.data.datasets

    real = hypersan.data.datasets._read_idx
    read = []

    def no_test(path, *args):  # the lowest reader: every path to the test arrays goes through it
        assert "t10k" not in path.name, f"training read the test split ({path.name})"
        read.append(path.name)
        return real(path, *args)

    monkeypatch.setattr(hypersan.data.datasets, "_read_idx", no_test)
    train(cfg, tmp_path / "run", log=lambda m: None)
    assert "train-images-idx3-ubyte.gz" in read  # the patch sat on the path the data took
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    rec = meta["history"][-1]
    assert {"val_dense_acc", "val_sub_acc", "val_sub_dense_acc"} <= set(rec) and "dense_acc" not in rec
    assert "validation" in meta["selection"]
    n = meta["numerics"]  # what a run's bits depend on besides config and seed
    assert n["torch"] == torch.__version__ and n["device"] == "cpu" and n["cpu_capability"]


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    model = train(_cfg("train.epochs=1"), tmp_path / "ck", log=lambda m: None)
    loaded = SubtaskAdaptiveNet.from_pretrained(tmp_path / "ck")
    assert not loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    imgs = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(PruningEngine(model, images=imgs).predict(x, (1, 7)),
                       PruningEngine(loaded, images=imgs).predict(x, (1, 7)))
    assert loaded.meta["holdout"] == model.holdout.to_dict()
    assert not list(tmp_path.glob(".ck*")), "temporary folders left behind"
    f = tmp_path / "ck" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        SubtaskAdaptiveNet.from_pretrained(tmp_path / "ck")


def test_cli_train_and_eval_smoke(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert main(["train", "--config", str(ROOT / "configs" / "tiny.toml"), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--subtasks", "Sneaker,Bag", "size=3,n=2", "--json",
                 "--limit", "500"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["dense"]["acc"] > 0.15 and len(r["subtasks"]) == 3  # 10 classes: chance is 0.1
    s = r["subtasks"][0]
    assert s["classes"] == ["Sneaker", "Bag"]
    for key in ("seen", "acc", "dense_acc", "map", "dense_map", "mac_ratio", "param_ratio"):
        assert key in s
    assert 0 < s["mac_ratio"] <= 1 and 0 < s["param_ratio"] <= 1


def test_cli_reports_bad_config_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nwidth = [8]\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_text_conditioned_training_and_requests(tmp_path, capsys):
    model = train(_cfg("train.epochs=1", "generator.conditioning=text", "generator.phrasings=2"), tmp_path / "txt",
                  log=lambda m: None)
    engine = PruningEngine.from_pretrained(tmp_path / "txt")
    loaded = engine.model
    assert loaded.config.generator.conditioning == "text" and loaded.encoder is not None
    sel = loaded.select([(7, 8)])
    a = loaded.condition(sel)
    b = loaded.condition(sel, ["sneakers and handbags"])
    assert a.shape == (1, loaded.encoder.dim) and not torch.allclose(a, b)
    assert all(torch.equal(model.generate(sel)[0][k], loaded.generate(sel)[0][k]) for k in loaded.generate(sel)[0])
    net = engine.subnet("shoes and handbags")
    assert net.classes == ["Sandal", "Sneaker", "Bag", "Ankle boot"]
    assert net.grounding["indices"] == [5, 7, 8, 9]
    # the masks came from the request's embedding, with statistics of their own; the canonical ones differ
    t = (5, 7, 8, 9)
    assert engine.key(t, text="shoes and handbags") in engine.cache and engine.key(t) not in engine.cache
    text_masks = loaded.generate(loaded.select([t]), ["shoes and handbags"])[0]
    canon_masks = loaded.subtask_masks(t)
    canon = engine.subnet(list(t))  # a class list: the canonical description
    assert engine.key(t) in engine.cache
    assert any(not torch.equal(text_masks[k], canon_masks[k]) for k in text_masks)
    assert net.arch["site_widths"] == kept_widths(text_masks, loaded.sites)
    assert canon.arch["site_widths"] == kept_widths(canon_masks, loaded.sites)
    with torch.no_grad():
        xs = torch.rand(2, 1, 28, 28)
        assert net(xs).shape == canon(xs).shape == (2, 4)
    with pytest.raises(ValueError, match="conditioned on 'multihot'"):
        PruningEngine(SubtaskAdaptiveNet(_cfg(), FASHION_MNIST)).subnet((7, 8), text="sneakers and bags")
    assert main(["prune", "--checkpoint", str(tmp_path / "txt"), "--request", "sneakers and bags",
                 "--out", str(tmp_path / "art"), "--format", "safetensors"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["classes"] == ["Sneaker", "Bag"] and r["request"] == "sneakers and bags"
    assert json.loads((tmp_path / "art" / "config.json").read_text())["conditioned_on"] == "sneakers and bags"
    assert main(["prune", "--checkpoint", str(tmp_path / "txt"), "--request", "sneakers and airplanes",
                 "--out", str(tmp_path / "art2")]) == 2
    assert "airplanes" in capsys.readouterr().err


def test_resume_of_a_run_saved_before_the_scaling_keys(tmp_path):
    # runs saved before train.bf16 / train.dist_timeout existed resume as runs without bf16 (e.g. an ablation's);
    # before data.image_size, model.new_head, data.mean / std and data.crop_scale, as runs that read images as they
    # are, loaded no weights, normalized with the training images' statistics and cropped after padding
    train(_cfg("train.epochs=2"), tmp_path / "run", log=lambda m: None, stop_after_epoch=1)
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    del saved["train"]["bf16"], saved["train"]["dist_timeout"], saved["data"]["image_size"], saved["model"]["new_head"]
    del saved["data"]["mean"], saved["data"]["std"], saved["data"]["crop_scale"]
    path.write_text(json.dumps(saved))
    state = json.loads((tmp_path / "run" / "train_state.json").read_text())
    assert state["world_size"] == 1
    del state["world_size"]
    (tmp_path / "run" / "train_state.json").write_text(json.dumps(state))
    train(_cfg("train.epochs=2"), tmp_path / "run", resume=True, log=lambda m: None)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["epoch"] == 2 and meta["config_changes"] == []
    with pytest.raises(ConfigError, match="train.bf16"):
        train(_cfg("train.epochs=2", "train.bf16=true"), tmp_path / "run", resume=True, log=lambda m: None)


def test_init_from_starts_the_backbone_from_another_run(tmp_path):
    from hypersan.training.train import _init_backbone
    source = train(_cfg("train.epochs=1"), tmp_path / "src", log=lambda m: None)
    cfg = _cfg("generator.budget=true", "train.epochs=1")  # another generator, the same backbone
    info = split_training_data(cfg)[4]
    fresh = SubtaskAdaptiveNet(cfg, info)
    _init_backbone(fresh, str(tmp_path / "src"))
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(fresh.backbone.state_dict()[k], v), k
    # through train(): logged, recorded in the config, and the run goes on from those weights
    lines = []
    run = train(_cfg("train.epochs=1", f"train.init_from={tmp_path / 'src'}"), tmp_path / "warm", log=lines.append)
    assert any("backbone initialized from" in m for m in lines)
    assert json.loads((tmp_path / "warm" / "config.json").read_text())["train"]["init_from"] == str(tmp_path / "src")
    scratch = train(_cfg("train.epochs=1", "train.seed=1"), tmp_path / "cold", log=lambda m: None)
    name = next(k for k in source.backbone.state_dict() if k.endswith("weight"))
    warm_moved = (run.backbone.state_dict()[name] - source.backbone.state_dict()[name]).abs().mean()
    cold_moved = (scratch.backbone.state_dict()[name] - source.backbone.state_dict()[name]).abs().mean()
    assert warm_moved < 0.5 * cold_moved  # one more epoch moves a warm start less than a fresh start lies away
    with pytest.raises(ConfigError, match="another network"):
        _init_backbone(SubtaskAdaptiveNet(_cfg("model.widths=[8,8]"), info), str(tmp_path / "src"))
    with pytest.raises(ConfigError, match="cannot load a checkpoint"):
        _init_backbone(fresh, str(tmp_path / "nowhere"))
