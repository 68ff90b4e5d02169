"""The accurate path beside the fast one: a class set's net fine-tuned with the hypernetwork's objective
(hypersan.training.finetune), its BN folded after the fact exactly (surgery.fold_subnet_bn, both kinds of network),
exported as it is, and scored by evaluate."""
import json

import pytest
import torch

from hypersan.prune.engine import PruningEngine
from hypersan.prune.metrics import count_macs
from hypersan.prune.surgery import fold_subnet_bn
from hypersan.training.finetune import finetune_subnet

from .test_surgery import _images, _model


def _labelled_engine(n=96):
    x = _images(n, seed=3)
    y = torch.arange(n) % 10
    x[y == 1] //= 3  # something to learn
    return PruningEngine(_model(), images=x, labels=y)


def _close(a, b, x):
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


def test_a_fine_tuned_net_keeps_its_widths_changes_its_weights_and_folds_exactly():
    engine = _labelled_engine()
    plain = engine.subnet([1, 3], fold_bn=False, seed=0)
    net = finetune_subnet(engine, [1, 3], 4, fold_bn=False, seed=0, batch_size=16)
    shape = tuple(engine.model.info.input_shape)
    x = torch.rand(5, *shape)
    assert net.classes == plain.classes and net.arch["site_widths"] == plain.arch["site_widths"]
    assert count_macs(net, shape) == count_macs(plain, shape)
    assert _close(net, plain, x) > 1e-3  # the steps moved the weights
    assert net.finetuned["steps"] == 4 and len(net.finetuned["loss"]) == 2 and not net.training
    folded = fold_subnet_bn(net, engine.model.backbone)
    assert folded.bn_folded and folded.finetuned == net.finetuned
    assert _close(folded, net, x) < 1e-4  # folding after the fine-tune is exact
    again = finetune_subnet(engine, [1, 3], 4, seed=0, batch_size=16)  # fold_bn=True: the same net, seeded
    assert again.bn_folded and _close(again, net, x) < 1e-4


def test_fine_tuning_needs_labels_and_a_positive_step_count():
    engine = PruningEngine(_model(), images=_images(32))
    with pytest.raises(ValueError, match="labelled training images"):
        finetune_subnet(engine, [1, 3], 2)
    with pytest.raises(ValueError, match="at least 1"):
        finetune_subnet(_labelled_engine(), [1, 3], 0)
    with pytest.raises(ValueError, match="revive its zeroed channels"):
        finetune_subnet(_labelled_engine(), [1, 3], 2, physical=False)


def test_export_writes_the_fine_tuned_net_as_it_is_and_evaluate_scores_it(tmp_path):
    from hypersan.deploy.export import load_subnet
    from hypersan.training.evaluate import evaluate

    engine = _labelled_engine()
    net = finetune_subnet(engine, [1, 3], 3, seed=0, batch_size=16)
    summary = engine.export(None, tmp_path / "art", ["safetensors"], net=net)
    assert summary["classes"] == net.classes and summary["finetuned"]["steps"] == 3
    meta = json.loads((tmp_path / "art" / "config.json").read_text())
    assert "finetuned" in json.dumps(meta)
    x = torch.rand(4, *engine.model.info.input_shape)
    assert _close(load_subnet(tmp_path / "art"), net, x) < 1e-5  # exported file == in-memory model
    with pytest.raises(ValueError, match="not this model's"):
        other = finetune_subnet(engine, [1, 3], 1, seed=0, batch_size=16)
        other.classes = ["no such class"]
        engine.export(None, tmp_path / "bad", ["safetensors"], net=other)
    xs, ys = _images(40, seed=5), torch.arange(40) % 10
    r = evaluate(engine, xs, ys, [(1, 3)], progress=False, threshold_images=0, finetune_steps=2)
    row = r["subtasks"][0]
    assert row["finetuned"]["steps"] == 2 and 0 <= row["acc"] <= 1
    assert row["mac_ratio"] == pytest.approx(engine.cost(engine.subnet((1, 3)))["mac_ratio"])


def test_prune_and_eval_refuse_a_negative_step_count(capsys):
    from hypersan.cli import main

    assert main(["prune", "--classes", "Sneaker,Bag", "--out", "unused-out", "--finetune", "-3"]) != 0
    assert "--finetune takes a number of SGD steps" in capsys.readouterr().err
    assert main(["eval", "--subtasks", "Sneaker,Bag", "--finetune", "-1"]) != 0
    assert "--finetune takes a number of SGD steps" in capsys.readouterr().err
