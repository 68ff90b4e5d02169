"""The ablation runner: hypernetwork vs per-task masks vs per-subset pruning, on seen and held-out class sets.

`run_ablation(config, out)` trains every jointly trained method (same backbone, schedule, held-out
combinations and validation split), evaluates every method on the same subtasks of the test split, and
writes `results.csv`, `table.md` and PNG plots into `out`. Work is split into steps; each step writes its
rows atomically to `out/steps/<step>.json` and is never redone once there, and training runs resume from
their last epoch, so the runner can be stopped and started again at any point.

Methods (the `method` column):
- `hypernet`, `hypernet_text`, `pertask`: jointly trained generators (multi-hot, text-conditioned, per-task
  max / MaxAbs), each subtask through its own pruned net;
- `dense`: the same backbone trained without masks: the ceiling, and the net the per-subset baselines prune;
- `tp`, `tp_ft`, `random`: the dense net pruned per subset with Torch-Pruning (L1 magnitude over coupled
  channel groups; then fine-tuned on the subset's images) or at random, to the hypernetwork's `mac_ratio`
  for the same subset, BN recalibrated;
- `agnostic_hypernet`, `agnostic_tp`: one mask for every subtask, only the head cut to the subtask (the
  hypernetwork's all-classes mask; Torch-Pruning on the dense net for all classes, swept over MACs);
- `scratch`: a small net per subtask trained from scratch at the hypernetwork's MACs (a sample of pairs).
"""
from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .config import Config, ConfigError, build_section, load_config, read_toml
from .data import load_dataset
from .descriptions import describe
from .engine import PruningEngine
from .evaluate import evaluate, plain_logits, subtask_metrics
from .io import atomic_write_json, check_output_dir, read_json
from .metrics import containment_violations
from .subtasks import Subtask, sample_combinations
from .surgery import kept_channels, prune_backbone
from .train import split_training_data, train

ABLATION_KIND = "ablation"
JOINT = ("dense", "hypernet", "hypernet_text", "pertask")
ALL_METHODS = (*JOINT, "tp", "tp_ft", "random", "agnostic_hypernet", "agnostic_tp", "scratch")
COLUMNS = ["method", "seed", "gamma", "classes", "size", "seen", "acc", "dense_acc", "map", "dense_map",
           "mac_ratio", "param_ratio", "fp_rate", "dense_fp_rate", "target_mac_ratio", "phrasing", "build_s",
           "train_s", "latency_ratio"]


@dataclass
class BaseSection:
    config: str = "configs/fmnist_b16.toml"  # the experiment config every jointly trained method starts from
    set: list[str] = field(default_factory=list)  # overrides applied to every jointly trained method


@dataclass
class RunSection:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    gamma: float = 0.5  # the sparsity weight of the main comparison
    gammas: list[float] = field(default_factory=list)  # extra values of the gamma sweep (first seed only)
    first_seed_only: list[str] = field(default_factory=list)  # methods run on the first seed only (budget)


@dataclass
class SubtaskSection:
    per_size: int = 4
    unseen_per_size: int = 4
    seed: int = 0
    sizes: list[int] = field(default_factory=list)  # subtask sizes evaluated (empty: every size 1..K)


@dataclass
class BaselineSection:
    finetune_steps: int = 200
    finetune_lr: float = 0.01
    agnostic_mac_ratios: list[float] = field(default_factory=lambda: [0.05, 0.08, 0.1, 0.15, 0.2, 0.3])
    scratch_subtasks: int = 4
    scratch_epochs: int = 5
    latency_subtasks: int = 4
    # per-subset baselines also run at every extra gamma of the sweep (first seed, no fine-tuning), each matched
    # to the hypernetwork's mac_ratio at that gamma: accuracy at equal MACs along the whole curve
    sweep_methods: list[str] = field(default_factory=lambda: ["tp", "random"])


@dataclass
class AblationConfig:
    base: BaseSection = field(default_factory=BaseSection)
    run: RunSection = field(default_factory=RunSection)
    subtasks: SubtaskSection = field(default_factory=SubtaskSection)
    baselines: BaselineSection = field(default_factory=BaselineSection)


def load_ablation_config(path: str | os.PathLike) -> AblationConfig:
    """Read an ablation TOML; unknown keys, wrong types, unknown methods and empty lists are errors."""
    cfg = build_section(AblationConfig, read_toml(path, "ablation config"), "")
    bad = [m for m in cfg.run.methods if m not in ALL_METHODS]
    if bad:
        raise ConfigError(f"run.methods: unknown {', '.join(bad)}; choose from {', '.join(ALL_METHODS)}")
    needs = {"tp": "hypernet", "tp_ft": "hypernet", "random": "hypernet", "scratch": "hypernet",
             "agnostic_hypernet": "hypernet"}
    for m in cfg.run.methods:
        for dep in (needs.get(m), "dense" if m in ("tp", "tp_ft", "random", "agnostic_tp") else None):
            if dep and dep not in cfg.run.methods:
                raise ConfigError(f"run.methods: {m} needs {dep} (its reference), which is not listed")
    for name, listed in (("run.first_seed_only", cfg.run.first_seed_only),
                         ("baselines.sweep_methods", cfg.baselines.sweep_methods)):
        bad = [m for m in listed if m not in ALL_METHODS]
        if bad:
            raise ConfigError(f"{name}: unknown {', '.join(bad)}; choose from {', '.join(ALL_METHODS)}")
    bad = [m for m in cfg.baselines.sweep_methods if m not in ("tp", "tp_ft", "random")]
    if bad:
        raise ConfigError(f"baselines.sweep_methods: {', '.join(bad)} is not a per-subset baseline (tp, tp_ft, "
                          "random)")
    if not cfg.run.seeds:
        raise ConfigError("run.seeds must list at least one seed")
    for name, v in (("subtasks.per_size", cfg.subtasks.per_size), ("baselines.finetune_steps",
                                                                     cfg.baselines.finetune_steps)):
        if v < 0:
            raise ConfigError(f"{name} must be >= 0, got {v}")
    if any(g < 0 for g in [cfg.run.gamma, *cfg.run.gammas]):
        raise ConfigError("run.gamma and run.gammas must be >= 0")
    return cfg


# ---------------------------------------------------------------- the runner

class Ablation:
    """One ablation run in a folder: steps, their rows, and the reports built from them."""

    def __init__(self, cfg: AblationConfig, out: str | os.PathLike, log: Callable[[str], None] = print,
                 root: str | os.PathLike = "."):
        self.cfg = cfg
        self.out = Path(out)
        self.log = log
        self.root = Path(root)
        self.base = load_config(self.root / cfg.base.config, cfg.base.set)
        self._data: Optional[tuple] = None
        self._engines: dict[str, PruningEngine] = {}

    # ------------------------------------------------------------ folders and steps
    def prepare(self, force: bool = False) -> None:
        """Create the run folder (or reopen ours), recording the config; a foreign folder is refused."""
        marker = self.out / ".hypersan.json"
        if self.out.exists() and any(self.out.iterdir()):
            if not marker.is_file() or read_json(marker).get("kind") != ABLATION_KIND:
                check_output_dir(self.out, ABLATION_KIND, force=force)  # raises with a clear message
        (self.out / "steps").mkdir(parents=True, exist_ok=True)
        (self.out / "models").mkdir(exist_ok=True)
        atomic_write_json(marker, {"kind": ABLATION_KIND, "format": 1})
        saved = self.out / "ablation.json"
        now = dataclasses.asdict(self.cfg)
        if saved.is_file() and read_json(saved) != now:
            raise ConfigError(f"{self.out} holds an ablation run with another config; use another --out folder")
        atomic_write_json(saved, now)

    def done(self, step: str) -> bool:
        return (self.out / "steps" / f"{step}.json").is_file()

    def save_step(self, step: str, rows: list[dict], extra: Optional[dict] = None) -> None:
        atomic_write_json(self.out / "steps" / f"{step}.json", {"rows": rows, **(extra or {})})

    def rows(self, step: str) -> list[dict]:
        return read_json(self.out / "steps" / f"{step}.json")["rows"]

    # ------------------------------------------------------------ data
    def data(self):
        """(train_x, train_y, test_x, test_y) of the base config (training split minus validation)."""
        if self._data is None:
            tx, ty, _, _, _ = split_training_data(self.base)
            d = self.base.data
            x, y, _ = load_dataset(d.dataset, "test", d.data_dir or None)
            if d.test_limit:
                x, y = x[:d.test_limit], y[:d.test_limit]
            self._data = (tx, ty, x, y)
        return self._data

    def subtasks(self, model) -> list[Subtask]:
        """The evaluated subtasks: per_size seen ones of every size, unseen_per_size held-out ones of 2..K-1."""
        k, s = len(model.basic), self.cfg.subtasks
        out = []
        for size in s.sizes or range(1, k + 1):
            out += [model.classes_of(b) for b in sample_combinations(k, size, s.per_size, s.seed, model.holdout, True)]
            if 2 <= size < k and s.unseen_per_size:
                out += [model.classes_of(b) for b in
                        sample_combinations(k, size, s.unseen_per_size, s.seed, model.holdout, False)]
        return list(dict.fromkeys(out))

    # ------------------------------------------------------------ jointly trained methods
    def method_config(self, method: str, seed: int, gamma: float) -> Config:
        """The base config with this method's generator and the seed and gamma."""
        over = [f"train.seed={seed}", f"loss.gamma={gamma}"]
        if method == "pertask":
            over += ['generator.kind="pertask"', 'generator.conditioning="multihot"']
        elif method == "hypernet_text":
            over += ['generator.kind="hypernet"', 'generator.conditioning="text"']
        elif method == "dense":
            over += ["subtasks.dense_share=1.0"]
        else:
            over += ['generator.kind="hypernet"', 'generator.conditioning="multihot"']
        return load_config(self.root / self.cfg.base.config, [*self.cfg.base.set, *over])

    def model_dir(self, method: str, seed: int, gamma: float) -> Path:
        return self.out / "models" / f"{method}-g{gamma:g}-s{seed}"

    def trained(self, method: str, seed: int, gamma: float) -> PruningEngine:
        """The engine of a jointly trained method, training it (or resuming it) first when needed."""
        name = f"{method}-g{gamma:g}-s{seed}"
        if name in self._engines:
            return self._engines[name]
        cfg = self.method_config(method, seed, gamma)
        folder = self.model_dir(method, seed, gamma)
        state = folder / "train_state.json"
        finished = state.is_file() and read_json(state)["epoch"] >= cfg.train.epochs
        if not finished:
            self.log(f"training {name}")
            t0 = time.perf_counter()
            train(cfg, folder, resume=state.is_file(), log=lambda m: self.log(f"  {name}: {m}"))
            atomic_write_json(folder.parent / f"{name}.time.json", {"train_s": time.perf_counter() - t0})
        tx = self.data()[0]
        engine = PruningEngine.from_pretrained(folder, images=tx, seed=seed)
        self._engines[name] = engine
        return engine

    def train_seconds(self, method: str, seed: int, gamma: float) -> Optional[float]:
        f = self.out / "models" / f"{method}-g{gamma:g}-s{seed}.time.json"
        return read_json(f)["train_s"] if f.is_file() else None

    def eval_joint(self, method: str, seed: int, gamma: float) -> None:
        """Rows of a jointly trained method on every subtask (and held-out phrasings for text)."""
        step = f"eval-{method}-g{gamma:g}-s{seed}"
        if self.done(step):
            return
        engine = self.trained(method, seed, gamma)
        _, _, x, y = self.data()
        subtasks = self.subtasks(engine.model)
        if method == "dense":  # no masks: every subtask is the dense net with its head cut
            rows = self._rows_fixed_body(engine, engine.subnet(None, fold_bn=True, seed=seed), subtasks, x, y,
                                         method, seed, gamma)
        else:
            r = evaluate(engine, x, y, subtasks, progress=False, seed=seed, log=lambda m: self.log(f"  {step}: {m}"))
            rows = [self._row(method, seed, gamma, s) for s in r["subtasks"]]
            for row, t in zip(rows, subtasks):
                t0 = time.perf_counter()
                engine.subnet(t, fold_bn=True, seed=seed)  # statistics cached: masks + surgery + BN folding
                row["build_s"] = time.perf_counter() - t0
            for row, t in list(zip(rows, subtasks))[:self.cfg.baselines.latency_subtasks]:
                row["latency_ratio"] = latency_ratio(engine, engine.subnet(t, fold_bn=True, seed=seed))
            if method == "hypernet_text":
                rows += self._heldout_phrasings(engine, subtasks, x, y, seed, gamma)
        tr = self.train_seconds(method, seed, gamma)
        for row in rows:
            row["train_s"] = tr
        extra = {}
        if method in ("hypernet", "pertask", "hypernet_text"):
            extra["monotonicity"] = monotonicity(engine, subtasks)
        self.save_step(step, rows, extra)

    def _heldout_phrasings(self, engine, subtasks, x, y, seed, gamma) -> list[dict]:
        out = []
        for t in subtasks:
            rng = random.Random(f"heldout:{seed}:{t}")
            text = describe(t, engine.model.info, rng, "heldout")
            net = engine.subnet(list(t), fold_bn=True, text=text, seed=seed)
            row = self._score(engine, net, t, x, y)
            out.append(self._row("hypernet_text", seed, gamma, row, phrasing="heldout"))
        return out

    def _score(self, engine: PruningEngine, net: nn.Module, t: Subtask, x, y, foreign: bool = False,
               logits: Optional[torch.Tensor] = None) -> dict:
        """acc / map / fp_rate / costs of a plain net of subtask t, beside the engine's dense net. A `foreign` net
        (pruned by another library) is counted on itself with BN kept; hypersan's nets by their widths, which
        gives the same count (tests/test_metrics.py). `logits`: the net's test logits, when already known."""
        n_cls = len(engine.model.classes)
        full = torch.full((len(x), n_cls), float("-inf"))
        full[:, list(t)] = plain_logits(net, x) if logits is None else logits
        got = subtask_metrics(full, y, t)
        ref = subtask_metrics(self.dense_logits(engine), y, t)
        cost = plain_cost(engine, net) if foreign else engine.cost(net)
        return {"classes": [engine.model.classes[i] for i in t], "indices": list(t), "size": len(t),
                "seen": engine.model.is_seen(t),
                "widths": getattr(net, "site_widths_kept", None)
                or (None if foreign else dict(net.arch["site_widths"])),
                "acc": got["acc"], "dense_acc": ref["acc"], "map": got["map"],
                "dense_map": ref["map"], "fp_rate": got["fp_rate"], "dense_fp_rate": ref["fp_rate"],
                "mac_ratio": cost["mac_ratio"], "param_ratio": cost["param_ratio"]}

    def dense_logits(self, engine: PruningEngine) -> torch.Tensor:
        """Test logits of an engine's dense net (cached): the dense_acc reference of the rows built from it."""
        key = id(engine)
        cache = self.__dict__.setdefault("_dense_logits", {})
        if key not in cache:
            net = engine.subnet(None, fold_bn=True, seed=engine.seed)
            cache[key] = plain_logits(net, self.data()[2])
        return cache[key]

    def _rows_fixed_body(self, engine, body: nn.Module, subtasks, x, y, method, seed, gamma, foreign: bool = False,
                         target: Optional[float] = None) -> list[dict]:
        """Rows of one all-classes plain net reused for every subtask, only its head cut: one pass over the test
        images, whose logits restricted to a subtask's classes are the cut net's (cut_head drops head rows)."""
        logits = plain_logits(body, x)
        rows = []
        for t in subtasks:
            cut = cut_head(body, t)
            r = self._score(engine, cut, t, x, y, foreign=foreign, logits=logits[:, sorted(t)])
            rows.append(self._row(method, seed, gamma, r, target=target))
        return rows

    # ------------------------------------------------------------ baselines
    def eval_agnostic_hypernet(self, seed: int) -> None:
        """The hypernetwork's all-classes net for every subtask, only its head cut."""
        step = f"eval-agnostic_hypernet-s{seed}"
        if self.done(step):
            return
        gamma = self.cfg.run.gamma
        engine = self.trained("hypernet", seed, gamma)
        _, _, x, y = self.data()
        every = tuple(range(len(engine.model.classes)))
        body = engine.subnet(every, fold_bn=True, seed=seed)
        rows = self._rows_fixed_body(engine, body, self.subtasks(engine.model), x, y, "agnostic_hypernet", seed,
                                     gamma)
        self.save_step(step, rows)

    def eval_per_subset(self, seed: int, gamma: Optional[float] = None,
                        methods: Optional[list[str]] = None) -> None:
        """Torch-Pruning (with and without fine-tuning) and random pruning of the dense net, per subset, at the
        hypernetwork's mac_ratio for that subset (at `gamma`, by default the main one)."""
        from . import baselines

        main = gamma is None
        gamma = self.cfg.run.gamma if main else gamma
        methods = [m for m in (methods or ("tp", "tp_ft", "random")) if m in self.cfg.run.methods]
        step = f"eval-per_subset-s{seed}" if main else f"eval-per_subset-g{gamma:g}-s{seed}"
        if not methods or self.done(step):
            return
        dense = self.trained("dense", seed, self.cfg.run.gamma)
        targets = {tuple(r["indices"]): r["mac_ratio"] for r in self.rows(f"eval-hypernet-g{gamma:g}-s{seed}")
                   if r["phrasing"] == "canonical"}
        tx, ty, x, y = self.data()
        stats = dense.statistics(None, seed=seed)
        spec = dense.calib_spec(seed)
        rows = []
        for i, (t, target) in enumerate(targets.items(), 1):
            self.log(f"  {step}: [{i}/{len(targets)}] {','.join(dense.model.classes[c] for c in t)} "
                     f"at MAC ratio {target:.3f}: {', '.join(methods)}")
            base = prune_backbone(dense.model.backbone, None, t, bn_stats=stats, fold_bn=False,
                                  input_shape=dense.model.info.input_shape)
            for method in methods:
                t0 = time.perf_counter()
                if method == "random":
                    net = baselines.random_prune(base, target, dense_macs=plain_cost(dense, None)["dense_macs"],
                                                 seed=seed)
                else:
                    net = baselines.magnitude_prune(base, target, dense_macs=plain_cost(dense, None)["dense_macs"])
                ft = None
                if method == "tp_ft" and self.cfg.baselines.finetune_steps:
                    ft = baselines.finetune(net, tx, ty, t, steps=self.cfg.baselines.finetune_steps,
                                            lr=self.cfg.baselines.finetune_lr, seed=seed)
                baselines.recalibrate_bn(net, spec.stream(tx, torch.device("cpu")))
                build = time.perf_counter() - t0
                row = self._row(method, seed, gamma, self._score(dense, net.eval(), t, x, y, foreign=True),
                                target=target)
                row["build_s"] = build
                row["train_s"] = None if ft is None else ft["wall_s"]
                rows.append(row)
        self.save_step(step, rows)

    def eval_agnostic_tp(self, seed: int) -> None:
        """Torch-Pruning of the dense net for all classes at each swept mac_ratio; every subtask cuts the head."""
        from . import baselines

        step = f"eval-agnostic_tp-s{seed}"
        if self.done(step):
            return
        gamma = self.cfg.run.gamma
        dense = self.trained("dense", seed, gamma)
        tx, _, x, y = self.data()
        stats = dense.statistics(None, seed=seed)
        spec = dense.calib_spec(seed)
        every = list(range(len(dense.model.classes)))
        base = prune_backbone(dense.model.backbone, None, every, bn_stats=stats, fold_bn=False,
                              input_shape=dense.model.info.input_shape)
        rows = []
        for ratio in self.cfg.baselines.agnostic_mac_ratios:
            self.log(f"  {step}: MAC ratio {ratio:g}")
            net = baselines.magnitude_prune(base, ratio, dense_macs=plain_cost(dense, None)["dense_macs"])
            baselines.recalibrate_bn(net, spec.stream(tx, torch.device("cpu")))
            rows += self._rows_fixed_body(dense, net.eval(), self.subtasks(dense.model), x, y, "agnostic_tp", seed,
                                          gamma, foreign=True, target=ratio)
        self.save_step(step, rows)

    def eval_scratch(self, seed: int) -> None:
        """One small net per sampled pair, trained from scratch at the hypernetwork's MACs for that pair."""
        step = f"eval-scratch-s{seed}"
        n = self.cfg.baselines.scratch_subtasks
        if not n or self.done(step):
            return
        gamma = self.cfg.run.gamma
        dense = self.trained("dense", seed, gamma)
        ref = [r for r in self.rows(f"eval-hypernet-g{gamma:g}-s{seed}") if r["size"] == 2
               and r["phrasing"] == "canonical"][:n]
        tx, ty, x, y = self.data()
        rows = []
        for i, r in enumerate(ref, 1):
            t = tuple(r["indices"])
            self.log(f"  {step}: [{i}/{len(ref)}] training {r['classes'].replace('|', ',')} from scratch at MAC "
                     f"ratio {r['mac_ratio']:.3f}")
            t0 = time.perf_counter()
            net = train_scratch(dense.model.backbone.arch, t, r["mac_ratio"], tx, ty,
                                epochs=self.cfg.baselines.scratch_epochs, seed=seed,
                                dense_macs=plain_cost(dense, None)["dense_macs"], base=self.base,
                                input_shape=tuple(dense.model.info.input_shape))
            row = self._row("scratch", seed, gamma, self._score(dense, net.eval(), t, x, y, foreign=True),
                            target=r["mac_ratio"])
            row["train_s"] = time.perf_counter() - t0
            rows.append(row)
        self.save_step(step, rows)

    # ------------------------------------------------------------ rows
    @staticmethod
    def _row(method: str, seed: int, gamma: float, r: dict, phrasing: str = "canonical",
             target: Optional[float] = None) -> dict:
        return {"method": method, "seed": seed, "gamma": gamma, "classes": "|".join(r["classes"]),
                "indices": list(r["indices"]), "size": r["size"], "seen": r["seen"], "acc": r["acc"],
                "dense_acc": r["dense_acc"], "map": r["map"], "dense_map": r["dense_map"], "mac_ratio": r["mac_ratio"],
                "param_ratio": r["param_ratio"], "fp_rate": r.get("fp_rate"), "dense_fp_rate": r.get("dense_fp_rate"),
                "target_mac_ratio": target, "phrasing": phrasing, "build_s": None, "train_s": None,
                "latency_ratio": None, "widths": r.get("widths")}

    # ------------------------------------------------------------ the whole run
    def run(self, progress: bool = True) -> dict:
        """Every step not yet done, then the reports; returns {"csv", "table", "plots"} paths."""
        from tqdm import tqdm

        c = self.cfg.run
        plan: list[tuple[str, Callable[[], None]]] = []
        for seed in c.seeds:
            for m in JOINT:
                if m in c.methods and (seed == c.seeds[0] or m not in c.first_seed_only):
                    plan.append((f"{m} seed {seed}", lambda m=m, seed=seed: self.eval_joint(m, seed, c.gamma)))
            if "agnostic_hypernet" in c.methods and (seed == c.seeds[0] or "agnostic_hypernet" not in c.first_seed_only):
                plan.append((f"agnostic_hypernet seed {seed}", lambda seed=seed: self.eval_agnostic_hypernet(seed)))
            plan.append((f"per-subset pruning seed {seed}", lambda seed=seed: self.eval_per_subset(seed)))
            if "agnostic_tp" in c.methods and (seed == c.seeds[0] or "agnostic_tp" not in c.first_seed_only):
                plan.append((f"agnostic_tp seed {seed}", lambda seed=seed: self.eval_agnostic_tp(seed)))
        first = c.seeds[0]
        if "scratch" in c.methods:
            plan.append(("scratch", lambda: self.eval_scratch(first)))
        for g in c.gammas:
            for m in ("hypernet", "pertask"):
                if m in c.methods:
                    plan.append((f"{m} gamma {g:g}", lambda m=m, g=g: self.eval_joint(m, first, g)))
            if "hypernet" in c.methods and self.cfg.baselines.sweep_methods:
                plan.append((f"per-subset pruning gamma {g:g}",
                             lambda g=g: self.eval_per_subset(first, g, self.cfg.baselines.sweep_methods)))
        bar = tqdm(plan, desc="ablation", disable=not progress)
        for name, fn in bar:
            bar.set_postfix_str(name)
            fn()
            self.log(f"done: {name}")
        from .ablation_report import write_reports

        return write_reports(self.out, self.all_rows(), self.extras())

    def all_rows(self) -> list[dict]:
        out = []
        for f in sorted((self.out / "steps").glob("*.json")):
            out += read_json(f)["rows"]
        return out

    def extras(self) -> dict:
        return {f.stem: {k: v for k, v in read_json(f).items() if k != "rows"}
                for f in sorted((self.out / "steps").glob("*.json"))}


def plain_cost(engine: PruningEngine, net: Optional[nn.Module]) -> dict:
    """MACs / params of any plain net (one pruned by another library too), counted on the net itself, beside the
    engine's dense net; net=None gives the dense net's own counts."""
    from .metrics import count_macs, count_params

    dense_macs, dense_params = engine.dense_cost()
    if net is None:
        return {"dense_macs": dense_macs, "dense_params": dense_params}
    shape = tuple(engine.model.info.input_shape)
    macs, params = count_macs(net, shape), count_params(net)
    return {"macs": macs, "params": params, "mac_ratio": macs / dense_macs, "param_ratio": params / dense_params}


def cut_head(net: nn.Module, classes: Subtask) -> nn.Module:
    """A copy of an all-classes plain net whose head keeps only `classes` (ascending), the body untouched."""
    import copy

    out = copy.deepcopy(net)
    idx = torch.tensor(sorted(classes))
    head = nn.Linear(net.head.in_features, len(idx))
    with torch.no_grad():
        head.weight.copy_(net.head.weight[idx])
        head.bias.copy_(net.head.bias[idx])
    out.head = head
    out.classes = [net.classes[i] for i in idx.tolist()]
    if isinstance(getattr(net, "arch", None), dict):
        out.arch = dict(net.arch, num_classes=len(idx))
    return out.eval()


def scratch_widths(arch: dict, target_mac_ratio: float, num_classes: int, dense_macs: int,
                   input_shape: tuple[int, ...]) -> dict[str, int]:
    """Site widths of the backbone scaled by one factor so that the net's MACs are nearest the target."""
    from .metrics import subnet_cost

    def macs(f: float) -> tuple[int, dict]:
        w = {k: max(1, round(v * f)) for k, v in arch["site_widths"].items()}
        with torch.device("meta"):
            return subnet_cost(arch, w, num_classes, input_shape)[0], w

    lo, hi = 0.0, 1.0
    for _ in range(30):  # MACs grow with the factor: bisect
        mid = (lo + hi) / 2
        if macs(mid)[0] < target_mac_ratio * dense_macs:
            lo = mid
        else:
            hi = mid
    return min((macs(lo), macs(hi)), key=lambda m: abs(m[0] / dense_macs - target_mac_ratio))[1]


def train_scratch(arch: dict, classes: Subtask, target_mac_ratio: float, images, labels, epochs: int, seed: int,
                  dense_macs: int, base: Config, input_shape: tuple[int, ...]) -> nn.Module:
    """A plain net of uniformly scaled widths at the target MACs, trained from scratch on the subset's training
    images (cross-entropy over its classes), with the base config's optimizer settings and augmentation."""
    from .data import augment, to_float
    from .subnet import build_plain
    from .train import lr_factor

    widths = scratch_widths(arch, target_mac_ratio, len(classes), dense_macs, input_shape)
    torch.manual_seed(seed)
    cls = torch.tensor(sorted(classes))
    net = build_plain(dict(arch, site_widths=widths, num_classes=len(cls)), [str(c) for c in cls.tolist()])
    net.input_shape = list(input_shape)
    keep = torch.isin(labels, cls)
    x, y = images[keep], torch.searchsorted(cls, labels[keep])
    t, d = base.train, base.data
    opt = torch.optim.SGD(net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True)
    steps = max(1, -(-len(x) // t.batch_size))
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(steps):
            for g in opt.param_groups:
                g["lr"] = t.lr * lr_factor(epoch * steps + i, epochs * steps, steps // 2)
            idx = perm[i * t.batch_size:(i + 1) * t.batch_size]
            xb = augment(to_float(x[idx]), d.crop_padding, d.hflip, gen)
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.site_widths_kept = widths
    return net.eval()


def latency_ratio(engine: PruningEngine, net: nn.Module, batch: int = 256, repeats: int = 10) -> float:
    """Pruned / dense latency of one batch forward (both BN-folded plain nets), the median of per-round ratios."""
    from .bench import paired_ratio, time_rounds

    dense = engine.subnet(None, fold_bn=True)
    x = torch.rand(batch, *engine.model.info.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = time_rounds({"dense": lambda: dense(x), "pruned": lambda: net(x)}, warmup=2, repeats=repeats)
    return paired_ratio(t["pruned"], t["dense"])


def monotonicity(engine: PruningEngine, subtasks: list[Subtask]) -> dict:
    """How often a subset's kept channels are not contained in its superset's: for every evaluated subtask T of
    size >= 2 and every T minus one class."""
    pairs = violated = bad = total = 0
    sites = engine.model.sites
    for t in subtasks:
        if len(t) < 2:
            continue
        big = kept_channels(engine.masks(t)[0], sites)
        for c in t:
            small = kept_channels(engine.masks(tuple(i for i in t if i != c))[0], sites)
            b, n = containment_violations(small, big)
            pairs += 1
            violated += b > 0
            bad += b
            total += n
    return {"pairs": pairs, "pairs_violated": violated, "channel_violations": bad, "channels": total,
            "pair_violation_rate": violated / pairs if pairs else None}


def run_ablation(config: str | os.PathLike, out: str | os.PathLike, quick: bool = False, force: bool = False,
                 log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Run (or resume) an ablation; `quick` uses configs/ablation_tiny.toml instead of `config`."""
    root = Path(config).resolve().parent.parent if not quick else Path(__file__).resolve().parent.parent
    path = root / "configs" / "ablation_tiny.toml" if quick else Path(config)
    cfg = load_ablation_config(path)
    ab = Ablation(cfg, out, log=log, root=root)
    ab.prepare(force=force)
    return ab.run(progress=progress)


__all__ = ["AblationConfig", "Ablation", "load_ablation_config", "run_ablation", "monotonicity", "COLUMNS"]
