import json

import pytest
import torch

from hypersan.research.bench import check, format_table, paired_ratio, run_bench, summarize_checks
from hypersan.cli.commands import main
from hypersan.deploy.export import load_subnet

from .conftest import needs_fmnist
from .test_surgery import _engine


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny checkpoint; the CLI recalibrates its statistics on the Fashion-MNIST training images."""
    return _engine().model.save_pretrained(tmp_path / "ckpt")


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@needs_fmnist
def test_prune_prints_one_json_summary_and_writes_the_formats(tmp_path, capsys, checkpoint):
    rc, out, err = _run(capsys, "prune", "--checkpoint", str(checkpoint), "--classes", "Bag, sneaker",
                        "--out", str(tmp_path / "a"), "--format", "safetensors,onnx")
    assert rc == 0, err
    r = json.loads(out)  # exactly one JSON object on stdout
    assert r["classes"] == ["Sneaker", "Bag"]
    assert set(r["files"]) == {"safetensors", "onnx"}
    assert all((tmp_path / "a" / n).is_file() for n in ("config.json", "model.safetensors", "model.onnx"))
    assert not (tmp_path / "a" / "model.pt").exists()
    assert 0 < r["mac_ratio"] < 1 and 0 < r["param_ratio"] < 1 and r["seconds"] > 0
    net = load_subnet(tmp_path / "a")
    assert net.classes == ["Sneaker", "Bag"]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["subtask"] == [7, 8]


@pytest.mark.parametrize("argv,msg", [(["--classes", "Sneaker,Unicorn"], "unknown class 'Unicorn'"),
                                      (["--classes", "Bag", "--format", "pickle"], "unknown export format")])
def test_prune_errors_are_clear(tmp_path, capsys, checkpoint, argv, msg):
    rc, out, err = _run(capsys, "prune", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "a"), *argv)
    assert rc == 2 and out == ""
    assert msg in err
    assert not (tmp_path / "a").exists()


@needs_fmnist
def test_prune_round_to_gives_multiples(tmp_path, capsys, checkpoint):
    rc, out, err = _run(capsys, "prune", "--checkpoint", str(checkpoint), "--classes", "Sneaker,Bag",
                        "--out", str(tmp_path / "a"), "--round-to", "4", "--format", "safetensors")
    assert rc == 0, err
    assert all(w % 4 == 0 for w in json.loads(out)["widths"].values())  # tiny widths are multiples of 4


@needs_fmnist
def test_eval_takes_the_round_mode_prune_takes(capsys, checkpoint):
    # eval scores the nets prune would build: --round-to 4 --round-mode nearest may round widths down
    args = ["eval", "--checkpoint", str(checkpoint), "--subtasks", "Sneaker,Bag", "--limit", "64", "--round-to", "4",
            "--json"]
    ratios = {}
    for mode in ("up", "nearest"):
        rc, out, err = _run(capsys, *args, "--round-mode", mode)
        assert rc == 0, err
        ratios[mode] = json.loads(out)["subtasks"][0]["mac_ratio"]
    from hypersan.prune.engine import PruningEngine

    engine = PruningEngine.from_pretrained(checkpoint)
    for mode, ratio in ratios.items():
        net = engine.subnet(["Sneaker", "Bag"], fold_bn=True, round_to=4, round_mode=mode)
        assert engine.cost(net)["mac_ratio"] == pytest.approx(ratio)
    assert ratios["nearest"] <= ratios["up"]
    with pytest.raises(SystemExit):  # argparse: an unknown mode is a usage error
        main([*args, "--round-mode", "down"])
    assert "invalid choice: 'down'" in capsys.readouterr().err


def test_bench_reports_every_interface_field():
    engine = _engine()
    t = engine.model.resolve(["Sneaker", "Bag"])
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    r = run_bench(engine, [t], batch=8, threads=threads, repeats=2, warmup=1)
    assert r["threads"] == threads and r["batch"] == 8
    assert torch.get_num_threads() == before  # restored
    (row,) = r["subtasks"]
    assert row["classes"] == ["Sneaker", "Bag"]
    assert r["bn_folded"] is True
    for k in ("mac_ratio", "param_ratio", "pruned_latency_ratio", "masked_latency_ratio", "build_ratio", "size_ratio",
              "activation_masked_latency_ratio"):
        assert isinstance(row[k], float) and row[k] > 0, k
    assert 0 < row["block16_mac_ratio"] <= 1
    assert row["latency_bound"] == pytest.approx(1.3 * row["mac_ratio"] + 0.05)
    assert row["param_ratio"] < row["size_ratio"] < 1  # on a net this tiny, headers and BN buffers weigh in
    table = format_table(r)
    assert "Sneaker,Bag" in table and f"{row['latency_bound']:5.3f}" in table
    assert r["settle"] == 1 and "timed after 1 call(s) of its own" in table  # the default, said in the header


def test_bench_checks_follow_the_issue_thresholds():
    row = {"mac_ratio": 0.5, "param_ratio": 0.5, "pruned_latency_ratio": 0.71, "masked_latency_ratio": 1.05,
           "build_ratio": 0.2, "size_ratio": 0.54}
    assert check(row) == {"pruned_latency": False, "masked_latency": True, "build": True, "size": True}
    assert check(dict(row, mac_ratio=0.9))["pruned_latency"] is None  # outside [0.15, 0.7]
    assert check(dict(row, pruned_latency_ratio=0.69))["pruned_latency"] is True
    # a check that applies to no subtask is not reported as passed
    rows = [dict(row, checks=check(dict(row, mac_ratio=m))) for m in (0.1, 0.12)]
    assert summarize_checks(rows)["pruned_latency"] is None and summarize_checks(rows)["build"] is True
    rows.append(dict(row, checks=check(row)))
    assert summarize_checks(rows)["pruned_latency"] is False


def test_allocator_tuning_says_what_it_did():
    import subprocess
    import sys

    # in a child process: the setting is process-wide
    code = ("from hypersan.research.bench import format_table\nfrom hypersan.cli.commands import tune_allocator\n"
            "done = tune_allocator()\n"
            "r = {'threads': 2, 'batch': 8, 'repeats': 2, 'warmup': 1, 'device': 'cpu', 'allocator': done,"
            " 'subtasks': []}\n"
            "print(done); print(format_table(r).splitlines()[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    done, header = out.splitlines()[:2]
    assert done.startswith(("glibc, ", "default ("))
    if done.startswith("glibc"):
        assert sys.platform.startswith("linux") and "mmap threshold 32 MiB" in done
    assert header.endswith(f"allocator: {done}")


def test_timing_rounds_are_seeded_shuffles():
    from hypersan.research.bench import round_orders

    keys = ["dense", "masked", "pruned"]
    orders = round_orders(keys, 30, seed=0)
    assert len(orders) == 30 and all(sorted(o) == sorted(keys) for o in orders)
    assert orders == round_orders(keys, 30, seed=0)  # reproducible
    assert orders != round_orders(keys, 30, seed=1)
    # every net runs first in some round, and follows each other net in some round
    assert {o[0] for o in orders} == set(keys)
    follows = {(o[i], o[i + 1]) for o in orders for i in range(len(o) - 1)}
    assert follows == {(a, b) for a in keys for b in keys if a != b}


def test_latency_ratios_pair_timings_of_the_same_round():
    # a slow spell (rounds 3-4 here) slows both nets timed in it; per-round ratios cancel it, medians do not
    dense = [10.0, 10.0, 30.0, 30.0, 10.0]
    pruned = [2.0, 2.0, 6.0, 6.0, 3.0]
    assert paired_ratio(pruned, dense) == pytest.approx(0.2)
    assert sorted(pruned)[2] / sorted(dense)[2] == pytest.approx(0.3)  # what the ratio of medians gives
    with pytest.raises(ValueError, match="equally long"):
        paired_ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-empty"):
        paired_ratio([], [])


def test_bench_times_rounded_widths_with_their_own_check():
    engine = _engine()
    model = engine.model
    t = model.resolve(["Sneaker", "Bag"])
    r = run_bench(engine, [t], batch=4, threads=1, repeats=1, warmup=0, round_to=4, round_mode="nearest")
    (row,) = r["subtasks"]
    rnd = row["rounded"]
    assert rnd["mode"] == "nearest" and rnd["round_to"] == 4
    sizes = {s.name: s.size for s in model.sites if s.kind == "utility"}
    assert all(w % 4 == 0 or w == sizes[n] for n, w in rnd["widths"].items())
    assert rnd["latency_ratio"] > 0 and "pruned_latency_check" in rnd
    assert "rMACs" in format_table(r)


@needs_fmnist
def test_prune_never_replaces_a_folder_it_did_not_write(tmp_path, capsys, checkpoint):
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("keep me")
    (user / "sub" / "data.bin").write_bytes(b"\x00\x01")
    for extra in ([], ["--force"]):
        rc, out, err = _run(capsys, "prune", "--checkpoint", str(checkpoint), "--classes", "Bag",
                            "--out", str(user), *extra)
        assert rc == 2 and "not a hypersan" in err
    assert (user / "notes.txt").read_text() == "keep me" and (user / "sub" / "data.bin").read_bytes() == b"\x00\x01"
    art = tmp_path / "art"
    assert _run(capsys, "prune", "--checkpoint", str(checkpoint), "--classes", "Bag,Coat", "--out", str(art))[0] == 0
    assert {p.name for p in art.glob("model.*")} == {"model.safetensors", "model.pt2"}  # the default formats
    rc, _, err = _run(capsys, "prune", "--checkpoint", str(checkpoint), "--classes", "Bag", "--out", str(art))
    assert rc == 2 and "--force" in err and load_subnet(art).classes == ["Coat", "Bag"]
    assert _run(capsys, "prune", "--checkpoint", str(checkpoint), "--classes", "Bag", "--out", str(art),
                "--force", "--format", "safetensors")[0] == 0
    assert load_subnet(art).classes == ["Bag"]


def test_eval_limit_and_class_lists_are_checked(tmp_path, capsys, checkpoint):
    rc, _, err = _run(capsys, "eval", "--checkpoint", str(checkpoint), "--limit", "0")
    assert rc == 2 and "--limit must be a positive" in err
    rc, _, err = _run(capsys, "prune", "--checkpoint", str(checkpoint), "--classes", "Bag,Bag",
                      "--out", str(tmp_path / "a"))
    assert rc == 2 and "class 'Bag' given twice" in err and not (tmp_path / "a").exists()


def test_bench_verdict_names_the_failing_rows_and_warns_when_busy():
    from hypersan.research.bench import busy_warning

    r = run_bench(_engine(), [(7, 8), (0, 1)], batch=4, threads=1, repeats=1, warmup=0)
    for row in r["subtasks"]:  # timings of a tiny net say little: fix the verdicts, then fail one
        row["checks"] = {k: True for k in row["checks"]}
    r["subtasks"][0]["checks"]["size"] = False
    r["passed"] = summarize_checks(r["subtasks"])
    r["load_average"] = 5.0
    table = format_table(r)
    assert "size FAILED on 1 subtask(s): Sneaker,Bag" in table and "criterion: artifact size" in table
    assert "the machine was busy (load average 5.0 with 1 bench threads)" in table
    assert busy_warning(0.9, 1) is None and busy_warning(None, 2) is None
    # a latency miss of widths off the kernels' blocks suggests rounding them; on block widths it does not
    row = r["subtasks"][1]
    row["checks"]["pruned_latency"] = False
    r["passed"] = summarize_checks(r["subtasks"])
    hint = "try --round-to auto"
    row.update(mac_ratio=0.2, block16_mac_ratio=0.3)
    assert "pruned_latency FAILED on 1 subtask(s)" in format_table(r) and hint in format_table(r)
    row.update(block16_mac_ratio=0.2)
    assert "pruned_latency FAILED" in format_table(r) and hint not in format_table(r)


def test_layer_profile_counts_every_layer_and_matches_the_mac_counter():
    from hypersan.research.bench import format_layer_profile, layer_profile

    engine = _engine()
    t = engine.model.resolve(["Sneaker", "Bag"])
    r = layer_profile(engine, [t], batch=4, threads=1, repeats=2, warmup=0)
    (s,) = r["subtasks"]
    net = engine.subnet(t, fold_bn=True)
    convs = [n for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    rows = {row["layer"]: row for row in s["layers"]}
    assert set(convs) <= set(rows)  # every conv and linear layer, named as in the net
    # the hooks' MAC count is the engine's, layer by layer summed
    assert s["mac_ratio"] == pytest.approx(engine.cost(net)["mac_ratio"], rel=1e-6)
    for row in rows.values():
        assert row["dense_ms"] > 0 and row["pruned_ms"] >= 0
        if row["mac_ratio"] is not None:
            assert 0 < row["mac_ratio"] <= 1
            assert row["excess_ms"] == pytest.approx(row["pruned_ms"] - row["mac_ratio"] * row["dense_ms"])
    assert s["latency_ratio"] > 0 and s["dense_ms"] > 0
    table = format_layer_profile(r)
    assert "Sneaker,Bag: MAC ratio" in table and convs[0] in table


def test_layer_profile_sums_a_module_called_twice():
    from hypersan.research.bench import LayerClock

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    net = Twice()
    clock = LayerClock(net)
    net(torch.rand(2, 3, 8, 8))
    clock.tick()
    net(torch.rand(2, 3, 8, 8))
    clock.tick()
    clock.close()
    assert clock.info["conv"]["macs"] == 2 * 3 * 3 * 9 * 64  # both calls, per image
    assert len(clock.seconds["conv"]) == 2  # one sum per forward
    net(torch.rand(2, 3, 8, 8))  # hooks removed: nothing recorded
    assert len(clock.seconds["conv"]) == 2


def test_cli_bench_layers_refuses_a_runtime_it_cannot_profile(capsys, checkpoint):
    for rt in ("pt2", "eager,onnxruntime"):
        rc, out, err = _run(capsys, "bench", "--checkpoint", str(checkpoint), "--layers", "--runtime", rt)
        assert rc == 2 and "--runtime onnxruntime" in err and rt in err


def test_onnx_layer_profile_times_every_node_of_both_nets(capsys, checkpoint, tmp_path, monkeypatch):
    from hypersan.research.bench import format_onnx_profile

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where onnxruntime writes its profile: nothing left there
    rc, out, err = _run(capsys, "bench", "--checkpoint", str(checkpoint), "--layers", "--runtime", "onnxruntime",
                        "--subtasks", "Sneaker,Bag", "--batch", "4", "--repeats", "3", "--warmup", "1",
                        "--threads", "1", "--json")
    assert rc == 0, err
    r = json.loads(out)
    (s,) = r["subtasks"]
    assert r["runtime"] == "onnxruntime" and s["classes"] == ["Sneaker", "Bag"]
    engine = _engine()
    net = engine.subnet(engine.model.resolve(["Sneaker", "Bag"]), fold_bn=True)
    assert s["mac_ratio"] == pytest.approx(engine.cost(net)["mac_ratio"])
    ops = [row["op"] for row in s["nodes"]]
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert ops.count("Conv") == convs and "GlobalAveragePool" in ops and "Gemm" in ops  # BN folded, ReLUs fused
    for row in s["nodes"]:
        if row["op"] in ("Conv", "Gemm"):  # pruning keeps the graph: every layer in both nets, matched by name
            assert row["dense_us"] > 0 and row["pruned_us"] > 0
        elif not (row["dense_us"] > 0 and row["pruned_us"] > 0):  # in one net only: the runtime's layout work
            assert row["op"] in ("ReorderInput", "ReorderOutput", "GlobalAveragePool"), row
            assert not row["op"].startswith("Reorder") or row["node"].endswith(("(dense)", "(pruned)"))
        assert row["excess_us"] == pytest.approx(row["pruned_us"] - s["mac_ratio"] * row["dense_us"])
    assert s["kernel_ratio"] == pytest.approx(s["pruned_us"] / s["dense_us"])
    assert s["pruned_us"] == pytest.approx(sum(row["pruned_us"] for row in s["nodes"]))
    assert list(tmp_path.glob("hypersan-ort-profile-*")) == []
    assert "Sneaker,Bag: MAC ratio" in format_onnx_profile(r)


def test_settled_turns_time_a_net_after_calls_of_its_own(monkeypatch):
    import hypersan.research.bench as bench

    # a fake clock: each call of a function lasts 1 s, plus 5 s when the previous call was another function's
    # (the cache state it inherits); the log records the order of calls
    log, now = [], [0.0]

    def fn(name):
        def call():
            now[0] += 1.0 + (5.0 if log and log[-1] != name else 0.0)
            log.append(name)
        return call

    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    fns = {"dense": fn("dense"), "pruned": fn("pruned")}
    cold, settled = bench.time_turns(fns, warmup=1, repeats=6, seed=0, settle=2)
    assert len(log) == 2 + 6 * 2 * 3  # warm-up: one call each; then 3 calls a turn
    assert all(t == 1.0 for v in settled.values() for t in v) and len(settled["dense"]) == 6
    # a turn's first call is slow exactly where the turn before it was the other net's
    turns = ["pruned"] + [k for o in bench.round_orders(list(fns), 6, 0) for k in o]  # warm-up ends with pruned
    for k in fns:
        want = [6.0 if prev != k else 1.0 for prev, cur in zip(turns, turns[1:]) if cur == k]
        assert cold[k] == want
    assert 6.0 in cold["dense"] and 6.0 in cold["pruned"]
    one = bench.time_turns(fns, warmup=0, repeats=4, seed=0, settle=0)
    assert one[0] == one[1]  # settle 0: the timed call is the first call
    assert bench.time_rounds(fns, 0, 4, 0, settle=1)["dense"] == [1.0] * 4
    with pytest.raises(ValueError, match="settle"):
        bench.time_turns(fns, 0, 1, settle=-1)


def test_an_empty_onnxruntime_profile_is_a_clear_error(tmp_path, monkeypatch):
    import hypersan.deploy.runtimes as runtimes
    from hypersan.research.bench import onnx_node_times

    class Session:  # a profiler whose events hold no node timings
        def run(self, outputs, feed):
            return None

        def end_profiling(self):
            path = tmp_path / "profile.json"
            path.write_text('[{"cat": "Session", "name": "model_run", "dur": 5}]')
            return str(path)

    monkeypatch.setattr(runtimes, "onnx_session", lambda path, threads, profile=False: Session())
    with pytest.raises(RuntimeError, match="no node timings"):
        onnx_node_times("net.onnx", 1, None, runs=1, warmup=0)
    assert not (tmp_path / "profile.json").exists()  # the profile file is removed either way
