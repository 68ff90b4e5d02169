"""Deployment: exports of the shipped model on real images, outside hypersan; INT8; the runtimes' sessions."""
import json

import numpy as np
import onnx
import pytest
import torch

from hypersan.cli.commands import main
from hypersan.data.datasets import load_fashion_mnist, to_float
from hypersan.prune.engine import PruningEngine
from hypersan.deploy.runtimes import parse_runtimes, session, sessions

from .conftest import needs_fmnist
from .test_export import _net, _x, run_without_hypersan

CLASSES = ["Sneaker", "Bag"]


@pytest.fixture(scope="module")
def engine():
    return PruningEngine.from_pretrained("fmnist_b16")


def _test_images(classes, limit=None):
    x, y = load_fashion_mnist("test")
    keep = torch.isin(y, torch.tensor(classes))
    x, y = to_float(x[keep]), y[keep]
    return (x[:limit], y[:limit]) if limit else (x, y)


@needs_fmnist
def test_exported_subnet_matches_on_real_test_images_without_hypersan(engine, tmp_path):
    summary = engine.export(CLASSES, tmp_path / "a", formats=["safetensors", "pt2", "onnx"])
    net = engine.subnet(CLASSES, fold_bn=True)
    x, _ = load_fashion_mnist("test")
    x = to_float(x[:200])  # real images of every class
    with torch.no_grad():
        want = net(x)
    fmts = ("pt2", "onnx")
    for fmt, (contract, full, one) in zip(fmts, run_without_hypersan(
            tmp_path, [(fmt, summary["files"][fmt], x) for fmt in fmts])):
        assert contract["classes"] == CLASSES, fmt
        assert (full - want).abs().max().item() <= 1e-4, fmt
        assert (one - want[:1]).abs().max().item() <= 1e-4, fmt


@needs_fmnist
def test_int8_subnet_keeps_its_accuracy_and_shrinks(engine, tmp_path):
    import onnxruntime as ort

    summary = engine.export(CLASSES, tmp_path / "a", formats=["safetensors"], quantize="int8", int8_images=256)
    files = summary["files"]
    assert set(files) == {"safetensors", "onnx", "int8"}
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["files"]["int8"] == "model.int8.onnx" and cfg["int8"]["calibration_images"] == 256
    props = {p.key: p.value for p in onnx.load(files["int8"]).metadata_props}
    assert json.loads(props["classes"]) == CLASSES and "int8" in props["quantization"]
    # 7-bit weights: the uint8 x int8 kernels of CPUs without VNNI sum pairs of products in 16 bits without
    # saturating, so the file answers alike on every x86 CPU
    from onnx import TensorProto, numpy_helper

    weights = [numpy_helper.to_array(t) for t in onnx.load(files["int8"]).graph.initializer
               if t.data_type == TensorProto.INT8 and t.dims and len(t.dims) == 4]
    assert weights and max(int(abs(w.astype(int)).max()) for w in weights) <= 64
    assert "7-bit" in props["quantization"] and "7-bit" in cfg["int8"]["weights"]
    full = engine.export(CLASSES, tmp_path / "b", formats=["onnx"], quantize="int8", int8_images=64,
                         int8_weight_bits=8)["files"]["int8"]  # the full range, asked for
    assert max(int(abs(numpy_helper.to_array(t).astype(int)).max()) for t in onnx.load(full).graph.initializer
               if t.data_type == TensorProto.INT8 and len(t.dims) == 4) > 64
    with pytest.raises(ValueError, match="7 or 8 bits"):
        engine.export(CLASSES, tmp_path / "c", formats=["onnx"], quantize="int8", int8_weight_bits=4)
    assert not (tmp_path / "c").exists()
    idx = [engine.model.classes.index(c) for c in CLASSES]
    x, y = _test_images(idx)
    target = torch.searchsorted(torch.tensor(idx), y)
    acc = {}
    for k in ("onnx", "int8"):
        s = ort.InferenceSession(files[k], providers=["CPUExecutionProvider"])
        acc[k] = (torch.from_numpy(s.run(["logits"], {"images": x.numpy()})[0]).argmax(1) == target).float().mean()
    assert acc["int8"] >= acc["onnx"] - 0.005, acc
    assert summary["bytes"]["int8"] < 0.6 * summary["bytes"]["onnx"]


def test_int8_calibration_images_are_the_subtasks_own(tmp_path):
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 1])
    images = torch.arange(7, dtype=torch.uint8).view(7, 1, 1, 1).expand(7, 1, 2, 2).contiguous()
    e = PruningEngine.__new__(PruningEngine)
    e._images, e._labels = images, labels
    got = e.subtask_images((1,), limit=10)
    assert got.dtype == torch.float32 and sorted((got[:, 0, 0, 0] * 255).round().long().tolist()) == [1, 3, 6]
    assert len(e.subtask_images((0, 2), limit=3)) == 3
    e._labels = None  # user images carry no labels: all of them are sampled from
    assert len(e.subtask_images((1,), limit=10)) == 7


@pytest.mark.parametrize("runtime", ["eager", "pt2", "onnxruntime"])
def test_runtime_sessions_match_the_eager_net(tmp_path, runtime):
    net = _net("resnet")
    x = _x(net, 7)
    run = session(net, runtime, tmp_path, threads=1)
    with torch.no_grad():
        assert (run(x) - net(x)).abs().max().item() <= 1e-4
        assert run(x[:1]).shape == (1, 3)
        # what the benchmarks time: the runtime's own call on its own input type, the same logits
        a = run.prepare(x)
        assert isinstance(a, np.ndarray if runtime == "onnxruntime" else torch.Tensor)
        native = run.native(a)
        assert isinstance(native, type(a)) and torch.equal(torch.as_tensor(native), run(x))


def test_thread_counts_are_checked(tmp_path):
    with pytest.raises(ValueError, match="thread counts must be >= 1"):
        sessions(_net("resnet"), "eager", tmp_path, [0])
    runs = sessions(_net("resnet"), "eager", tmp_path, [2, 1, 2])  # torch runtimes: one runner for every count
    assert sorted(runs) == [1, 2] and runs[1] is runs[2]


def test_runtime_names_are_checked():
    assert parse_runtimes("onnxruntime, eager,onnxruntime") == ["onnxruntime", "eager"]
    with pytest.raises(ValueError, match="unknown runtime.*tensorrt.*choose from eager"):
        parse_runtimes("eager,tensorrt")


def test_int8_needs_calibration_images(tmp_path):
    with pytest.raises(ValueError, match="needs calibration images"):
        session(_net("resnet"), "onnxruntime-int8", tmp_path, threads=1)
    assert not any(tmp_path.iterdir())  # refused before anything was exported


@needs_fmnist
def test_cli_bench_times_each_runtime(capsys):
    rc = main(["bench", "--checkpoint", "fmnist_b16", "--subtasks", "Sneaker,Bag", "--runtime", "eager,onnxruntime",
               "--batches", "1,8", "--repeats", "1", "--warmup", "0", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert {(s["runtime"], s["batch"]) for s in r["subtasks"]} == {(a, b) for a in ("eager", "onnxruntime")
                                                                     for b in (1, 8)}
    assert all(s["latency_ratio"] > 0 and s["max_abs_diff_to_eager"] <= 1e-4 for s in r["subtasks"])
    assert r["settle"] == 1 and all(s["cold_latency_ratio"] > 0 for s in r["subtasks"])  # the default: settled
    assert r["machine"]["isa"] in ("AVX-512", "AVX2", "AVX2 kernels, AVX-512 masked", "NEON", "DEFAULT", "ZVECTOR", "SVE256", "NO AVX")
    assert r["machine"]["cores"] >= 1 and r["machine"]["cpu"]  # ratios are read beside the CPU they came from


def test_cli_bench_rejects_bad_batches(capsys):
    assert main(["bench", "--checkpoint", "fmnist_b16", "--runtime", "eager", "--batches", "1,x"]) != 0
    assert "--batches takes comma-separated batch sizes" in capsys.readouterr().err


@needs_fmnist
def test_cli_bench_builds_each_net_within_the_budget(capsys):
    rc = main(["bench", "--checkpoint", "fmnist_budget", "--subtasks", "Sneaker,Bag", "--runtime", "eager",
               "--batches", "2", "--repeats", "1", "--warmup", "0", "--budget", "0.2", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["budget"] == 0.2 and all(s["mac_ratio"] <= 0.2 and s["budget"] == 0.2 for s in r["subtasks"])
    assert main(["bench", "--checkpoint", "fmnist_b16", "--runtime", "eager", "--budget", "0.2"]) != 0
    assert "not budget-conditioned" in capsys.readouterr().err


@needs_fmnist
def test_cli_bench_takes_each_nets_fastest_thread_count(capsys, monkeypatch):
    import hypersan.deploy.runtimes as runtimes

    exported, opened = [], []
    real_export, real_open = runtimes.export_onnx, runtimes.onnx_session
    monkeypatch.setattr(runtimes, "export_onnx", lambda net, path: exported.append(path) or real_export(net, path))
    monkeypatch.setattr(runtimes, "onnx_session", lambda path, k: opened.append((path, k)) or real_open(path, k))
    rc = main(["bench", "--checkpoint", "fmnist_b16", "--subtasks", "Sneaker,Bag", "--runtime", "onnxruntime",
               "--batches", "2", "--repeats", "2", "--warmup", "0", "--best-threads", "2,1", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["best_threads"] == [1, 2]
    # one export per net (dense, pruned), one session per net and thread count, each reading its net's file
    assert len(exported) == 2 and sorted(k for _, k in opened) == [1, 1, 2, 2]
    assert {p for p, _ in opened} == set(exported)
    (row,) = r["subtasks"]
    for net in ("dense", "pruned"):  # each net's figure is its fastest count's
        by = row["ms_by_threads"][net]
        assert set(by) == {"1", "2"} and row[f"{net}_ms"] == min(by.values()) == by[str(row[f"{net}_threads"])]
    assert set(row["ratio_by_threads"]) == {"1", "2"} and row["latency_ratio"] > 0
    assert set(r["summary"][0]["ratio_by_threads_median"]) == {"1", "2"}
    from hypersan.research.bench import format_runtime_table

    assert "each net at its fastest thread count" in format_runtime_table(r)  # the text the command prints


def test_cli_bench_refuses_best_threads_it_cannot_honour(capsys):
    assert main(["bench", "--checkpoint", "fmnist_b16", "--runtime", "eager", "--best-threads", "1,2"]) != 0
    assert "onnxruntime runtimes only" in capsys.readouterr().err
    assert main(["bench", "--checkpoint", "fmnist_b16", "--best-threads", "1,2"]) != 0
    assert "add --runtime onnxruntime" in capsys.readouterr().err
    assert main(["bench", "--checkpoint", "fmnist_b16", "--runtime", "onnxruntime", "--best-threads", "1,x"]) != 0
    assert "comma-separated thread counts" in capsys.readouterr().err


def test_the_runtime_bench_counts_the_readmes_speed_goal():
    from hypersan.research.bench import format_runtime_table, runtime_summary, speed_goal_met

    # the goal: onnxruntime at batch 256, pruned / dense <= 1.15 r + 0.03 (r = 0.177: 0.23355)
    assert speed_goal_met("onnxruntime", 256, 0.233, 0.177) is True
    assert speed_goal_met("onnxruntime", 256, 0.234, 0.177) is False
    assert speed_goal_met("onnxruntime", 64, 0.2, 0.177) is None and speed_goal_met("eager", 256, 0.2, 0.177) is None
    rows = [{"runtime": "onnxruntime", "batch": 256, "latency_ratio": lat, "mac_ratio": 0.177, "dense_ms": 40.0,
             "pruned_ms": 40.0 * lat, "bound_met": True, "max_abs_diff_to_eager": 1e-6, "classes": [name],
             "speed_goal": 1.15 * 0.177 + 0.03, "speed_goal_met": speed_goal_met("onnxruntime", 256, lat, 0.177)}
            for lat, name in ((0.22, "fast"), (0.25, "slow"))]
    summary = runtime_summary(rows)
    assert summary[0]["speed_goal_met"] == "1/2" and summary[0]["bound_met"] == "2/2"
    table = format_runtime_table({"threads": 1, "repeats": 1, "warmup": 0, "summary": summary, "subtasks": rows})
    assert "goal met" in table and " 1/2 " in table and "1.15 x MAC ratio + 0.03" in table
    assert "goal missed: onnxruntime batch 256 slow: 0.250 > 0.234" in table and "fast:" not in table
