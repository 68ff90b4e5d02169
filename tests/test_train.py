import json

import pytest
import torch

from hypersan.cli import main
from hypersan.config import load_config
from hypersan.data import FASHION_MNIST
from hypersan.io import ArtifactError
from hypersan.metrics import kept_widths
from hypersan.model import SubtaskAdaptiveNet
from hypersan.surgery import prune
from hypersan.train import train

from .conftest import ROOT, needs_fmnist

pytestmark = needs_fmnist

TINY = ["data.train_limit=512", "data.test_limit=256", "train.epochs=3", "train.batch_size=128",
        "train.eval_every=0", "train.eval_subtasks=2"]


def _cfg(*extra):
    return load_config(ROOT / "configs" / "tiny.toml", TINY + list(extra))


def test_resume_equals_uninterrupted_run(tmp_path):
    full = train(_cfg(), tmp_path / "full", log=lambda m: None)
    train(_cfg(), tmp_path / "part", log=lambda m: None, stop_after_epoch=1)
    resumed = train(_cfg(), tmp_path / "part", resume=True, log=lambda m: None)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((tmp_path / "part" / "train_state.json").read_text())["epoch"] == 3


def test_resume_refuses_a_different_config(tmp_path):
    train(_cfg(), tmp_path / "run", log=lambda m: None, stop_after_epoch=1)
    with pytest.raises(Exception, match="config differs"):
        train(_cfg("loss.beta=2.0"), tmp_path / "run", resume=True, log=lambda m: None)


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    model = train(_cfg("train.epochs=1"), tmp_path / "ck", log=lambda m: None)
    loaded = SubtaskAdaptiveNet.from_pretrained(tmp_path / "ck")
    model.eval(), loaded.eval()
    x = torch.rand(2, 1, 28, 28)
    sel = model.select([(1, 7), (0, 2, 5)])
    assert torch.equal(model(x, sel), loaded(x, sel))
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
    assert 0 <= r["dense"]["acc"] <= 1 and len(r["subtasks"]) == 3
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
    loaded = SubtaskAdaptiveNet.from_pretrained(tmp_path / "txt")
    assert loaded.config.generator.conditioning == "text" and loaded.encoder is not None
    loaded.eval()
    sel = loaded.select([(7, 8)])
    a = loaded.condition(sel)
    b = loaded.condition(sel, ["sneakers and handbags"])
    assert a.shape == (1, loaded.encoder.dim) and not torch.allclose(a, b)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model.eval()(x, sel), loaded(x, sel))
    net = loaded.subnet("shoes and handbags")
    assert net.classes == ["Sandal", "Sneaker", "Bag", "Ankle boot"]
    assert net.grounding["indices"] == [5, 7, 8, 9]
    # the masks came from the request's embedding, with statistics of their own; the canonical ones differ
    assert any(k.startswith("5-7-8-9@text-") for k in loaded.bn_cache)
    canon = loaded.subnet("shoes and handbags", text=None)
    text_masks = loaded.generate(loaded.select([(5, 7, 8, 9)]), ["shoes and handbags"])[0]
    canon_masks = loaded.subtask_masks((5, 7, 8, 9))
    assert any(not torch.equal(text_masks[k], canon_masks[k]) for k in text_masks)
    assert "5-7-8-9" in loaded.bn_cache  # text=None: the canonical masks and their statistics
    assert net.arch["site_widths"] == kept_widths(text_masks, loaded.sites)
    assert canon.arch["site_widths"] == kept_widths(canon_masks, loaded.sites)
    with torch.no_grad():
        xs = torch.rand(2, 1, 28, 28)
        assert net(xs).shape == canon(xs).shape == (2, 4)
    with pytest.raises(ValueError, match="conditioned on 'multihot'"):
        prune(SubtaskAdaptiveNet(_cfg(), FASHION_MNIST), (7, 8), text="sneakers and bags")
    assert main(["prune", "--checkpoint", str(tmp_path / "txt"), "--request", "sneakers and bags",
                 "--out", str(tmp_path / "art")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["classes"] == ["Sneaker", "Bag"] and r["request"] == "sneakers and bags"
    assert json.loads((tmp_path / "art" / "config.json").read_text())["conditioned_on"] == "sneakers and bags"
    assert main(["prune", "--checkpoint", str(tmp_path / "txt"), "--request", "sneakers and airplanes",
                 "--out", str(tmp_path / "art2")]) == 2
    assert "airplanes" in capsys.readouterr().err
