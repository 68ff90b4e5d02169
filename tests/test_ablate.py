"""The ablation runner's quick path: every method's rows, the reports, matched MACs, and resumption."""
import csv
import json

import pytest

from hypersan.research.ablate import Ablation, load_ablation_config
from hypersan.research.report import CSV_COLUMNS
from hypersan.config import ConfigError

from .conftest import ROOT, needs_fmnist

CONFIG = """
[base]
config = "configs/tiny.toml"
set = ["train.epochs=1", "train.eval_every=0", "data.train_limit=768", "data.val_size=128", "data.test_limit=300",
       "subtasks.holdout_fraction=0.3", "calib.batches=2", "calib.batch_size=64"]
[run]
seeds = [0]
methods = ["dense", "hypernet", "pertask", "tp_subset", "tp_subset_ft", "tp_subset_ft_long", "tp_l1_uniform",
           "tp_l1_uniform_ft", "random", "agnostic_hypernet", "agnostic_tp", "scratch"]
gamma = 0.5
gammas = [2.0]
[subtasks]
per_size = 1
unseen_per_size = 1
sizes = [2, 5]
[baselines]
finetune_steps = 3
finetune_steps_long = 5
subset_stages = 2
subset_stage_steps = 2
subset_per_size = 1
agnostic_mac_ratios = [0.5]
scratch_subtasks = 1
scratch_epochs = 1
latency_subtasks = 1
"""


@needs_fmnist
def test_quick_ablation_writes_every_methods_rows_and_the_reports(tmp_path):
    pytest.importorskip("torch_pruning")
    (tmp_path / "ab.toml").write_text(CONFIG)
    lines: list[str] = []
    ab = Ablation(load_ablation_config(tmp_path / "ab.toml"), tmp_path / "run", log=lines.append, root=ROOT)
    ab.prepare()
    r = ab.run(progress=False)
    # off a terminal every long step says what it is doing: epochs, subtasks, subsets, ratios, scratch nets
    for pattern in ("  hypernet-g0.5-s0: {", "  eval-hypernet-g0.5-s0 (test): [1/", "  eval-per_subset-s0: [1/",
                    "  eval-agnostic_tp-s0: MAC ratio 0.5", "  eval-scratch-s0: [1/1] training"):
        assert any(ln.startswith(pattern) for ln in lines), pattern
    with open(r["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS
    methods = {row["method"] for row in rows}
    assert methods == {"dense", "hypernet", "pertask", "tp_subset", "tp_subset_ft", "tp_subset_ft_long",
                       "tp_l1_uniform", "tp_l1_uniform_ft", "random", "agnostic_hypernet", "agnostic_tp", "scratch"}
    assert {row["split"] for row in rows} == {"val", "test"}  # every row on both splits
    assert {row["gamma"] for row in rows if row["method"] == "hypernet"} == {"0.5", "2.0"}  # the sweep
    # the per-subset baselines follow the sweep (tp_l1_uniform and random by default), the rest the main gamma
    assert {row["gamma"] for row in rows if row["method"] == "tp_l1_uniform"} == {"0.5", "2.0"}
    assert {row["gamma"] for row in rows if row["method"] == "tp_subset_ft_long"} == {"0.5"}
    for row in rows:  # per-subset baselines: never over the hypernetwork's MACs for the same subset
        if row["method"].startswith(("tp_", "random")):
            assert float(row["mac_ratio"]) <= float(row["target_mac_ratio"]) * 1.02, row
        if row["method"].startswith("tp_l1") or row["method"] == "random":  # uniform widths: within 2%
            assert abs(float(row["mac_ratio"]) / float(row["target_mac_ratio"]) - 1) <= 0.02, row
    ft = {row["method"]: int(row["finetune_steps"]) for row in rows if row["finetune_steps"] not in ("", "0")}
    assert ft == {"tp_subset_ft": 3, "tp_subset_ft_long": 5, "tp_l1_uniform_ft": 3, "scratch": ft["scratch"]}
    # cold and warm build times of the jointly trained methods, on the per-subset baselines' subsets
    hyper = [row for row in rows if row["method"] == "hypernet" and row["build_s"]]
    assert hyper and all(float(row["build_s"]) > float(row["build_warm_s"]) > 0 for row in hyper)
    peer = {row["classes"] for row in rows if row["method"] == "tp_subset"}
    assert {row["classes"] for row in hyper} == peer
    assert {row["seen"] for row in rows} == {"True", "False"}  # seen and held-out combinations
    table = (tmp_path / "run" / "table.md").read_text()
    assert "## Summary (test)" in table and "| tp_subset_ft_long |" in table and "held-out" in table
    assert "acc − own backbone" in table and "median cold build" in table
    pytest.importorskip("matplotlib")
    assert {p.split("/")[-1] for p in r["plots"]} >= {"pareto.png", "mac_vs_size.png"}
    # resumable: a second run redoes no step, and draws no plot again from the same rows
    def stamps():
        return {p.name: p.stat().st_mtime_ns for d in ("steps", "plots") for p in (tmp_path / "run" / d).iterdir()}

    before = stamps()
    again = Ablation(load_ablation_config(tmp_path / "ab.toml"), tmp_path / "run", log=lambda m: None,
                     root=ROOT).run(progress=False)
    assert stamps() == before and again["plots"] == r["plots"]
    mono = json.loads((tmp_path / "run" / "steps" / "eval-pertask-g0.5-s0.json").read_text())["monotonicity"]
    assert mono["pairs"] > 0 and 0 <= mono["pairs_violated"] <= mono["pairs"]


def test_ablation_config_is_strict(tmp_path):
    (tmp_path / "a.toml").write_text('[run]\nmethods = ["dense", "tp_subset"]\n')
    with pytest.raises(ConfigError, match="tp_subset needs hypernet"):
        load_ablation_config(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text('[run]\nmethod = ["tp_subset"]\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_ablation_config(tmp_path / "b.toml")
    (tmp_path / "d.toml").write_text('[baselines]\nsweep_methods = ["pertask"]\n')
    with pytest.raises(ConfigError, match="not a per-subset baseline"):
        load_ablation_config(tmp_path / "d.toml")
    (tmp_path / "e.toml").write_text('[run]\nmethods = ["hypernet"]\n')
    with pytest.raises(ConfigError, match="must list dense"):
        load_ablation_config(tmp_path / "e.toml")
    (tmp_path / "c.toml").write_text('[run]\nmethods = ["magic"]\n')
    with pytest.raises(ConfigError, match="unknown magic"):
        load_ablation_config(tmp_path / "c.toml")
    load_ablation_config(ROOT / "configs" / "ablation_fmnist.toml")
    load_ablation_config(ROOT / "configs" / "ablation_tiny.toml")


def test_a_seed_shard_plans_that_seeds_steps_only(tmp_path):
    (tmp_path / "ab.toml").write_text(CONFIG.replace("seeds = [0]", "seeds = [0, 1]"))
    ab = Ablation(load_ablation_config(tmp_path / "ab.toml"), tmp_path / "run", log=lambda m: None, root=ROOT)
    plan = ab.plan()
    by_seed = {s: [name for name, seed, _ in plan if seed == s] for s in (0, 1)}
    assert len(by_seed[0]) + len(by_seed[1]) == len(plan)
    # the first seed carries the scratch nets and the gamma sweep; every other step names its own seed
    assert "scratch" in by_seed[0] and "hypernet gamma 2" in by_seed[0] and "scratch" not in by_seed[1]
    assert all(name.endswith("seed 1") for name in by_seed[1]) and "hypernet seed 1" in by_seed[1]
    with pytest.raises(ConfigError, match="seed 7 is not one of run.seeds"):
        ab.run(progress=False, seed=7)
    # threads are an execution setting: they reach every training's config, and nothing else changes
    one = Ablation(ab.cfg, tmp_path / "run", log=lambda m: None, root=ROOT, threads=1)
    assert one.method_config("hypernet", 1, 0.5).train.threads == 1
    assert ab.method_config("hypernet", 1, 0.5).train.threads == ab.base.train.threads
    with pytest.raises(ConfigError, match="threads must be at least 1"):
        Ablation(ab.cfg, tmp_path / "run", root=ROOT, threads=0)


SMALL = """
[base]
config = "configs/tiny.toml"
set = ["train.epochs=1", "train.eval_every=0", "data.train_limit=512", "data.val_size=96", "data.test_limit=200",
       "calib.batches=2", "calib.batch_size=64"]
[run]
seeds = [0]
methods = ["dense", "hypernet", "tp_subset"]
gamma = 0.5
[subtasks]
per_size = 1
unseen_per_size = 0
sizes = [2]
[baselines]
finetune_steps = 2
subset_stages = 1
subset_stage_steps = 1
subset_sizes = [2]
subset_per_size = 1
latency_subtasks = 1
"""


@needs_fmnist
def test_a_run_may_gain_methods_and_seeds_and_keeps_what_it_has(tmp_path):
    pytest.importorskip("torch_pruning")
    (tmp_path / "a.toml").write_text(SMALL)
    ab = Ablation(load_ablation_config(tmp_path / "a.toml"), tmp_path / "run", log=lambda m: None, root=ROOT)
    ab.prepare()
    ab.run(progress=False, seed=0)
    step = tmp_path / "run" / "steps" / "eval-per_subset-s0.json"
    before = json.loads(step.read_text())["rows"]
    trained = (tmp_path / "run" / "steps" / "eval-hypernet-g0.5-s0.json").stat().st_mtime_ns
    # the same run with a method added: only the new method's rows are computed, the peer's stay as they were
    (tmp_path / "b.toml").write_text(SMALL.replace('"tp_subset"]', '"tp_subset", "hypernet_ft"]'))
    grown = Ablation(load_ablation_config(tmp_path / "b.toml"), tmp_path / "run", log=lambda m: None, root=ROOT)
    grown.prepare()
    grown.run(progress=False, seed=0)
    after = json.loads(step.read_text())["rows"]
    assert after[:len(before)] == before
    assert {r["method"] for r in after[len(before):]} == {"hypernet_ft"}
    assert all(r["finetune_steps"] == 2 for r in after[len(before):])
    assert (tmp_path / "run" / "steps" / "eval-hypernet-g0.5-s0.json").stat().st_mtime_ns == trained
    # a seed may be added; a method dropped, the first seed changed or any other setting changed is refused
    both = SMALL.replace('"tp_subset"]', '"tp_subset", "hypernet_ft"]')
    for text, match in ((both.replace("seeds = [0]", "seeds = [0, 1]"), None),
                        (SMALL, r"run.methods drops \['hypernet_ft'\]"),
                        (both.replace("seeds = [0]", "seeds = [1, 0]"), "first seed changes from 0 to 1"),
                        (both.replace("gamma = 0.5", "gamma = 1.0"), "settings other than")):
        (tmp_path / "c.toml").write_text(text)
        other = Ablation(load_ablation_config(tmp_path / "c.toml"), tmp_path / "run", log=lambda m: None, root=ROOT)
        if match is None:
            other.prepare()
        else:
            with pytest.raises(ConfigError, match=match):
                other.prepare()


def test_cli_ablate_needs_a_config_or_quick(tmp_path, capsys):
    from hypersan.cli.commands import main

    assert main(["ablate", "--out", str(tmp_path / "run")]) == 2
    assert "--config configs/ablation_fmnist.toml" in capsys.readouterr().err
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    assert main(["ablate", "--quick", "--out", str(user)]) == 2  # a folder that is not an ablation run
    assert (user / "notes.txt").read_text() == "keep" and sorted(p.name for p in user.iterdir()) == ["notes.txt"]


def test_a_cut_head_drops_logit_columns_only():
    import torch

    from hypersan.research.ablate import cut_head
    from hypersan.nn.backbones import build_backbone
    from hypersan.nn.subnet import build_plain

    arch = {"arch": "resnet", "in_channels": 1, "widths": [4, 8], "blocks": [1, 1], "num_classes": 5,
            "mean": [0.5], "std": [0.25]}
    torch.manual_seed(0)
    net = build_plain(build_backbone(arch).arch, ["a", "b", "c", "d", "e"]).eval()
    x = torch.rand(6, 1, 12, 12)
    cut = cut_head(net, (3, 1))
    with torch.no_grad():
        assert torch.allclose(cut(x), net(x)[:, [1, 3]], atol=1e-6)
    assert cut.classes == ["b", "d"] and cut.arch["num_classes"] == 2 and net.arch["num_classes"] == 5


def test_a_cold_build_calibrates_a_new_class_set_and_a_warm_one_does_not(monkeypatch):
    import hypersan.prune.engine as engine_module

    from .test_surgery import _engine, _images

    eng = _engine()
    eng.subnet((1, 7), fold_bn=True)  # the caller's engine has these statistics cached already
    calls = []
    real = engine_module.recalibrate_channels_last  # how the engine calibrates every class set
    monkeypatch.setattr(engine_module, "recalibrate_channels_last", lambda *a, **k: calls.append(1) or real(*a, **k))
    ab = Ablation.__new__(Ablation)
    ab._train = (_images(), None)
    times = ab.build_times(eng, [(1, 7), (0, 3, 5)], seed=0)
    # each class set on a fresh cache: one calibration per cold build, none in the warm one
    assert len(calls) == 2
    assert set(times) == {(1, 7), (0, 3, 5)}
    # both timed; which is faster is not asserted (timings on tiny shapes are noise: the calibration count above
    # is what tells a cold build from a warm one)
    assert all(cold > 0 and warm > 0 for cold, warm in times.values())
