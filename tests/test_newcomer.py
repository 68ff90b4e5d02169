"""The newcomer's path: the README's two commands match the Makefile and CI; the demo; the data download check."""
import gzip
import json
import re
import subprocess

import pytest

from hypersan.cli.commands import main

from hypersan.cli.demo import slug

from .conftest import HAVE_FMNIST, ROOT, load_tool, needs_fmnist


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README.md lost its Quick start code block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_quick_start_is_the_makefiles_two_commands_and_ci_runs_the_test_one():
    assert _quick_start_commands() == ["make demo", "make test"]
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.M))
    assert {"demo", "test", "setup", "data"} <= targets
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == "make test"


def test_make_knows_the_quick_start_targets():
    for target in ("demo", "test"):
        r = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert ("hypersan demo" if target == "demo" else "pytest") in r.stdout


def _tool():
    return load_tool("get_fashion_mnist")


def test_download_check_rejects_corrupt_files():
    tool = _tool()
    name = "t10k-labels-idx1-ubyte.gz"
    assert not tool.verified(b"not gzip", name)
    assert not tool.verified(gzip.compress(b"\0" * tool.FILES[name][1]), name)  # right size, wrong content


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_download_checksums_match_the_installed_dataset():
    from hypersan.data.datasets import SYSTEM_FMNIST_DIR

    import os
    from pathlib import Path

    tool = _tool()
    folder = Path(os.environ.get("HYPERSAN_DATA") or SYSTEM_FMNIST_DIR)
    for name in tool.FILES:
        assert tool.verified((folder / name).read_bytes(), name), name


@needs_fmnist
def test_demo_writes_artifacts_a_plot_and_a_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "sneakers and bags", "--out", str(out), "--repeats", "2"]) == 0
    text = capsys.readouterr().out
    assert "Sneaker, Bag" in text and "MAC ratio" in text and "latency ratio" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["repeats"] == 2
    row = summary["rows"][0]
    assert row["classes"] == ["Sneaker", "Bag"] and 0 < row["mac_ratio"] < 0.5
    assert abs(row["acc"] - row["dense_acc"]) < 0.02 and row["latency_ratio"] > 0
    assert (out / "sneakers-and-bags" / "model.onnx").is_file()
    pytest.importorskip("matplotlib")
    assert (out / "kept_channels.png").stat().st_size > 1000
    # a second run does not replace the folder without --force; with it, it does
    assert main(["demo", "sneakers and bags", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_demo_timing_rounds_default_and_bad_values(tmp_path, capsys):
    from hypersan.cli.demo import REPEATS

    with pytest.raises(SystemExit):  # argparse exits after printing the help
        main(["demo", "--help"])
    assert f"default {REPEATS};" in " ".join(capsys.readouterr().out.split())
    assert main(["demo", "--out", str(tmp_path / "d"), "--repeats", "0"]) == 2
    assert "--repeats takes a number of timing rounds >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_never_writes_into_a_users_folder(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    assert main(["demo", "--out", str(user), "--force"]) == 2
    assert (user / "notes.txt").read_text() == "keep" and [p.name for p in user.iterdir()] == ["notes.txt"]


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import hypersan.cli.commands as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_resolve", interrupted)
    assert cli.main(["resolve", "shoes"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "hypersan resolve: interrupted; nothing half-written was left behind"


def test_sigterm_during_a_write_leaves_no_temporary_folder(monkeypatch, tmp_path, capsys):
    import os
    import signal

    import hypersan.cli.commands as cli
    from hypersan.io import atomic_dir

    def killed_midway(args):
        with atomic_dir(tmp_path / "art", "artifact") as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not reached")

    monkeypatch.setattr(cli, "_prune", killed_midway)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["prune", "--classes", "7", "--out", str(tmp_path / "art")]) == 130
    assert "terminated" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the artifact nor a hidden .art.tmp-* folder
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


def test_errors_are_one_line_without_traceback_unless_debug(monkeypatch, capsys):
    import hypersan.cli.commands as cli

    def bug(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_resolve", bug)
    assert cli.main(["resolve", "shoes"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "internal error: RuntimeError: boom" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["--debug", "resolve", "shoes"])


def test_a_full_disk_is_one_clear_line(monkeypatch, capsys):
    import errno

    import hypersan.cli.commands as cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors")

    monkeypatch.setattr(cli, "_resolve", full)
    assert cli.main(["resolve", "shoes"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("hypersan resolve: error: no space left on the device; free some space or write elsewhere (--out) "
                   "(/data/out/model.safetensors)")


@pytest.mark.parametrize("argv,message", [
    (["eval", "--device", "banana"], "--device 'banana' is not a device; use auto, cpu, cuda or cuda:N"),
    (["prune", "--classes", "Sneakerz", "--out", "{tmp}/a"], "did you mean 'Sneaker'?"),
    (["resolve", "12"], "class index 12 out of range 0..9"),
    (["prune", "--classes", "Sneaker,Bag", "--budget", "0.1", "--out", "{tmp}/a"], "--checkpoint fmnist_budget"),
])
def test_cli_messages_say_what_to_do(tmp_path, capsys, argv, message):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_resolve_takes_class_indices_as_classes_does(capsys):
    assert main(["resolve", "7,8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["Sneaker", "Bag"]


def test_an_empty_selection_says_why(tmp_path, capsys):
    from .test_surgery import _engine

    model = _engine(extra=["subtasks.holdout_fraction=0"]).model  # it holds out no combinations
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    assert main(["eval", "--checkpoint", str(ckpt), "--subtasks", "unseen"]) == 2
    err = capsys.readouterr().err
    assert "holds out no class combinations" in err and "--subtasks seen" in err


def test_every_option_of_every_subcommand_has_help():
    import argparse

    from hypersan.cli.commands import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [f"{name} {x.option_strings or x.dest}" for name, p in sub.choices.items() for x in p._actions
               if not x.help and x.dest != "help"]
    assert not missing, missing


@needs_fmnist
def test_demo_takes_a_budget_in_words_on_the_budget_model_and_refuses_it_elsewhere(tmp_path, capsys):
    out = tmp_path / "demo"
    request = "shoes and bags, under 10% of the compute"
    assert main(["demo", request, "--checkpoint", "fmnist_budget", "--out", str(out), "--repeats", "1"]) == 0
    row = json.loads((out / "summary.json").read_text())["rows"][0]
    assert row["budget"] == 0.1 and 0 < row["mac_ratio"] <= 0.105
    assert row["classes"] == ["Sandal", "Sneaker", "Bag", "Ankle boot"]
    art = json.loads((out / slug(request) / "config.json").read_text())
    assert art["budget"] == 0.1
    capsys.readouterr()
    assert main(["demo", request, "--out", str(tmp_path / "other")]) == 2  # fmnist_b16 takes no budget
    assert "not budget-conditioned" in capsys.readouterr().err


def test_a_missing_factory_module_is_named_as_it_is_missing(tmp_path, monkeypatch):
    from hypersan.nn.graph import GraphError
    from hypersan.nn.custom import load_factory

    (tmp_path / "mynets_x").mkdir()
    (tmp_path / "mynets_x" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GraphError, match=r"No module named 'mynets_x.nothere'"):
        load_factory("mynets_x.nothere:build")


def test_a_warning_is_one_line_for_a_person(capsys, monkeypatch):
    import warnings
    from hypersan.cli import commands as cli

    def warn(args):  # what Python's warning machinery prints, formatted as the command formats it
        import sys
        sys.stderr.write(warnings.formatwarning("pets: 2 corrupt image(s) left out", UserWarning, "x.py", 3, "src"))
        return 0

    monkeypatch.setattr(cli, "_resolve", warn)
    before = warnings.formatwarning
    assert cli.main(["resolve", "shoes"]) == 0
    assert capsys.readouterr().err == "hypersan resolve: warning: pets: 2 corrupt image(s) left out\n"
    assert warnings.formatwarning is before  # restored for whoever called main


def test_the_studies_are_commands(capsys):
    for kind, option in (("glyphs", "--peer-steps"), ("budget", "--fixed")):
        with pytest.raises(SystemExit) as e:
            main(["study", kind, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: hypersan study {kind}" in out and option in out


def test_the_demo_table_keeps_its_columns_for_a_long_request():
    from hypersan.cli.demo import format_demo

    row = {"classes": ["digit 0", "capital A"], "acc": 0.9, "dense_acc": 0.95, "mac_ratio": 0.5,
           "latency_ratio": 0.6, "onnx_bytes": 2048}
    rows = [dict(row, request="digits"), dict(row, request="capital letters and digits")]
    lines = format_demo({"rows": rows, "seconds": 1.0}, "out").splitlines()
    assert len({ln.index(" digit 0") for ln in lines[1:3]}) == 1  # the classes column starts at one place
    assert lines[0].index("classes") == lines[1].index("digit 0")
