"""Training sweeps from a plan (hypersan.research.sweep): names filled in, lanes side by side, a finished run
skipped, a waiting run started after what it waits for, a failed run stopping its lane and what waits on it."""
import sys
from pathlib import Path

import pytest

from hypersan.config import ConfigError
from hypersan.research import sweep
from hypersan.research.sweep import finished, load_plan, run_plan

from .conftest import ROOT, needs_fmnist

PLAN = """
out = "{out}"
threads = 1
config = "configs/tiny.toml"
[paths]
base = "somewhere"
[vars]
short = ["train.epochs=1", "data.train_limit=256"]
[[run]]
name = "a"
set = ["@short", "train.init_from={base}/x"]
[[run]]
name = "b"
set = ["loss.gamma=2"]
lane = 1
after = ["a"]
[[run]]
name = "c"
config = "configs/fmnist.toml"
lane = 1
env = {SWEEP_TEST = "1"}
"""


def _plan(tmp_path, text=PLAN, **kw):
    (tmp_path / "plan.toml").write_text(text.replace("{out}", str(tmp_path / "runs")))
    return load_plan(tmp_path / "plan.toml", **kw)


def test_a_plan_fills_in_paths_and_vars_and_refuses_what_it_cannot_read(tmp_path):
    plan = _plan(tmp_path)
    a, b, c = plan.runs
    assert a.overrides == ["train.epochs=1", "data.train_limit=256", "train.init_from=somewhere/x"]
    assert (a.config, b.config, c.config) == ("configs/tiny.toml", "configs/tiny.toml", "configs/fmnist.toml")
    assert (a.lane, b.lane, b.after, c.env) == (0, 1, ["a"], {"SWEEP_TEST": "1"})
    assert _plan(tmp_path, paths={"base": "elsewhere"}).runs[0].overrides[-1] == "train.init_from=elsewhere/x"
    cmd = sweep.command(plan, a)
    assert cmd[:4] == [sys.executable, "-m", "hypersan", "train"] and "--resume" not in cmd
    assert cmd[-4:] == ["--set", "train.threads=1", "--set", "train.progress=false"]
    cases = (('config = "c.toml"\n[[run]]\nname = "a"\nsett = []', "unknown key sett"),
             ('config = "c.toml"\n[[run]]\nname = "a"\n[[run]]\nname = "a"', "a second run named 'a'"),
             ('config = "c.toml"\n[[run]]\nname = "a"\nset = ["@nope"]', "@nope names no list"),
             ('config = "c.toml"\n[[run]]\nname = "a"\nset = ["x={nope}"]', "{nope} names no path"),
             ('config = "c.toml"\n[[run]]\nname = "a"\nafter = ["z"]', "waits for z"),
             ('[[run]]\nname = "a"', "no config"))
    for bad, match in cases:
        with pytest.raises(ConfigError, match=match):
            _plan(tmp_path, f'out = "{{out}}"\n{bad}')


def _fake(monkeypatch, fail=()):
    """Every run a tiny Python process: it records its environment and start order, then ends as a finished
    training does (or fails, for the names in `fail`)."""
    def command(plan, run):
        folder = plan.out / run.name
        code = (f"import os, pathlib, time; p = pathlib.Path({str(folder)!r}); p.mkdir(exist_ok=True); "
                f"open({str(plan.out / 'order')!r}, 'a').write({run.name!r} + ' '); "
                "(p / 'env').write_text(os.environ.get('SWEEP_TEST', '')); time.sleep(0.2); "
                + ("raise SystemExit(3)" if run.name in fail else "print('checkpoint written to ' + str(p))"))
        return [sys.executable, "-c", code]
    monkeypatch.setattr(sweep, "command", command)


def test_lanes_run_side_by_side_a_finished_run_is_skipped_and_after_waits(tmp_path, monkeypatch):
    _fake(monkeypatch)
    plan = _plan(tmp_path)
    status = run_plan(plan, log=lambda m: None, poll=0.05)
    assert status == {"a": "done", "b": "done", "c": "done"}
    order = (plan.out / "order").read_text().split()
    assert order.index("a") < order.index("b")  # b waited for a although its lane was free
    assert (plan.out / "c" / "env").read_text() == "1" and (plan.out / "a" / "env").read_text() == ""
    assert all(finished(plan.out / n) for n in "abc")
    again = run_plan(plan, log=lambda m: None, poll=0.05)
    assert again == {"a": "skipped", "b": "skipped", "c": "skipped"}
    assert (plan.out / "order").read_text().split() == order  # nothing ran twice
    assert list(run_plan(plan, only=["c"], dry_run=True)) == ["c"]
    with pytest.raises(ConfigError, match="no run zz"):
        run_plan(plan, only=["zz"], dry_run=True)


def test_a_failed_run_stops_its_lane_and_what_waits_on_it(tmp_path, monkeypatch):
    _fake(monkeypatch, fail=("a",))
    text = PLAN + '[[run]]\nname = "d"\nset = []\n'  # lane 0, after a
    status = run_plan(_plan(tmp_path, text), log=lambda m: None, poll=0.05)
    assert status == {"a": "failed (exit 3)", "b": "not run", "c": "done", "d": "not run"}


def test_a_run_that_starts_from_an_unfinished_run_elsewhere_is_refused_before_anything_runs(tmp_path, monkeypatch):
    _fake(monkeypatch)
    text = PLAN + f'[[run]]\nname = "e"\nneeds = ["{tmp_path}/elsewhere"]\nlink = ""\n'
    with pytest.raises(ConfigError, match="not a finished run"):
        run_plan(_plan(tmp_path, text), log=lambda m: None)
    assert not (tmp_path / "runs" / "order").exists()
    assert "not finished yet" in run_plan(_plan(tmp_path, text), dry_run=True)["e"]
    (tmp_path / "elsewhere").mkdir()  # a model an ablation trained: finished once its time file is written
    (tmp_path / "elsewhere.time.json").write_text('{"train_s": 1.0}')
    assert "not finished yet" not in run_plan(_plan(tmp_path, text), dry_run=True)["e"]


@needs_fmnist
def test_a_real_run_trains_and_a_link_points_at_a_finished_one(tmp_path):
    text = f"""
out = "{tmp_path / 'runs'}"
config = "configs/tiny.toml"
[vars]
tiny = ["data.train_limit=256", "data.val_size=64", "data.test_limit=128", "train.epochs=1", "train.eval_every=0",
        "train.eval_subtasks=1", "calib.batches=1", "calib.batch_size=64"]
[[run]]
name = "dense"
set = ["@tiny", "subtasks.dense_share=1.0", "loss.gamma=0"]
[[run]]
name = "again"
link = "{tmp_path / 'runs'}/dense"
after = ["dense"]
[[run]]
name = "broken"
link = "{tmp_path / 'nowhere'}"
lane = 1
"""
    (tmp_path / "plan.toml").write_text(text)
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        from hypersan.research.sweep import main
        with pytest.raises(ConfigError, match="starts from .*nowhere"):  # checked before anything runs
            main([str(tmp_path / "plan.toml")])
        (tmp_path / "plan.toml").write_text(text.split("[[run]]\nname = \"broken\"")[0])
        assert main([str(tmp_path / "plan.toml")]) == 0  # the link waits for the run it points at
    finally:
        os.chdir(cwd)
    runs = tmp_path / "runs"
    assert (runs / "again.log").exists() is False  # a link trains nothing
    assert finished(runs / "dense") and (runs / "dense" / "config.json").is_file()
    assert (runs / "again").is_symlink() and Path(os.readlink(runs / "again")) == (runs / "dense").resolve()
