"""Data-parallel training (torch.distributed, gloo on CPU): two processes against one, crashes, torchrun; the
CUDA path's switches; the CIFAR-100 config on a synthetic folder in CIFAR's format."""
import contextlib
import datetime
import io
import json
import os
import pickle
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from hypersan.config import ConfigError, load_config
from hypersan.data.datasets import load_cifar100
from hypersan.training.distributed import shard, stream_seed
from hypersan.prune.engine import PruningEngine
from hypersan.nn.model import SubtaskAdaptiveNet
from hypersan.training.train import split_training_data, train

from .conftest import ROOT, needs_fmnist

TINY = ROOT / "configs" / "tiny.toml"
# 384 training images: a global batch of 128 is 64 per rank, 3 steps an epoch; masked and dense batches both occur
DDP = ["data.train_limit=512", "data.val_size=128", "train.epochs=3", "train.batch_size=128", "train.eval_every=0",
       "train.eval_subtasks=2", "train.threads=1", "train.dist_timeout=120", "subtasks.dense_share=0.3"]
# Two processes against the one-process reference of the same global batches, subtasks and augmentation. They differ
# only in how the two halves' gradients are averaged: gloo's (g0 + g1) / 2 against autograd's 0.5 g0 + 0.5 g1, which
# are the same floats for two ranks (halving is exact); observed difference 0. With other world sizes the
# averages may differ by an ulp a step.
TOLERANCE = 1e-6
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA path is tested on GPU "
                                "machines only")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _no_writes_off_rank_0(rank: int) -> None:
    if rank != 0:
        def refuse(*a, **k):
            raise AssertionError(f"rank {rank} wrote a checkpoint")
        SubtaskAdaptiveNet.save_pretrained = refuse


def _worker_train(rank: int, world: int, port: int, tmp: str) -> None:
    """One rank: an uninterrupted run, then a run stopped after epoch 1 and resumed, in one process group."""
    import torch.distributed as dist

    _env(rank, world, port)
    _no_writes_off_rank_0(rank)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    tmp = Path(tmp)
    cfg = load_config(TINY, DDP)
    logs = []
    full = train(cfg, tmp / "full", log=logs.append)
    save_file(full.state_dict(), str(tmp / f"full.rank{rank}.safetensors"))  # the test's own record
    train(load_config(TINY, DDP), tmp / "part", log=logs.append, stop_after_epoch=1)
    resumed = train(load_config(TINY, DDP), tmp / "part", resume=True, log=logs.append)
    save_file(resumed.state_dict(), str(tmp / f"resumed.rank{rank}.safetensors"))
    (tmp / f"logs.rank{rank}.json").write_text(json.dumps(logs))
    dist.destroy_process_group()


def _states(path: Path, name: str) -> list[dict]:
    return [load_file(str(path / f"{name}.rank{r}.safetensors")) for r in range(2)]


@needs_fmnist
def test_two_processes_match_the_one_process_reference_and_resume_exactly(tmp_path):
    mp.spawn(_worker_train, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    full, resumed = _states(tmp_path, "full"), _states(tmp_path, "resumed")
    # every rank ends with the same model: parameters and BN buffers (rank 0's, broadcast)
    for k in full[0]:
        assert torch.equal(full[0][k], full[1][k]), k
    # resuming under DDP replays the remaining epochs bit for bit
    for k in full[0]:
        assert torch.equal(full[0][k], resumed[0][k]), k
    # rank 0 alone logged (one line per epoch of each run, plus the resume line) and wrote
    logs = [json.loads((tmp_path / f"logs.rank{r}.json").read_text()) for r in range(2)]
    assert logs[1] == [] and sum(line.startswith("resuming") for line in logs[0]) == 1 and len(logs[0]) == 3 + 1 + 3
    meta = json.loads((tmp_path / "full" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["epoch"] == 3
    assert json.loads((tmp_path / "full" / "train_state.json").read_text())["world_size"] == 2

    # the reference: one process, the same global batches (each rank's shard, augmentation and per-sample
    # subtasks drawn from that rank's own stream), gradients averaged over the two halves as DDP averages them
    ref = train(load_config(TINY, DDP), tmp_path / "ref", log=lambda m: None, emulate_ranks=2)
    ddp_model = SubtaskAdaptiveNet.from_pretrained(tmp_path / "full")
    worst = 0.0
    for k, v in ref.state_dict().items():
        assert torch.equal(full[0][k], ddp_model.state_dict()[k]), k  # the checkpoint is rank 0's model
        if v.is_floating_point():
            worst = max(worst, (v - full[0][k]).abs().max().item())
        else:
            assert torch.equal(v, full[0][k]), k
    assert worst <= TOLERANCE, f"largest difference from the one-process reference: {worst}"
    print(f"largest difference from the one-process reference: {worst:.3g}")
    # BN recalibration after training runs on one process from the checkpoint: the same as the reference's
    images = split_training_data(load_config(TINY, DDP))[0]
    a = PruningEngine(ddp_model, images=images).statistics((7, 8))
    b = PruningEngine(ref, images=images).statistics((7, 8))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-3, rtol=1e-3) for k in a)


def test_shards_cover_the_data_and_reshuffle_every_epoch():
    n = 103
    e0 = [shard(n, 2, r, 0, 0) for r in range(2)]
    e1 = [shard(n, 2, r, 0, 1) for r in range(2)]
    assert len(e0[0]) == len(e0[1]) == 52 and set(e0[0]) | set(e0[1]) == set(range(n))
    assert e0 != e1 and e0 == [shard(n, 2, r, 0, 0) for r in range(2)]
    seeds = {stream_seed(0, 0, s) for s in ("shared", "rank0", "rank1")} | {stream_seed(1, 0, "rank0")}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)


@needs_fmnist
def test_emulated_world_refuses_a_batch_that_does_not_split(tmp_path):
    with pytest.raises(ConfigError, match="global batch.*multiple of 3"):
        train(load_config(TINY, DDP), tmp_path / "r", log=lambda m: None, emulate_ranks=3)
    with pytest.raises(ValueError, match="emulate_ranks"):
        train(load_config(TINY, DDP), tmp_path / "r", log=lambda m: None, emulate_ranks=1)


def _worker_crash(rank: int, world: int, port: int, tmp: str) -> None:
    """One rank of `hypersan train`; rank 1 fails in its second step."""
    import hypersan.training.train as T
    from hypersan.cli.commands import main

    _env(rank, world, port)
    _no_writes_off_rank_0(rank)
    if rank == 1:
        calls = {"n": 0}
        real_dense, real_masked = T.dense_loss, T.masked_loss

        def failing(real):
            def f(*a, **k):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise RuntimeError("injected failure in rank 1's forward")
                return real(*a, **k)
            return f

        T.dense_loss, T.masked_loss = failing(real_dense), failing(real_masked)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["train", "--config", str(TINY), "--out", str(Path(tmp) / "run"), *_sets(DDP)])
    (Path(tmp) / f"rank{rank}.json").write_text(json.dumps({"rc": rc, "stderr": err.getvalue()}))


@needs_fmnist
def test_a_crash_on_one_rank_stops_the_run_with_a_clear_error_on_rank_0(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker_crash, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank hung after its peer failed"
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r1["rc"] != 0 and "injected failure" in r1["stderr"]
    assert r0["rc"] == 1, r0
    assert re.search(r"error: rank 0: training stopped: rank 1 of 2 failed: RuntimeError: injected failure",
                     r0["stderr"]), r0["stderr"]
    assert "--resume" in r0["stderr"] and len(r0["stderr"].strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # it failed in epoch 1: no checkpoint, nothing half-written
    assert not list(tmp_path.glob(".run*"))


@needs_fmnist
def test_torchrun_module_launch_and_resume(tmp_path):
    """`torchrun -m hypersan train --resume` on 2 CPU processes, going on from a 2-rank run's first epoch (written in
    this process, as test_two_processes_match_the_one_process_reference_and_resume_exactly checks it is): one
    launch through torchrun's own entry point, its environment and `-m hypersan`."""
    out = tmp_path / "run"
    train(load_config(TINY, DDP + ["train.epochs=1", "train.device=cpu"]), out, log=lambda m: None, emulate_ranks=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hypersan",
           "train", "--config", str(TINY), "--out", str(out), "--device", "cpu", *_sets(DDP),
           "--set", "train.epochs=2", "--resume", "--allow-config-change"]
    second = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stdout and second.stdout.count('"epoch": 2') == 1
    assert second.stdout.count("checkpoint written") == 1, second.stdout  # rank 0 alone writes
    meta = json.loads((out / "meta.json").read_text())
    assert meta["epoch"] == 2 and meta["world_size"] == 2
    assert meta["config_changes"] == [{"at_epoch": 1, "changes": {"train.epochs": [1, 2]}}]
    SubtaskAdaptiveNet.from_pretrained(out)


def test_python_dash_m_hypersan_is_the_command():
    r = subprocess.run([sys.executable, "-m", "hypersan", "train", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "--device" in r.stdout and "torchrun" in r.stdout


@needs_fmnist
def test_resume_refuses_another_world_size(tmp_path):
    train(load_config(TINY, DDP + ["train.epochs=2"]), tmp_path / "r", log=lambda m: None, stop_after_epoch=1,
          emulate_ranks=2)
    with pytest.raises(ConfigError, match="trained on 2 process.*--allow-config-change"):
        train(load_config(TINY, DDP + ["train.epochs=2"]), tmp_path / "r", resume=True, log=lambda m: None)


# ---------------------------------------------------------------- the CUDA path

def test_no_hard_coded_cuda_calls_in_the_package():
    pkg = ROOT / "hypersan"
    bad = [f"{p.name}:{i}" for p in sorted(pkg.rglob("*.py"))
           for i, line in enumerate(p.read_text().splitlines(), 1) if ".cuda(" in line]
    assert not bad, f".cuda() hard-codes a device; use .to(device): {bad}"


@needs_fmnist
def test_bf16_is_refused_off_cuda(tmp_path):
    with pytest.raises(ConfigError, match="train.bf16 = true needs a CUDA device"):
        train(load_config(TINY, ["train.bf16=true", "train.device=cpu"]), tmp_path / "r", log=lambda m: None)


def test_cuda_device_is_refused_without_cuda(monkeypatch):
    from hypersan.training.distributed import rank_device
    from hypersan.training.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu" and rank_device("auto", 1).type == "cpu"
    for f in (lambda: resolve_device("cuda"), lambda: rank_device("cuda", 0)):
        with pytest.raises(ConfigError, match="CUDA is not available"):
            f()


@needs_cuda
def test_cuda_training_with_bf16(tmp_path):
    folder = _synthetic_cifar100(tmp_path / "c100")
    model = train(load_config(ROOT / "configs" / "cifar100.toml", _CIFAR_SMOKE + [f"data.data_dir={folder}",
                                                                                 "train.device=cuda",
                                                                                 "train.bf16=true"]),
                  tmp_path / "run", log=lambda m: None)
    assert model.device.type == "cuda"
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- CIFAR-100

# the real CIFAR-100 names: fine classes by superclass (meta lists them alphabetically)
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
# a couple of steps through the whole config: small batches, one epoch, a quick evaluation
_CIFAR_SMOKE = ["train.epochs=1", "train.batch_size=50", "data.val_size=100", "train.eval_subtasks=2",
                "calib.batches=1", "calib.batch_size=50", "train.threads=1", "train.progress=false"]


def _synthetic_cifar100(folder: Path, per_class: int = 3) -> Path:
    """A cifar-100-python folder (train, test, meta) written as CIFAR's own pickles are: protocol 2, bytes keys."""
    folder.mkdir(parents=True)
    coarse_names = sorted(CIFAR100_SUPERCLASSES)
    fine_names = sorted(c for cs in CIFAR100_SUPERCLASSES.values() for c in cs)
    coarse_of = {c: coarse_names.index(g) for g, cs in CIFAR100_SUPERCLASSES.items() for c in cs}
    rng = np.random.default_rng(0)
    for split, k in (("train", per_class), ("test", 1)):
        fine = [i for i in range(100) for _ in range(k)]
        data = {b"batch_label": f"{split} batch".encode(), b"filenames": [b"img.png"] * len(fine),
                b"fine_labels": fine, b"coarse_labels": [coarse_of[fine_names[i]] for i in fine],
                # each class a tint of its own, so that a few steps can learn something
                b"data": (rng.integers(0, 64, (len(fine), 3072)) + np.repeat(np.array(fine) * 2, 3072).reshape(
                    len(fine), 3072)).astype(np.uint8)}
        (folder / split).write_bytes(pickle.dumps(data, protocol=2))
    meta = {b"fine_label_names": [n.encode() for n in fine_names],
            b"coarse_label_names": [n.encode() for n in coarse_names]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_cifar100_reader_on_a_synthetic_folder(tmp_path):
    folder = _synthetic_cifar100(tmp_path / "cifar-100-python")
    x, y, info = load_cifar100("train", folder)
    assert x.shape == (300, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist()[:4] == [0, 0, 0, 1]
    assert len(info.classes) == 100 and len(info.groups) == 20
    assert info.groups["vehicles_1"] == ["bicycle", "bus", "motorcycle", "pickup_truck", "train"]
    assert sorted(c for cs in info.groups.values() for c in cs) == info.classes  # the superclasses partition
    xt, yt, _ = load_cifar100("test", folder)
    assert len(xt) == 100
    # a pickle that asks for anything but numpy arrays is refused, never run
    (folder / "train").write_bytes(pickle.dumps({b"data": __import__("collections").OrderedDict()}, protocol=2))
    with pytest.raises(Exception, match="refusing to load collections.OrderedDict"):
        load_cifar100("train", folder)


def test_cifar100_config_trains_end_to_end_on_a_synthetic_folder(tmp_path, monkeypatch):
    # two images a class: one to the stratified validation split, one to train on (two steps of 50)
    folder = _synthetic_cifar100(tmp_path / "cifar-100-python", per_class=2)
    monkeypatch.setenv("HYPERSAN_DATA", str(folder))  # where users put the real folder (or data.data_dir)
    cfg = load_config(ROOT / "configs" / "cifar100.toml", _CIFAR_SMOKE + ["train.device=cpu"])
    assert cfg.data.dataset == "cifar100" and cfg.model.widths[0] > 16  # wider than the Fashion-MNIST nets
    logs = []
    model = train(cfg, tmp_path / "run", log=logs.append)
    rec = json.loads(logs[-1])
    assert rec["epoch"] == 1 and np.isfinite(rec["loss"]) and 0 <= rec["val_dense_acc"] <= 1
    assert len(model.basic) == len(model.classes) == 100 and len(model.info.groups) == 20
    engine = PruningEngine.from_pretrained(tmp_path / "run", data_dir=str(folder))
    net = engine.subnet("vehicles_1")
    assert net.classes == ["bicycle", "bus", "motorcycle", "pickup_truck", "train"]
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 5)
