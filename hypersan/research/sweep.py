"""Training sweeps from a plan: named `hypersan train` runs in parallel lanes, each resumed where it stopped and
skipped once finished. The studies' training recipes are plans (configs/sweeps/*.toml), not shell scripts.

    hypersan sweep configs/sweeps/glyphs.toml [--out DIR] [--path NAME=DIR] [--only NAME ...] [--dry-run]

A plan:

    out = "runs/glyph-sweep"           # where the runs go (--out overrides)
    threads = 1                        # train.threads of every run (small convolutions use two lanes of one
                                       # thread better than one lane of two)
    [paths]                            # folders a run may name as {NAME} (--path NAME=DIR overrides); {out} is
    sweep = "runs/glyph-sweep"         # the plan's own output folder
    [vars]                             # override lists a run names as "@NAME" in its `set`
    dense = ["subtasks.dense_share=1.0", "loss.gamma=0"]
    [[run]]
    name = "dense-w16"                 # the run's folder under out, and its log out/NAME.log
    config = "configs/glyphs.toml"     # the training config (plan default: `config`)
    set = ["@dense", "train.init_from={sweep}/dense-w16"]
    lane = 0                           # runs of one lane go one after another; lanes run side by side
    needs = ["{sweep}/dense-w16"]      # finished runs this one starts from: checked before anything starts
    after = ["dense-w16"]              # runs of this plan to wait for (a run that starts from one of them)
    env = {MKL_CBWR = "AVX2"}          # extra environment of the run
    link = "{sweep}/dense-w16"         # instead of training: a link to a finished run elsewhere (a curve point)

A run is finished when its folder holds `done` or its log ends with the checkpoint written; a run stopped
part-way is resumed from its last epoch (`hypersan train --resume`). A run that fails stops its lane, and a run
that waits for it is not run; the other lanes go on, and the sweep exits non-zero naming them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..config import ConfigError, read_toml


@dataclass
class Run:
    name: str
    config: str
    overrides: list[str]
    lane: int = 0
    needs: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    link: str = ""
    after: list[str] = field(default_factory=list)


@dataclass
class Plan:
    out: Path
    threads: int
    runs: list[Run]


_PLAN_KEYS = {"out", "threads", "config", "paths", "vars", "run"}
_RUN_KEYS = {"name", "config", "set", "lane", "needs", "env", "link", "after"}


def _fill(text: str, paths: dict[str, str], where: str) -> str:
    try:
        return text.format(**paths)
    except KeyError as e:
        raise ConfigError(f"{where}: {{{e.args[0]}}} names no path of the plan's [paths] (or {{out}}); add it there "
                          "or pass --path NAME=DIR") from None


def load_plan(path: str | os.PathLike, out: Optional[str] = None, paths: Optional[dict[str, str]] = None) -> Plan:
    """The plan at `path`, its names filled in: {NAME} from [paths] (and `paths`, which win) and {out}, "@NAME"
    from [vars]. A ConfigError names any unknown key, duplicate name or missing reference."""
    raw = read_toml(path)
    unknown = sorted(set(raw) - _PLAN_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {', '.join(unknown)}; a plan has {', '.join(sorted(_PLAN_KEYS))}")
    folder = out or raw.get("out")
    if not folder:
        raise ConfigError(f"{path}: no output folder; set out = \"runs/...\" in the plan or pass --out")
    threads = raw.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"{path}: threads = {threads!r}; give a positive integer")
    named = {k: str(v) for k, v in raw.get("paths", {}).items()}
    named.update(paths or {})
    named["out"] = str(folder)
    variables = raw.get("vars", {})
    runs, seen = [], set()
    for i, r in enumerate(raw.get("run", [])):
        where = f"{path}: run {i + 1} ({r.get('name', '?')})"
        bad = sorted(set(r) - _RUN_KEYS)
        if bad:
            raise ConfigError(f"{where}: unknown key {', '.join(bad)}; a run has {', '.join(sorted(_RUN_KEYS))}")
        name = r.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"{where}: name must be a folder name")
        if name in seen:
            raise ConfigError(f"{where}: a second run named {name!r}")
        seen.add(name)
        overrides = []
        for s in r.get("set", []):
            if isinstance(s, str) and s.startswith("@"):
                if s[1:] not in variables:
                    raise ConfigError(f"{where}: {s} names no list of the plan's [vars]")
                overrides += [_fill(v, named, where) for v in variables[s[1:]]]
            else:
                overrides.append(_fill(str(s), named, where))
        config = r.get("config", raw.get("config"))
        link = _fill(r.get("link", ""), named, where)
        if not config and not link:
            raise ConfigError(f"{where}: no config; set config in the run or at the top of the plan")
        runs.append(Run(name, config or "", overrides, int(r.get("lane", 0)),
                        [_fill(n, named, where) for n in r.get("needs", [])],
                        {k: str(v) for k, v in r.get("env", {}).items()}, link, list(r.get("after", []))))
    if not runs:
        raise ConfigError(f"{path}: no [[run]]")
    for r in runs:
        unknown = sorted(set(r.after) - seen)
        if unknown:
            raise ConfigError(f"{path}: run {r.name} waits for {', '.join(unknown)}, which the plan does not run")
    return Plan(Path(folder), threads, runs)


def finished(folder: Path) -> bool:
    """A run folder whose training finished: it holds `done`, or its log ends with the checkpoint written, or it
    is a model an ablation trained (`hypersan ablate` writes models/NAME.time.json once NAME is saved). A link
    (a run a plan links in) is judged by the folder it points at."""
    folder = Path(folder).resolve()
    log = folder.with_name(folder.name + ".log")
    if (folder / "done").exists() or folder.with_name(folder.name + ".time.json").is_file():
        return True
    if not log.is_file():
        return False
    last = log.read_text(errors="replace").rstrip().splitlines()[-1:]
    return bool(last) and last[0].startswith("checkpoint written to")


def finished_runs(runs: Path) -> dict[str, Path]:
    """{name: folder} of the finished runs in a sweep's folder, links included, in name order."""
    return {p.name: p for p in sorted(Path(runs).iterdir()) if p.is_dir() and finished(p)}


def command(plan: Plan, run: Run) -> list[str]:
    """The `hypersan train` command line of a run (resumed when its folder exists)."""
    folder = plan.out / run.name
    cmd = [sys.executable, "-m", "hypersan", "train", "--config", run.config, "--out", str(folder)]
    if folder.exists():
        cmd.append("--resume")
    for s in [*run.overrides, f"train.threads={plan.threads}", "train.progress=false"]:
        cmd += ["--set", s]
    return cmd


def run_plan(plan: Plan, only: Optional[list[str]] = None, dry_run: bool = False,
             log: Callable[[str], None] = print, poll: float = 20.0) -> dict[str, str]:
    """Every run of the plan (or of `only`), lanes side by side; returns {name: "done" | "skipped" | "linked" |
    "failed (exit N)" | "not run" | the command, with dry_run}. A run waiting for others (`after`) checks every
    `poll` seconds."""
    runs = [r for r in plan.runs if not only or r.name in only]
    if only and len(runs) != len(set(only)):
        missing = sorted(set(only) - {r.name for r in plan.runs})
        raise ConfigError(f"--only: the plan has no run {', '.join(missing)}")
    def waited(r: Run, need: str) -> bool:  # a run of this plan that r waits for: finished by the time r starts
        return any(Path(need).resolve() == (plan.out / a).resolve() for a in r.after)

    missing = [(r.name, need) for r in runs for need in [*r.needs, *([r.link] if r.link else [])]
               if not finished(Path(need)) and not waited(r, need)]
    status = {r.name: "pending" for r in runs}
    if dry_run:
        for r in runs:
            lacking = [need for name, need in missing if name == r.name]
            status[r.name] = ((f"link {r.link}" if r.link else " ".join(command(plan, r)))
                              + (f"   (not finished yet: {', '.join(lacking)})" if lacking else ""))
        return status
    if missing:  # what a run starts from must be there before anything starts
        name, need = missing[0]
        raise ConfigError(f"run {name} starts from {need}, which is not a finished run; run its plan first")
    plan.out.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def say(msg: str) -> None:
        with lock:
            log(f"{time.strftime('%H:%M:%S')} {msg}")

    def wait_for(r: Run) -> bool:
        """Wait until the runs r waits for are finished; False when one of them failed or will not run."""
        while True:
            states = [status.get(a, "done" if finished(plan.out / a) else "not in this sweep") for a in r.after]
            if all(s in ("done", "skipped", "linked") for s in states):
                return True
            if any(s.startswith("failed") or s in ("not run", "not in this sweep") for s in states):
                return False
            time.sleep(poll)

    def lane(members: list[Run]) -> None:
        try:
            run_lane(members)
        finally:  # whatever stopped the lane: its runs not reached are not run (a run waiting on one stops too)
            for r in members:
                if status[r.name] == "pending":
                    status[r.name] = "not run"

    def run_lane(members: list[Run]) -> None:
        for r in members:
            folder = plan.out / r.name
            if r.after and not finished(folder) and not wait_for(r):
                status[r.name] = "not run"
                say(f"{r.name} not run: a run it waits for ({', '.join(r.after)}) failed")
                continue
            if r.link:
                if not finished(Path(r.link)):
                    status[r.name] = f"failed (links {r.link}, not a finished run)"
                    say(f"{r.name}: {r.link} is not a finished run; this lane stops")
                    return
                if not folder.exists():
                    folder.symlink_to(Path(r.link).resolve(), target_is_directory=True)
                status[r.name] = "linked"
                continue
            if finished(folder):
                (folder / "done").touch()
                status[r.name] = "skipped"
                say(f"skip {r.name} (finished)")
                continue
            say(f"train {r.name}" + (" (resumed)" if folder.exists() else ""))
            with open(plan.out / f"{r.name}.log", "a") as f:
                rc = subprocess.call(command(plan, r), stdout=f, stderr=subprocess.STDOUT,
                                     env={**os.environ, **r.env})
            if rc != 0:
                status[r.name] = f"failed (exit {rc})"
                say(f"{r.name} failed (exit {rc}); its log: {plan.out / r.name}.log; this lane stops")
                return
            (folder / "done").touch()
            status[r.name] = "done"
            say(f"done {r.name}")

    lanes: dict[int, list[Run]] = {}
    for r in runs:
        lanes.setdefault(r.lane, []).append(r)
    threads = [threading.Thread(target=lane, args=(members,)) for _, members in sorted(lanes.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return status


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="hypersan sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("plan", help="the sweep plan (configs/sweeps/*.toml)")
    p.add_argument("--out", default=None, help="where the runs go (default: the plan's out)")
    p.add_argument("--path", action="append", default=[], metavar="NAME=DIR",
                   help="a folder the plan names as {NAME} (default: the plan's [paths])")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run these runs of the plan only")
    p.add_argument("--dry-run", action="store_true", help="print each run's command; train nothing")
    args = p.parse_args(argv)
    paths = {}
    for item in args.path:
        name, sep, folder = item.partition("=")
        if not sep or not name:
            p.error(f"--path {item!r}: give NAME=DIR")
        paths[name] = folder
    plan = load_plan(args.plan, args.out, paths)
    status = run_plan(plan, args.only, args.dry_run, log=lambda m: print(m, file=sys.stderr, flush=True))
    for name, s in status.items():
        print(f"{name}: {s}")
    failed = [n for n, s in status.items() if s.startswith("failed") or s == "not run"]
    return 1 if failed and not args.dry_run else 0


__all__ = ["Plan", "Run", "command", "finished", "load_plan", "main", "run_plan"]
