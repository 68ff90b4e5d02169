"""The ablation runner: hypernetwork vs per-task masks vs per-subset pruning, on seen and held-out class sets.

`run_ablation(config, out)` trains every jointly trained method (same backbone, schedule, held-out
combinations and validation split), evaluates every method on the same subtasks of the validation split (for
choices) and of the test split (for conclusions; the `split` column), and writes `results.csv` (raw
accuracies), `table.md` (every gap against one reference: the separately trained dense net on the same
classes) and PNG plots into `out`. Work is split into steps; each step writes its
rows atomically to `out/steps/<step>.json` and is never redone once there, and training runs resume from
their last epoch, so the runner can be stopped and started again at any point.

Methods (the `method` column):
- `hypernet`, `hypernet_text`, `pertask`: jointly trained generators (multi-hot, text-conditioned, per-task
  max / MaxAbs), each subtask through its own pruned net;
- `dense`: the same backbone trained without masks: the reference of every gap, and the net the per-subset
  baselines prune;
- per-subset pruning of the dense net to the hypernetwork's `mac_ratio` for the same subset, BN recalibrated:
  - `tp_subset`: Torch-Pruning at full strength (Taylor importance on the subset's loss, global allocation,
    iterative stages with fine-tuning between them; `baselines.subset_prune`), `tp_subset_ft` and
    `tp_subset_ft_long` with a short and a generous fine-tune after it;
  - `tp_l1_uniform`, `tp_l1_uniform_ft`: one-shot L1 magnitude at uniform widths (the same channels for every
    subset), without and with the short fine-tune; `random`: random channels at uniform widths;
  - every fine-tune uses the hypernetwork's objective (BCE, other classes' images as negatives);
- `agnostic_hypernet`, `agnostic_tp`: one mask for every subtask, only the head cut to the subtask (the
  hypernetwork's all-classes mask; Torch-Pruning on the dense net for all classes, swept over MACs);
- `scratch`: a small net per subtask trained from scratch at the hypernetwork's MACs (a sample of pairs).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..config import Config, ConfigError, build_section, find_config, load_config, read_toml
from ..data.datasets import Augmentation, load_split
from ..language.descriptions import describe
from ..prune.engine import PruningEngine, labelled_sample
from ..training.evaluate import calibrated_threshold, evaluate, plain_logits, subtask_metrics
from ..io import atomic_write_json, check_output_dir, read_json
from ..prune.metrics import containment_violations
from ..data.subtasks import Subtask, sample_combinations
from ..prune.surgery import kept_channels, prune_backbone
from ..training.train import split_training_data, train

ABLATION_KIND = "ablation"
JOINT = ("dense", "hypernet", "hypernet_text", "pertask")
PER_SUBSET = ("tp_subset", "tp_subset_ft", "tp_subset_ft_long", "tp_l1_uniform", "tp_l1_uniform_ft", "random",
              "hypernet_ft", "hypernet_ft_long")
ALL_METHODS = (*JOINT, *PER_SUBSET, "agnostic_hypernet", "agnostic_tp", "scratch")
SPLITS = ("val", "test")


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
    # the jointly trained mask methods start from the dense method's finished net of the same seed (train.init_from)
    init_from_dense: bool = False


@dataclass
class SubtaskSection:
    per_size: int = 4
    unseen_per_size: int = 4
    seed: int = 0
    sizes: list[int] = field(default_factory=list)  # subtask sizes evaluated (empty: every size 1..K)


@dataclass
class BaselineSection:
    finetune_steps: int = 200  # the short fine-tune (`*_ft`): SGD steps of batch 128, cosine learning rate
    finetune_steps_long: int = 2000  # the generous one (`tp_subset_ft_long`)
    finetune_lr: float = 0.01
    # tp_subset (baselines.subset_prune): importance, stages of the iterative schedule, fine-tuning steps between
    # them, the share of a layer's channels it may prune at most (a floor: no layer is emptied)
    subset_importance: str = "taylor"
    subset_stages: int = 5
    subset_stage_steps: int = 50
    subset_max_pruning_ratio: float = 0.95
    # the subtask sizes the per-subset baselines run on (empty: every evaluated subtask), and at most this many
    # subtasks of each size and kind (seen / held-out; 0: all); the budget's lever
    subset_sizes: list[int] = field(default_factory=list)
    subset_per_size: int = 0
    agnostic_mac_ratios: list[float] = field(default_factory=lambda: [0.05, 0.08, 0.1, 0.15, 0.2, 0.3])
    scratch_subtasks: int = 4
    scratch_epochs: int = 5
    latency_subtasks: int = 4
    build_subtasks: int = 0  # subtasks whose cold / warm build time every jointly trained method measures (0: the
    # per-subset baselines' subtasks)
    # per-subset baselines also run at every extra gamma of the sweep (first seed, no fine-tuning), each matched
    # to the hypernetwork's mac_ratio at that gamma: accuracy at equal MACs along the whole curve
    sweep_methods: list[str] = field(default_factory=lambda: ["tp_l1_uniform", "random"])


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
    needs = {**{m: "hypernet" for m in PER_SUBSET}, "scratch": "hypernet", "agnostic_hypernet": "hypernet"}
    if "dense" not in cfg.run.methods:
        raise ConfigError("run.methods must list dense: it is the reference of every gap")
    for m in cfg.run.methods:
        for dep in (needs.get(m), "dense" if m in (*PER_SUBSET, "agnostic_tp") else None):
            if dep and dep not in cfg.run.methods:
                raise ConfigError(f"run.methods: {m} needs {dep} (its reference), which is not listed")
    for name, listed in (("run.first_seed_only", cfg.run.first_seed_only),
                         ("baselines.sweep_methods", cfg.baselines.sweep_methods)):
        bad = [m for m in listed if m not in ALL_METHODS]
        if bad:
            raise ConfigError(f"{name}: unknown {', '.join(bad)}; choose from {', '.join(ALL_METHODS)}")
    bad = [m for m in cfg.baselines.sweep_methods if m not in PER_SUBSET]
    if bad:
        raise ConfigError(f"baselines.sweep_methods: {', '.join(bad)} is not a per-subset baseline "
                          f"({', '.join(PER_SUBSET)})")
    if cfg.baselines.subset_importance not in ("taylor", "l1"):
        raise ConfigError(f"baselines.subset_importance: {cfg.baselines.subset_importance!r}; choose taylor or l1")
    if not 0 < cfg.baselines.subset_max_pruning_ratio < 1:
        raise ConfigError("baselines.subset_max_pruning_ratio must lie in (0, 1)")
    if not cfg.run.seeds:
        raise ConfigError("run.seeds must list at least one seed")
    for name, v in (("subtasks.per_size", cfg.subtasks.per_size),
                    ("baselines.finetune_steps", cfg.baselines.finetune_steps),
                    ("baselines.finetune_steps_long", cfg.baselines.finetune_steps_long),
                    ("baselines.subset_stage_steps", cfg.baselines.subset_stage_steps),
                    ("baselines.subset_per_size", cfg.baselines.subset_per_size)):
        if v < 0:
            raise ConfigError(f"{name} must be >= 0, got {v}")
    if any(g < 0 for g in [cfg.run.gamma, *cfg.run.gammas]):
        raise ConfigError("run.gamma and run.gammas must be >= 0")
    return cfg


# ---------------------------------------------------------------- the runner

class Ablation:
    """One ablation run in a folder: steps, their rows, and the reports built from them."""

    def __init__(self, cfg: AblationConfig, out: str | os.PathLike, log: Callable[[str], None] = print,
                 root: str | os.PathLike = ".", threads: Optional[int] = None):
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        self.threads = threads  # torch threads for every step, trainings included (an execution setting only)
        self.cfg = cfg
        self.out = Path(out)
        self.log = log
        self.root = Path(root)
        self.base = load_config(self.root / cfg.base.config, cfg.base.set)
        self._train: Optional[tuple] = None  # (images, labels) of the training split
        self._splits: dict = {}
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
        if saved.is_file():
            extension_of(read_json(saved), now, self.out)  # raises unless `now` only adds seeds or methods
        atomic_write_json(saved, now)

    def done(self, step: str) -> bool:
        return (self.out / "steps" / f"{step}.json").is_file()

    def save_step(self, step: str, rows: list[dict], extra: Optional[dict] = None) -> None:
        atomic_write_json(self.out / "steps" / f"{step}.json", {"rows": rows, **(extra or {})})

    def rows(self, step: str) -> list[dict]:
        return read_json(self.out / "steps" / f"{step}.json")["rows"]

    # ------------------------------------------------------------ data
    def _load(self) -> None:
        if self._train is None:
            tx, ty, vx, vy, _ = split_training_data(self.base)
            d = self.base.data
            x, y, _ = load_split(d, "test")
            if d.test_limit:
                x, y = x[:d.test_limit], y[:d.test_limit]
            self._train = (tx, ty)
            self._splits = {"val": (vx, vy), "test": (x, y)}

    def training(self) -> tuple:
        """(images, labels) of the base config's training split (minus validation): what fine-tunes and
        calibration read."""
        self._load()
        return self._train

    def splits(self) -> dict:
        """{"val": (images, labels), "test": (...)}: every net is scored on both; choices are made on "val"."""
        self._load()
        return self._splits

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
        if method != "dense" and self.cfg.run.init_from_dense:
            over.append(f'train.init_from="{self.model_dir("dense", seed, self.cfg.run.gamma)}"')
        if self.threads is not None:
            over.append(f"train.threads={self.threads}")
        return load_config(self.root / self.cfg.base.config, [*self.cfg.base.set, *over])

    def model_dir(self, method: str, seed: int, gamma: float) -> Path:
        return self.out / "models" / f"{method}-g{gamma:g}-s{seed}"

    def trained(self, method: str, seed: int, gamma: float) -> PruningEngine:
        """The engine of a jointly trained method, training it (or resuming it) first when needed."""
        name = f"{method}-g{gamma:g}-s{seed}"
        if name in self._engines:
            return self._engines[name]
        if method != "dense" and self.cfg.run.init_from_dense:
            self.trained("dense", seed, self.cfg.run.gamma)  # its finished net starts this one
        cfg = self.method_config(method, seed, gamma)
        folder = self.model_dir(method, seed, gamma)
        state = folder / "train_state.json"
        done = read_json(state) if state.is_file() else None  # "epochs": the run's own count (train.min_steps)
        finished = done is not None and done["epoch"] >= done.get("epochs", cfg.train.epochs)
        if not finished:
            self.log(f"training {name}")
            t0 = time.perf_counter()
            train(cfg, folder, resume=state.is_file(), log=lambda m: self.log(f"  {name}: {m}"))
            atomic_write_json(folder.parent / f"{name}.time.json", {"train_s": time.perf_counter() - t0})
        tx, ty = self.training()
        engine = PruningEngine.from_pretrained(folder, images=tx, labels=ty, seed=seed)
        self._engines[name] = engine
        return engine

    def train_seconds(self, method: str, seed: int, gamma: float) -> Optional[float]:
        f = self.out / "models" / f"{method}-g{gamma:g}-s{seed}.time.json"
        return read_json(f)["train_s"] if f.is_file() else None

    def eval_joint(self, method: str, seed: int, gamma: float) -> None:
        """Rows of a jointly trained method on every subtask and split (and held-out phrasings for text), with
        cold and warm build times."""
        step = f"eval-{method}-g{gamma:g}-s{seed}"
        if self.done(step):
            return
        engine = self.trained(method, seed, gamma)
        subtasks = self.subtasks(engine.model)
        rows = []
        for split, (x, y) in self.splits().items():
            if method == "dense":  # no masks: every subtask is the dense net with its head cut
                rows += self._rows_fixed_body(engine, engine.subnet(None, fold_bn=True, seed=seed), subtasks, x, y,
                                              method, seed, gamma, split=split)
                continue
            r = evaluate(engine, x, y, subtasks, progress=False, seed=seed,
                         log=lambda m: self.log(f"  {step} ({split}): {m}"))
            rows += [self._row(method, seed, gamma, s, split=split) for s in r["subtasks"]]
            if method == "hypernet_text":
                rows += self._heldout_phrasings(engine, subtasks, x, y, seed, gamma, split)
        if method != "dense":
            times = self.build_times(engine, self.build_subtasks(engine.model), seed)
            for row in rows:
                if row["phrasing"] == "canonical" and tuple(row["indices"]) in times:
                    row["build_s"], row["build_warm_s"] = times[tuple(row["indices"])]
            for t in subtasks[:self.cfg.baselines.latency_subtasks]:
                ratio = latency_ratio(engine, engine.subnet(t, fold_bn=True, seed=seed))
                for row in rows:
                    if tuple(row["indices"]) == tuple(t) and row["phrasing"] == "canonical":
                        row["latency_ratio"] = ratio
        tr = self.train_seconds(method, seed, gamma)
        if tr is not None and method != "dense" and self.cfg.run.init_from_dense:
            # started from the dense net: its training is part of this method's one-off cost
            dense_s = self.train_seconds("dense", seed, self.cfg.run.gamma)
            tr = None if dense_s is None else tr + dense_s
        for row in rows:
            row["train_s"] = tr
        extra = {}
        if method in ("hypernet", "pertask", "hypernet_text"):
            extra["monotonicity"] = monotonicity(engine, subtasks)
        self.save_step(step, rows, extra)

    def build_times(self, engine: PruningEngine, subtasks: list[Subtask], seed: int) -> dict:
        """{subtask: (cold_s, warm_s)}: building a subtask's net (masks, BN calibration, surgery, BN folding) on an
        engine that has never seen that class set (a fresh statistics cache), then again with its statistics
        cached. The model is loaded and the calibration images are in memory in both, as in a running server."""
        out = {}
        tx = self.training()[0]
        for t in subtasks:
            fresh = PruningEngine(engine.model, images=tx, seed=seed)
            t0 = time.perf_counter()
            fresh.subnet(t, fold_bn=True, seed=seed)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            fresh.subnet(t, fold_bn=True, seed=seed)
            out[tuple(t)] = (cold, time.perf_counter() - t0)
        return out

    def subset_subtasks(self, model) -> list[Subtask]:
        """The subtasks the per-subset baselines run on: the evaluated ones of baselines.subset_sizes, at most
        baselines.subset_per_size of each size and kind (seen / held-out)."""
        b = self.cfg.baselines
        out, count = [], {}
        for t in self.subtasks(model):
            key = (len(t), model.is_seen(t))
            if b.subset_sizes and len(t) not in b.subset_sizes:
                continue
            if b.subset_per_size and count.get(key, 0) >= b.subset_per_size:
                continue
            count[key] = count.get(key, 0) + 1
            out.append(t)
        return out

    def build_subtasks(self, model) -> list[Subtask]:
        n = self.cfg.baselines.build_subtasks
        return self.subtasks(model)[:n] if n else self.subset_subtasks(model)

    def _heldout_phrasings(self, engine, subtasks, x, y, seed, gamma, split) -> list[dict]:
        out = []
        for t in subtasks:
            rng = random.Random(f"heldout:{seed}:{t}")
            text = describe(t, engine.model.info, rng, "heldout")
            net = engine.subnet(list(t), fold_bn=True, text=text, seed=seed)
            row = self._score(engine, net, t, x, y, split=split)
            out.append(self._row("hypernet_text", seed, gamma, row, phrasing="heldout", split=split))
        return out

    def _score(self, engine: PruningEngine, net: nn.Module, t: Subtask, x, y, foreign: bool = False,
               logits: Optional[torch.Tensor] = None, split: str = "test") -> dict:
        """acc / map / fp_rate / costs of a plain net of subtask t on (x, y) of `split`, beside the net of the
        engine's backbone without masks (`backbone_*`: a second reference; the report's gaps are against the
        dense method's rows). A `foreign` net (pruned by another library) is counted on itself with BN kept;
        hypersan's nets by their widths, which gives the same count (tests/test_metrics.py). `logits`: the net's
        logits, when already known."""
        n_cls = len(engine.model.classes)
        full = torch.full((len(x), n_cls), float("-inf"))
        full[:, list(t)] = plain_logits(net, x) if logits is None else logits
        th = th_ref = 0.0
        if len(t) == 1:  # one class: its threshold calibrated on labelled training images, for both nets
            cx, cy = self.threshold_images(engine.seed)
            th = calibrated_threshold(plain_logits(net, cx)[:, 0], cy == t[0])
            th_ref = calibrated_threshold(self.dense_logits(engine, "calib")[:, t[0]], cy == t[0])
        got = subtask_metrics(full, y, t, th)
        ref = subtask_metrics(self.dense_logits(engine, split), y, t, th_ref)
        cost = plain_cost(engine, net) if foreign else engine.cost(net)
        return {"classes": [engine.model.classes[i] for i in t], "indices": list(t), "size": len(t),
                "seen": engine.model.is_seen(t),
                "widths": getattr(net, "site_widths_kept", None)
                or (None if foreign else dict(net.arch["site_widths"])),
                "acc": got["acc"], "dense_acc": ref["acc"], "map": got["map"],
                "dense_map": ref["map"], "fp_rate": got["fp_rate"], "dense_fp_rate": ref["fp_rate"],
                "mac_ratio": cost["mac_ratio"], "param_ratio": cost["param_ratio"]}

    def threshold_images(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The seeded sample of labelled training images (uint8) single classes' thresholds are calibrated on:
        the one evaluate() takes through an engine of the training images and labels (labelled_images)."""
        cache = self.__dict__.setdefault("_threshold_images", {})
        if seed not in cache:
            tx, ty = self.training()
            cache[seed] = labelled_sample(tx, ty, 4096, seed)
        return cache[seed]

    def dense_logits(self, engine: PruningEngine, split: str = "test") -> torch.Tensor:
        """Logits of an engine's backbone without masks on a split, or on the threshold images ("calib")
        (cached)."""
        key = (id(engine), split)
        cache = self.__dict__.setdefault("_dense_logits", {})
        if key not in cache:
            net = engine.subnet(None, fold_bn=True, seed=engine.seed)
            images = self.threshold_images(engine.seed)[0] if split == "calib" else self.splits()[split][0]
            cache[key] = plain_logits(net, images)
        return cache[key]

    def _rows_fixed_body(self, engine, body: nn.Module, subtasks, x, y, method, seed, gamma, foreign: bool = False,
                         target: Optional[float] = None, split: str = "test") -> list[dict]:
        """Rows of one all-classes plain net reused for every subtask, only its head cut: one pass over the
        images, whose logits restricted to a subtask's classes are the cut net's (cut_head drops head rows)."""
        logits = plain_logits(body, x)
        rows = []
        for t in subtasks:
            cut = cut_head(body, t)
            r = self._score(engine, cut, t, x, y, foreign=foreign, logits=logits[:, sorted(t)], split=split)
            rows.append(self._row(method, seed, gamma, r, target=target, split=split))
        return rows

    # ------------------------------------------------------------ baselines
    def eval_agnostic_hypernet(self, seed: int) -> None:
        """The hypernetwork's all-classes net for every subtask, only its head cut."""
        step = f"eval-agnostic_hypernet-s{seed}"
        if self.done(step):
            return
        gamma = self.cfg.run.gamma
        engine = self.trained("hypernet", seed, gamma)
        every = tuple(range(len(engine.model.classes)))
        body = engine.subnet(every, fold_bn=True, seed=seed)
        rows = []
        for split, (x, y) in self.splits().items():
            rows += self._rows_fixed_body(engine, body, self.subtasks(engine.model), x, y, "agnostic_hypernet", seed,
                                          gamma, split=split)
        self.save_step(step, rows)

    def eval_per_subset(self, seed: int, gamma: Optional[float] = None,
                        methods: Optional[list[str]] = None) -> None:
        """The per-subset pruning baselines of the dense net, at the hypernetwork's mac_ratio for each subset
        (at `gamma`, by default the main one). A method's build time is everything it takes for a new class set:
        pruning, fine-tuning and BN calibration; nothing is cached across subsets, so warm = cold."""
        main = gamma is None
        gamma = self.cfg.run.gamma if main else gamma
        c = self.cfg.run
        methods = [m for m in (methods or PER_SUBSET) if m in c.methods
                   and (seed == c.seeds[0] or m not in c.first_seed_only)]
        step = f"eval-per_subset-s{seed}" if main else f"eval-per_subset-g{gamma:g}-s{seed}"
        earlier: list[dict] = []
        if self.done(step):  # a method added to the config later runs alone; the step's other rows stay
            earlier = self.rows(step)
            have = {r["method"] for r in earlier}
            methods = [m for m in methods if m not in have]
        if not methods:
            return
        dense = self.trained("dense", seed, self.cfg.run.gamma)
        wanted = set(self.subset_subtasks(dense.model))
        targets = {tuple(r["indices"]): r["mac_ratio"] for r in self.rows(f"eval-hypernet-g{gamma:g}-s{seed}")
                   if r["phrasing"] == "canonical" and r["split"] == "test" and tuple(r["indices"]) in wanted}
        self.save_step(step, earlier + self.per_subset_rows(seed, gamma, targets, methods, step))

    def per_subset_rows(self, seed: int, gamma: float, targets: dict[tuple, float], methods: list[str],
                        step: str = "per-subset") -> list[dict]:
        """The per-subset methods' rows (every split) for each class set of `targets` ({indices: MAC ratio to
        the dense net}), pruned from this ablation's dense net of `seed`, with its baselines' settings. Also the
        peer of a net trained elsewhere: `hypersan study variants --rematch` prunes it to that net's MACs."""
        from . import baselines

        b = self.cfg.baselines
        dense = self.trained("dense", seed, self.cfg.run.gamma)
        tx, ty = self.training()
        stats = dense.statistics(None, seed=seed)
        spec = dense.calib_spec(seed)
        dense_macs = plain_cost(dense, None)["dense_macs"]
        d = self.base.data
        ft_args = dict(lr=b.finetune_lr, seed=seed, beta=self.base.loss.beta, augmentation=Augmentation.of(d))

        def finish(net, t0, ft=None, prune_seen=0) -> tuple:
            baselines.recalibrate_bn(net, spec.stream(tx, torch.device("cpu")))
            return net.eval(), time.perf_counter() - t0, ft, prune_seen

        def tuned(net, t, steps, t0, prune_seen=0) -> tuple:
            net = copy.deepcopy(net)
            ft = baselines.finetune(net, tx, ty, t, steps=steps, **ft_args)
            return finish(net, t0, ft, prune_seen)

        rows = []
        for i, (t, target) in enumerate(targets.items(), 1):
            self.log(f"  {step}: [{i}/{len(targets)}] {','.join(dense.model.classes[c] for c in t)} "
                     f"at MAC ratio {target:.3f}: {', '.join(methods)}")
            base = prune_backbone(dense.model.backbone, None, t, bn_stats=stats, fold_bn=False,
                                  input_shape=dense.model.info.input_shape)
            built = {}
            if {"tp_subset", "tp_subset_ft", "tp_subset_ft_long"} & set(methods):
                t0 = time.perf_counter()
                net = baselines.subset_prune(base, t, tx, ty, target, dense_macs, stages=b.subset_stages,
                                             stage_steps=b.subset_stage_steps, importance=b.subset_importance,
                                             max_pruning_ratio=b.subset_max_pruning_ratio, **ft_args)
                cost = time.perf_counter() - t0
                seen = net.prune_log["images_seen"]
                for m, steps in (("tp_subset", 0), ("tp_subset_ft", b.finetune_steps),
                                 ("tp_subset_ft_long", b.finetune_steps_long)):
                    if m in methods:
                        t0 = time.perf_counter() - cost  # every variant pays for the pruning
                        built[m] = tuned(net, t, steps, t0, seen) if steps else finish(copy.deepcopy(net), t0,
                                                                                        None, seen)
            if {"tp_l1_uniform", "tp_l1_uniform_ft"} & set(methods):
                t0 = time.perf_counter()
                net = baselines.magnitude_prune(base, target, dense_macs=dense_macs)
                cost = time.perf_counter() - t0
                if "tp_l1_uniform" in methods:
                    built["tp_l1_uniform"] = finish(copy.deepcopy(net), time.perf_counter() - cost)
                if "tp_l1_uniform_ft" in methods:
                    built["tp_l1_uniform_ft"] = tuned(net, t, b.finetune_steps, time.perf_counter() - cost)
            if "random" in methods:
                t0 = time.perf_counter()
                built["random"] = finish(baselines.random_prune(base, target, dense_macs=dense_macs, seed=seed), t0)
            for m, steps in (("hypernet_ft", b.finetune_steps), ("hypernet_ft_long", b.finetune_steps_long)):
                if m in methods:  # the hypernetwork's own net for t (a cold build), then the peer's fine-tune
                    hyper = self.trained("hypernet", seed, gamma)
                    t0 = time.perf_counter()
                    fresh = PruningEngine(hyper.model, images=tx, seed=seed)
                    built[m] = tuned(fresh.subnet(t, fold_bn=False, seed=seed), t, steps, t0)
            for method in methods:
                net, build, ft, prune_seen = built[method]
                for split, (x, y) in self.splits().items():
                    row = self._row(method, seed, gamma, self._score(dense, net, t, x, y, foreign=True, split=split),
                                    target=target, split=split)
                    row["build_s"] = row["build_warm_s"] = build
                    row["train_s"] = None if ft is None else ft["wall_s"]
                    row["finetune_steps"] = 0 if ft is None else ft["steps"]
                    row["images_seen"] = prune_seen + (0 if ft is None else ft["images_seen"])
                    rows.append(row)
        return rows

    def eval_agnostic_tp(self, seed: int) -> None:
        """Torch-Pruning of the dense net for all classes at each swept mac_ratio; every subtask cuts the head."""
        from . import baselines

        step = f"eval-agnostic_tp-s{seed}"
        if self.done(step):
            return
        gamma = self.cfg.run.gamma
        dense = self.trained("dense", seed, gamma)
        tx = self.training()[0]
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
            for split, (x, y) in self.splits().items():
                rows += self._rows_fixed_body(dense, net.eval(), self.subtasks(dense.model), x, y, "agnostic_tp",
                                              seed, gamma, foreign=True, target=ratio, split=split)
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
               and r["phrasing"] == "canonical" and r["split"] == "test"][:n]
        tx, ty = self.training()
        rows = []
        for i, r in enumerate(ref, 1):
            t = tuple(r["indices"])
            self.log(f"  {step}: [{i}/{len(ref)}] training {r['classes'].replace('|', ',')} from scratch at MAC "
                     f"ratio {r['mac_ratio']:.3f}")
            t0 = time.perf_counter()
            net, ft = train_scratch(dense.model.backbone.arch, t, r["mac_ratio"], tx, ty,
                                    epochs=self.cfg.baselines.scratch_epochs, seed=seed,
                                    dense_macs=plain_cost(dense, None)["dense_macs"], base=self.base,
                                    input_shape=tuple(dense.model.info.input_shape))
            wall = time.perf_counter() - t0
            for split, (x, y) in self.splits().items():
                row = self._row("scratch", seed, gamma, self._score(dense, net, t, x, y, foreign=True, split=split),
                                target=r["mac_ratio"], split=split)
                row["train_s"] = wall
                row["finetune_steps"] = ft["steps"]
                row["images_seen"] = ft["images_seen"]
                rows.append(row)
        self.save_step(step, rows)

    # ------------------------------------------------------------ rows
    @staticmethod
    def _row(method: str, seed: int, gamma: float, r: dict, phrasing: str = "canonical",
             target: Optional[float] = None, split: str = "test") -> dict:
        """One results.csv row: raw figures only. `backbone_*` are the method's own backbone without masks (for
        the per-subset baselines: the dense net); gaps are computed by the report, against the dense method."""
        return {"method": method, "seed": seed, "gamma": gamma, "split": split, "classes": "|".join(r["classes"]),
                "indices": list(r["indices"]), "size": r["size"], "seen": r["seen"], "acc": r["acc"],
                "backbone_acc": r["dense_acc"], "map": r["map"], "backbone_map": r["dense_map"],
                "mac_ratio": r["mac_ratio"], "param_ratio": r["param_ratio"], "fp_rate": r.get("fp_rate"),
                "backbone_fp_rate": r.get("dense_fp_rate"), "target_mac_ratio": target, "phrasing": phrasing,
                "build_s": None, "build_warm_s": None, "train_s": None, "finetune_steps": None,
                "images_seen": None, "latency_ratio": None, "widths": r.get("widths")}

    # ------------------------------------------------------------ the whole run
    def run(self, progress: bool = True, seed: Optional[int] = None) -> dict:
        """Every step not yet done, then the reports; returns {"csv", "table", "plots"} paths.

        With `seed`, only that seed's steps run (the first seed's also carry the scratch nets and the gamma
        sweep) and no report is written: processes that each run one seed can share the run folder, since every
        step writes its own files. A last run without `seed` then writes the reports."""
        from tqdm import tqdm

        if seed is not None and seed not in self.cfg.run.seeds:
            raise ConfigError(f"seed {seed} is not one of run.seeds {self.cfg.run.seeds} in the ablation config")
        steps = [(name, fn) for name, s, fn in self.plan() if seed is None or s == seed]
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        bar = tqdm(steps, desc="ablation", disable=not progress)
        for name, fn in bar:
            bar.set_postfix_str(name)
            fn()
            self.log(f"done: {name}")
        if seed is not None:
            return {"seed": seed, "steps": len(steps)}
        from .report import write_reports

        return write_reports(self.out, self.all_rows(), self.extras())

    def plan(self) -> list[tuple[str, int, Callable[[], None]]]:
        """The steps in order, each as (name, seed, run): every step of the first seed (scratch nets included)
        before the next seed's, the gamma sweep (first seed) last."""
        c = self.cfg.run
        plan: list[tuple[str, int, Callable[[], None]]] = []
        for seed in c.seeds:
            def wanted(m: str) -> bool:
                return m in c.methods and (seed == c.seeds[0] or m not in c.first_seed_only)

            for m in JOINT:
                if wanted(m):
                    plan.append((f"{m} seed {seed}", seed, lambda m=m, seed=seed: self.eval_joint(m, seed, c.gamma)))
            if wanted("agnostic_hypernet"):
                plan.append((f"agnostic_hypernet seed {seed}", seed,
                             lambda seed=seed: self.eval_agnostic_hypernet(seed)))
            plan.append((f"per-subset pruning seed {seed}", seed, lambda seed=seed: self.eval_per_subset(seed)))
            if wanted("agnostic_tp"):
                plan.append((f"agnostic_tp seed {seed}", seed, lambda seed=seed: self.eval_agnostic_tp(seed)))
        first = c.seeds[0]
        if "scratch" in c.methods:
            last = max(i for i, (_, s, _) in enumerate(plan) if s == first)
            plan.insert(last + 1, ("scratch", first, lambda: self.eval_scratch(first)))
        for g in c.gammas:
            for m in ("hypernet", "pertask"):
                if m in c.methods:
                    plan.append((f"{m} gamma {g:g}", first, lambda m=m, g=g: self.eval_joint(m, first, g)))
            if "hypernet" in c.methods and self.cfg.baselines.sweep_methods:
                plan.append((f"per-subset pruning gamma {g:g}", first,
                             lambda g=g: self.eval_per_subset(first, g, self.cfg.baselines.sweep_methods)))
        return plan

    def all_rows(self) -> list[dict]:
        out = []
        for f in sorted((self.out / "steps").glob("*.json")):
            out += read_json(f)["rows"]
        return out

    def extras(self) -> dict:
        return {f.stem: {k: v for k, v in read_json(f).items() if k != "rows"}
                for f in sorted((self.out / "steps").glob("*.json"))}


def extension_of(before: dict, now: dict, out: Path) -> None:
    """Refuse a config that changes a run already in `out`; one that only adds seeds or methods (or changes which
    methods run on the first seed only) may go on: the steps already written stay, the new ones run. Both are `dataclasses.asdict` of an AblationConfig."""
    grown = ("seeds", "methods")
    why = [f"run.{k} drops {sorted(set(before['run'][k]) - set(now['run'][k]), key=str)}" for k in grown
           if set(before["run"][k]) - set(now["run"][k])]
    if now["run"]["seeds"][0] != before["run"]["seeds"][0]:
        why.append(f"its first seed changes from {before['run']['seeds'][0]} to {now['run']['seeds'][0]}")
    free = (*grown, "first_seed_only")  # which methods skip the later seeds: it changes no row already written
    if ({**before, "run": {k: v for k, v in before["run"].items() if k not in free}}
            != {**now, "run": {k: v for k, v in now["run"].items() if k not in free}}):
        why.append("settings other than run.seeds, run.methods and run.first_seed_only differ")
    if why:
        raise ConfigError(f"{out} holds an ablation run with another config ({'; '.join(why)}); a run may only "
                          "gain seeds or methods; use another --out folder")


def plain_cost(engine: PruningEngine, net: Optional[nn.Module]) -> dict:
    """MACs / params of any plain net (one pruned by another library too), counted on the net itself, beside the
    engine's dense net; net=None gives the dense net's own counts."""
    from ..prune.metrics import count_macs, count_params

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
    from ..prune.metrics import subnet_cost

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
                  dense_macs: int, base: Config, input_shape: tuple[int, ...]) -> tuple[nn.Module, dict]:
    """(net, log): a plain net of uniformly scaled widths at the target MACs, trained from scratch with the
    hypernetwork's objective (baselines.subset_loss: BCE over its classes, every training image, other classes'
    as negatives) for `epochs` passes over the training images, with the base config's optimizer settings,
    warm-up and augmentation."""
    from .baselines import subset_loss
    from ..training.optim import sgd_steps
    from ..nn.subnet import build_plain

    widths = scratch_widths(arch, target_mac_ratio, len(classes), dense_macs, input_shape)
    torch.manual_seed(seed)
    cls = sorted(classes)
    net = build_plain(dict(arch, site_widths=widths, num_classes=len(cls)), [str(c) for c in cls])
    net.input_shape = list(input_shape)
    t, d = base.train, base.data
    per_epoch = max(1, -(-len(images) // t.batch_size))
    log = sgd_steps(net, subset_loss(net, images, labels, cls, base.loss.beta, Augmentation.of(d)),
                    len(images), epochs * per_epoch, t.lr, t.batch_size, seed, momentum=t.momentum,
                    weight_decay=t.weight_decay, warmup=per_epoch // 2)
    net.site_widths_kept = widths
    return net.eval(), log


def latency_ratio(engine: PruningEngine, net: nn.Module, batch: int = 256, repeats: int = 10) -> float:
    """Pruned / dense latency of one batch forward (both BN-folded plain nets), the median of per-round ratios of
    settled calls (`bench.time_turns`)."""
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
                 log: Callable[[str], None] = print, progress: bool = True, seed: Optional[int] = None,
                 threads: Optional[int] = None) -> dict:
    """Run (or resume) an ablation; `quick` uses configs/ablation_tiny.toml instead of `config`; `seed` runs one
    seed's steps only (see `Ablation.run`); `threads` sets torch's threads for every step."""
    path = find_config("ablation_tiny" if quick else config, "ablation config")  # a path, or a shipped name
    root = path.resolve().parent.parent  # the base configs it names are relative to the folder above configs/
    cfg = load_ablation_config(path)
    ab = Ablation(cfg, out, log=log, root=root, threads=threads)
    ab.prepare(force=force)
    return ab.run(progress=progress, seed=seed)


__all__ = ["AblationConfig", "Ablation", "load_ablation_config", "run_ablation", "monotonicity", "PER_SUBSET"]
