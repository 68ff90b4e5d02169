"""Joint training of backbone and mask generator, with atomic checkpoints and exact resume."""
from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..nn.checkpoint import CHECKPOINT_KIND
from ..config import Config, ConfigError
from ..info import few_names
from ..data.datasets import Augmentation, split_train_val, to_float
from ..language.descriptions import describe
from .distributed import Context, DistributedError, is_peer_failure, setup, shard, stream_seed
from ..prune.budget import MacModel
from ..prune.engine import PruningEngine
from .evaluate import evaluate
from ..nn.generators import mean_utility
from ..io import (ArtifactError, OutputExistsError, check_output_dir, is_hypersan_dir, load_tensors, read_json,
                  writer_lock)
from ..nn.losses import (agreement, budget_loss, larger_budgets, monotone_hinge, sample_budgets, sparsity_weights,
                         subtask_weighted_bce)
from ..nn.graph import GraphError
from ..nn.model import SubtaskAdaptiveNet
from .optim import descend, lr_factor
from ..data.subtasks import SubtaskSampler, microbatch_sizes, sample_combinations, sample_grouped

# [train] settings that change how a run executes, not what it computes: a resumed run may change them
EXECUTION_KEYS = ("progress", "threads", "device", "dist_timeout")
# config keys added after runs were saved, with the value that describes those runs (a resume compares configs)
ADDED_KEYS = {"data": {"val_split": "sample", "val_fraction": 0.1, "image_size": 0, "mean": [], "std": [],
                       "crop_scale": 0.0},
              "model": {"weights": "", "scaling": None, "new_head": False},
              "train": {"bf16": False, "dist_timeout": 1800.0, "init_from": "", "sandwich": False,
                        "min_steps": 0},
              "loss": {"subset_share": 0.0, "sparsity_price": "uniform", "distill_over": "all",
                       "size_power": 0.0},
              "subtasks": {"sampling": "own", "sets_per_batch": 0, "size_tail": 0.0}}


def _init_backbone(model: SubtaskAdaptiveNet, path: str) -> None:
    """Copy the backbone weights (and BN statistics) of the checkpoint at path into model's backbone; the
    generator keeps its fresh initialization. The two backbones must be the same network over the same classes."""
    try:
        source = SubtaskAdaptiveNet.from_pretrained(path)
    except (ArtifactError, OSError, ValueError) as e:
        raise ConfigError(f"train.init_from: cannot load a checkpoint from {path!r}: {e}") from e
    if list(source.classes) != list(model.classes):
        raise ConfigError(f"train.init_from: {path} was trained on other classes ({len(source.classes)} against "
                          f"{len(model.classes)} here, or in another order); initialize from a run on this data set")
    theirs, ours = source.backbone.state_dict(), model.backbone.state_dict()
    wrong = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if wrong or len(theirs) != len(ours):
        raise ConfigError(f"train.init_from: the backbone of {path} is another network than [model] describes here "
                          f"({len(wrong)} tensor(s) missing or of another shape, e.g. {wrong[:3]}); use a checkpoint "
                          "trained with the same [model] settings")
    model.backbone.load_state_dict({k: v.to(ours[k].device) for k, v in theirs.items()})


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or a torch file read with weights_only=True (a state_dict, or a
    dict holding one under "state_dict" or "model"); DataParallel's "module." prefixes are dropped."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model.weights: no file {str(p)!r}; give the path of your trained weights (.safetensors, "
                          "or a state_dict saved with torch.save)")
    if p.suffix == ".safetensors":
        sd = load_tensors(p)
    else:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling refused or a corrupt file: one clear line
            raise ConfigError(f"model.weights: {p} cannot be read as a state_dict with weights_only=True ({e}); "
                              "save the weights with torch.save(net.state_dict(), path) or as .safetensors") from None
        for key in ("state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise ConfigError(f"model.weights: {p} holds no state_dict (a dict of names to tensors)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_user_weights(net: nn.Module, path: str, new_head: Optional[str] = None) -> list[str]:
    """Load the user's trained weights into their network (the factory's, built for this data set's classes),
    naming the first missing, unexpected or mis-shaped tensor when they do not fit. `new_head`: the name of the
    head module, whose tensors are left as the factory built them and not read from the file (weights trained on
    other classes: model.new_head); the names left are returned."""
    sd = read_state_dict(path)
    ours = net.state_dict()
    fresh = [] if new_head is None else [k for k in ours if k.startswith(new_head + ".")]
    if fresh:
        sd = {k: v for k, v in sd.items() if not k.startswith(new_head + ".")}
        ours = {k: v for k, v in ours.items() if k not in fresh}
    missing = [k for k in ours if k not in sd]
    unexpected = [k for k in sd if k not in ours]
    shapes = [k for k in ours if k in sd and sd[k].shape != ours[k].shape]
    if shapes:
        k = shapes[0]
        fix = ("build it with the same kwargs as the trained one, and a head of as many classes as the data set has "
               "(weights trained on other classes: model.new_head = true starts the head afresh)")
        raise ConfigError(f"model.weights: {k} is {tuple(sd[k].shape)} in {path} but {tuple(ours[k].shape)} in the "
                          f"network the factory builds for {getattr(net, 'num_classes', None) or 'these'} classes"
                          f"{f' ({len(shapes)} such tensors)' if len(shapes) > 1 else ''}; {fix}")
    if missing or unexpected:
        what = (f"{len(missing)} tensor(s) of the network missing from the file, first {missing[0]!r}" if missing
                else f"{len(unexpected)} tensor(s) in the file the network does not have, first {unexpected[0]!r}")
        raise ConfigError(f"model.weights: {path} does not fit the network the factory builds: {what}; save "
                          "net.state_dict() of the same architecture")
    net.load_state_dict({k: v.to(ours[k].dtype) for k, v in sd.items()}, strict=not fresh)
    return fresh


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)


def make_optimizers(model: SubtaskAdaptiveNet, cfg: Config) -> list[torch.optim.Optimizer]:
    """One optimizer for the backbone (SGD or AdamW) and an Adam for the generator."""
    t = cfg.train
    bb = list(model.backbone.parameters())
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(bb, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True)
    else:
        opt = torch.optim.AdamW(bb, lr=t.lr, weight_decay=t.weight_decay)
    return [opt, torch.optim.Adam(model.generator.parameters(), lr=t.generator_lr)]


def _opt_state(opts: list[torch.optim.Optimizer]) -> tuple[dict, dict]:
    """Optimizer states split into tensors (safetensors) and plain data (JSON)."""
    tensors, plain = {}, []
    for j, o in enumerate(opts):
        sd = o.state_dict()
        st = {}
        for pid, entry in sd["state"].items():
            st[str(pid)] = {}
            for k, v in entry.items():
                if torch.is_tensor(v):
                    tensors[f"{j}.{pid}.{k}"] = v
                else:
                    st[str(pid)][k] = v
        plain.append({"param_groups": sd["param_groups"], "state": st})
    return tensors, {"optimizers": plain}


def _load_opt_state(opts: list[torch.optim.Optimizer], tensors: dict, plain: dict) -> None:
    for j, o in enumerate(opts):
        entry = plain["optimizers"][j]
        state: dict = {int(pid): dict(v) for pid, v in entry["state"].items()}
        for key, v in tensors.items():
            oj, pid, k = key.split(".", 2)
            if int(oj) == j:
                state.setdefault(int(pid), {})[k] = v
        o.load_state_dict({"state": state, "param_groups": entry["param_groups"]})


def _batches(n: int, bs: int) -> int:
    return (n + bs - 1) // bs


def planned_epochs(epochs: int, min_steps: int, steps: int) -> int:
    """The epochs a run trains: `epochs`, or more where `steps` an epoch would take fewer than `min_steps` steps in
    all. Epoch-based defaults under-train a small folder: with configs/folder.toml's 30 epochs, 300 images make
    150 steps, and the dense net reached 49.6% of 10 Fashion-MNIST classes' validation images, against 79.3% after
    1,000 steps (docs/RESULTS.md, *Small folders train for a number of steps*)."""
    return max(epochs, -(-min_steps // max(1, steps)))


def config_changes(saved: dict, new: dict) -> dict[str, list]:
    """{"section.key": [saved, new]} for every value that differs between two config dicts."""
    out = {}
    for section in sorted(set(saved) | set(new)):
        a, b = saved.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out[f"{section}.{key}"] = [a.get(key), b.get(key)]
    return out


def numerics(device: torch.device) -> dict:
    """What decides a run's floating-point bits besides its config and seed: torch, the device, the CPU and the
    kernels chosen for it. A run repeats bit for bit where these match; on another CPU (MKL picks its matrix
    kernels by instruction set: MKL_CBWR pins them) the weights differ in their last bits, and training drifts."""
    import os
    import platform

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"torch": torch.__version__, "device": str(device), "cpu": cpu or None,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_cbwr": os.environ.get("MKL_CBWR"), "threads": torch.get_num_threads()}


def split_training_data(cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, object]:
    """(train_x, train_y, val_x, val_y, info): the training split minus the seeded, stratified validation split
    the config names (data.val_size of them; datasets.split_train_val). The test split is not read: it gives
    final figures only."""
    return split_train_val(cfg.data)


def _autocast(device: torch.device, amp: bool):
    """bf16 autocast on `device` when amp (training on CUDA with train.bf16); a no-op otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


def dense_loss(model: SubtaskAdaptiveNet, x: torch.Tensor, y: torch.Tensor, num_classes: int,
               amp: bool = False) -> torch.Tensor:
    """Loss of a dense batch: the class-summed BCE of the unmasked backbone, averaged over samples.
    amp: the backbone's forward under bf16 autocast (the loss in float32)."""
    with _autocast(x.device, amp):
        logits = model.backbone(x)
    logits = logits.float()
    target = F.one_hot(y, num_classes).float()
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(y)


def masked_loss(model: SubtaskAdaptiveNet, x: torch.Tensor, y: torch.Tensor, select: torch.Tensor,
                texts: list[str] | None, cfg: Config, basic_to_class: torch.Tensor, amp: bool = False,
                budgets: torch.Tensor | None = None, macs: MacModel | None = None,
                teacher: torch.Tensor | None = None, prices: dict[str, float] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """(loss, masks, raw, per-sample mean utility) of a batch run with each sample's sampled subtask (B, K).
    amp: the backbone's forward under bf16 autocast; masks (the keep rule's thresholds) stay in float32.
    A budget-conditioned model also takes each sample's budget (B,), and the loss adds the budget term on the
    subnet's MAC ratio, counted by `macs` from the straight-through masks (exact forward, surrogate gradient).
    Budgets (B, 2), a budget and a larger one per sample (loss.budget_monotone or loss.budget_agree > 0): every
    image runs at both, each run is a sample of the loss, loss.budget_monotone weighs the hinge on an image's
    loss rising from the smaller budget to the larger (losses.monotone_hinge) and loss.budget_agree the
    disagreement of its two predictions (losses.agreement); masks, raw and utilities are then (2B, ...), the
    smaller budgets first.
    With loss.distill > 0 the unmasked net is run on the same images first, without gradients (in-place
    distillation, as slimmable and once-for-all networks train their subnets), and its outputs join the targets
    (loss.distill_over: as sigmoid targets on every output, or as a softmax over the subtask's classes); a
    `teacher` (B, C) given by the caller (the sandwich rule's body pass) is used instead.
    `prices`: per-site channel prices of the sparsity term (loss.sparsity_price = "macs"); None prices alike.
    The subtask's outputs get loss.subset_share of each sample's BCE (0: the beta weighting), and each sample's
    BCE is scaled by (|T| / |C|) ** loss.size_power."""
    if cfg.loss.distill > 0 and teacher is None:
        with torch.no_grad(), _autocast(x.device, amp):
            teacher = model.backbone(x).float()
    pairs = budgets is not None and budgets.dim() == 2
    if pairs:
        n = len(y)
        x, y, select = torch.cat([x, x]), torch.cat([y, y]), torch.cat([select, select])
        texts = None if texts is None else texts + texts
        teacher = None if teacher is None else torch.cat([teacher, teacher])
        budgets = torch.cat([budgets[:, 0], budgets[:, 1]])
    masks, raw = model.generate(select, texts, budgets)
    with _autocast(x.device, amp):
        logits = model.backbone(x, masks)
    logits = logits.float()
    # beta weighs the classes of the sampled subtask (basic_to_class: (K, C)), whatever the sample's label
    in_task = (select.to(x.device).float() @ basic_to_class) > 0
    per_sample = mean_utility(raw, model.sites, prices)  # (B,); (2B,) with budget pairs
    gammas = sparsity_weights(in_task.sum(dim=1), len(model.classes), cfg.loss.gamma, cfg.loss.gamma_size)
    task = subtask_weighted_bce(logits, y, in_task, cfg.loss.beta, teacher, cfg.loss.distill, reduce=False,
                                share=cfg.loss.subset_share, distill_over=cfg.loss.distill_over,
                                size_power=cfg.loss.size_power)
    loss = task.mean() + (gammas * per_sample).mean()
    if budgets is not None:
        ratio = macs.ratio(masks, in_task.sum(dim=1))
        loss = loss + budget_loss(ratio, budgets.to(ratio.device), cfg.loss.budget_over, cfg.loss.budget_under).mean()
    if pairs:
        if cfg.loss.budget_monotone > 0:
            loss = loss + cfg.loss.budget_monotone * monotone_hinge(task[:n], task[n:]).mean()
        if cfg.loss.budget_agree > 0:
            loss = loss + cfg.loss.budget_agree * agreement(logits[:n], logits[n:], in_task[:n]).mean()
    return loss, masks, raw, per_sample


class _TrainStep(nn.Module):
    """The forward and loss of one shard's batch as a module, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: SubtaskAdaptiveNet, cfg: Config, basic_to_class: torch.Tensor, amp: bool):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.basic_to_class = basic_to_class
        self.amp = amp
        # the MAC model: the budget term, the sparsity prices and the progress's kept MAC share (a custom network
        # whose MACs are no polynomial of its groups' widths has none: it takes no budget and no prices, and its
        # progress shows kept channels)
        try:
            self.macs: MacModel | None = MacModel(model.backbone, model.info.input_shape)
        except GraphError as e:
            if cfg.generator.budget or cfg.loss.sparsity_price == "macs":
                raise ConfigError(f"generator.budget and loss.sparsity_price = 'macs' need the network's MAC model: "
                                  f"{e}") from None
            self.macs = None
        # what a channel of each utility site costs: the sparsity term's prices, and how the sandwich rule finds a
        # batch's cheapest class set
        self.prices = self.macs.prices() if cfg.loss.sparsity_price == "macs" else None

    def forward(self, x: torch.Tensor, y: torch.Tensor, select: torch.Tensor, texts: list[str] | None,
                budgets: torch.Tensor | None, dense: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss, [mean utility, kept fraction of channels, kept MAC share] or None for a dense batch; the MAC
        share is the channel fraction where a custom network has no MAC model).

        A masked batch runs as subtasks.sets_per_batch micro-batches (one class set each, so that BN normalizes
        one subnet at a time, as calibration does), or whole. With train.sandwich the unmasked body and the
        batch's cheapest class set (by priced kept channels) also train on the same images, and the body's
        outputs are the teacher of loss.distill."""
        model, cfg = self.model, self.cfg
        if dense:
            return dense_loss(model, x, y, len(model.classes), amp=self.amp), None
        teacher, loss = None, 0.0
        if cfg.train.sandwich:
            with _autocast(x.device, self.amp):
                body = model.backbone(x).float()
            target = F.one_hot(y, len(model.classes)).float()
            loss = F.binary_cross_entropy_with_logits(body, target, reduction="sum") / len(y)
            teacher = body.detach()
        sizes = microbatch_sizes(len(y), cfg.subtasks.sets_per_batch) if cfg.subtasks.sets_per_batch else [len(y)]
        parts, start = [], 0
        for n in sizes:
            c = slice(start, start + n)
            start += n
            parts.append(masked_loss(model, x[c], y[c], select[c], None if texts is None else texts[c], cfg,
                                     self.basic_to_class, amp=self.amp, budgets=None if budgets is None else budgets[c],
                                     macs=self.macs, teacher=None if teacher is None else teacher[c],
                                     prices=self.prices))
        # each micro-batch's loss is a mean over its images: weigh it by their count
        loss = loss + sum(p[0] * (n / len(y)) for p, n in zip(parts, sizes))
        masks = {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
        per_sample = torch.cat([p[3] for p in parts])
        if cfg.train.sandwich:
            with torch.no_grad():
                util = [s_ for s_ in model.sites if s_.kind == "utility"]
                cost = sum(masks[s_.name].sum(dim=1) * (1.0 if self.prices is None else self.prices[s_.name])
                           for s_ in util)
                j = int(cost.argmin())
            one = select[j:j + 1].expand(len(y), -1)
            loss = loss + masked_loss(model, x, y, one, None if texts is None else [texts[j]] * len(y), cfg,
                                      self.basic_to_class, amp=self.amp, macs=self.macs, teacher=teacher,
                                      prices=self.prices)[0]
        with torch.no_grad():
            kept = sum(masks[x_.name].sum() for x_ in model.sites if x_.kind == "utility")
            kept = kept / sum(x_.size for x_ in model.sites if x_.kind == "utility") / len(per_sample)
            share = kept
            if self.macs is not None:
                sizes = (select.to(self.basic_to_class.dtype) @ self.basic_to_class > 0).sum(dim=1)
                if len(per_sample) != len(sizes):  # budget pairs: every image ran twice
                    sizes = torch.cat([sizes, sizes])
                share = self.macs.ratio(masks, sizes).mean()
            return loss, torch.stack([per_sample.mean(), kept, share.to(kept.dtype)])


def train(cfg: Config, out: str | Path, resume: bool = False, log: Callable[[str], None] = print,
          stop_after_epoch: int | None = None, force: bool = False, allow_config_change: bool = False,
          provenance: dict | None = None, emulate_ranks: int = 0) -> SubtaskAdaptiveNet:
    """Train a SubtaskAdaptiveNet as the config says; checkpoint to `out` after every epoch.

    With resume=True, training continues from the checkpoint in `out` and gives the same weights as an
    uninterrupted run (every epoch reseeds its own generator). A resumed run refuses a config that differs
    from the saved one, except in [train] execution settings (progress, threads, device, dist_timeout); with
    allow_config_change=True other [train] values (and the number of processes) may change, and the change is
    recorded in the run's meta.json. Without resume, an existing run in `out` is replaced only with force=True,
    and a folder that is not a hypersan checkpoint is never replaced. stop_after_epoch stops early (for tests).

    Started by torchrun with more than one process (or inside a process group the caller initialized), the
    run is data-parallel (DistributedDataParallel; see hypersan.training.distributed and docs/SCALING.md):
    train.batch_size is the global batch, split evenly among the processes; rank 0 alone logs, evaluates and
    writes checkpoints. emulate_ranks=N (N >= 2, one process, no process group) trains exactly as N such
    processes would, one after the other within each step: the single-process reference of a distributed run.
    """
    out = Path(out)
    t = cfg.train
    if isinstance(emulate_ranks, bool) or not isinstance(emulate_ranks, int) or emulate_ranks < 0 or emulate_ranks == 1:
        raise ValueError(f"emulate_ranks = {emulate_ranks!r}; give 0 (an ordinary run) or a number of processes >= 2")
    if resume:
        if not (out / "train_state.json").exists():
            raise ArtifactError(f"--resume: no training state in {out}; start without --resume")
    elif is_hypersan_dir(out, CHECKPOINT_KIND) and not force:
        done = ""
        if (out / "train_state.json").exists():
            st = read_json(out / "train_state.json")
            of = st.get("epochs", read_json(out / "config.json").get("train", {}).get("epochs"))
            done = f" (epoch {st.get('epoch')} of {of})"
        raise OutputExistsError(f"{out} already holds a training run{done}; continue it with --resume, write to "
                                "another --out folder, or pass --force to replace it")
    else:
        check_output_dir(out, CHECKPOINT_KIND, force=force)  # fail now, not after the first epoch (reads only)
    ctx = setup(t.device, t.dist_timeout)
    if ctx is not None and emulate_ranks:
        raise ValueError("emulate_ranks emulates a distributed run in one process; it cannot run inside a process "
                         f"group of {ctx.world_size}")
    finished = False
    try:
        # one writer per run folder: rank 0 (or the only process) holds the lock while it trains
        with writer_lock(out, "training into") if ctx is None or ctx.rank == 0 else contextlib.nullcontext():
            model = _train(cfg, out, resume, log, stop_after_epoch, allow_config_change, provenance, ctx,
                           emulate_ranks)
        finished = True
        return model
    except BaseException as e:
        if ctx is None or isinstance(e, DistributedError):
            raise
        if is_peer_failure(e):
            raise ctx.peer_failure(e) from e
        ctx.report_failure(e)  # for the other ranks' messages
        raise
    finally:
        if ctx is not None:
            ctx.close(synchronize=finished)


def _train(cfg: Config, out: Path, resume: bool, log: Callable[[str], None], stop_after_epoch: int | None,
           allow_config_change: bool, provenance: dict | None, ctx: Context | None,
           emulate_ranks: int) -> SubtaskAdaptiveNet:
    t, s = cfg.train, cfg.subtasks
    augmentation = Augmentation.of(cfg.data)
    world = ctx.world_size if ctx is not None else max(1, emulate_ranks)
    sharded = world > 1  # otherwise the one-process path, unchanged: its runs stay bit-identical
    if sharded and t.batch_size % world:
        raise ConfigError(f"train.batch_size = {t.batch_size} is the global batch and must split evenly among the "
                          f"{world} processes; use a multiple of {world} (e.g. {t.batch_size // world * world or world})")
    local_bs = t.batch_size // world
    device = ctx.device if ctx is not None else resolve_device(t.device)
    run_numerics = numerics(device)  # the same for every epoch of this process
    if t.bf16 and device.type != "cuda":
        raise ConfigError(f"train.bf16 = true needs a CUDA device, but this run trains on {device}; set "
                          "train.bf16 = false, or train on device 'cuda'")
    main = ctx is None or ctx.is_main
    if not main:
        log = lambda m: None  # noqa: E731 - rank 0 alone logs
    if t.threads:
        torch.set_num_threads(t.threads)
    train_x, train_y, val_x, val_y, info = split_training_data(cfg)
    lacking = sorted(set(train_y.tolist()) - set(val_y.tolist())) if len(val_y) else []
    if lacking:  # a folder's val/ without some class: evaluated on the others, and said so
        log(f"the validation split has no images of {len(lacking)} class(es) "
            f"({few_names(info.classes[c] for c in lacking)}): the "
            "periodic evaluation scores class sets of the other classes")

    torch.manual_seed(t.seed)
    model = SubtaskAdaptiveNet(cfg, info).to(device)
    opts = make_optimizers(model, cfg)
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    start_epoch, history, changes = 0, [], []
    if t.init_from and not resume:  # a resumed run's weights come from its own checkpoint
        _init_backbone(model, t.init_from)
        log(f"backbone initialized from {t.init_from}")
    if cfg.model.weights and not resume:
        head = model.backbone.head_name if cfg.model.new_head else None
        fresh = load_user_weights(model.backbone.net, cfg.model.weights, head)
        log(f"network weights loaded from {cfg.model.weights}"
            + (f"; the head ({', '.join(fresh)}) starts afresh for {len(model.classes)} classes" if fresh else ""))
    if resume:
        saved_cfg = read_json(out / "config.json")
        for section, added in ADDED_KEYS.items():  # a run saved before these keys existed ran with these values
            for key, value in added.items():
                if (section, key) == ("model", "scaling"):  # custom networks had none; built-ins always have them
                    value = saved_cfg.get("model", {}).get("arch") != "custom"
                saved_cfg.setdefault(section, {}).setdefault(key, value)
        diff = config_changes(saved_cfg, cfg.to_dict())
        outside = [k for k in diff if not k.startswith("train.")]
        inside = [k for k in diff if k.startswith("train.") and k.split(".", 1)[1] not in EXECUTION_KEYS]
        if outside:
            raise ConfigError(f"--resume: the config differs from the one the run in {out} started with, in "
                              f"{', '.join(outside)}; a resumed run must train the same model")
        if inside and not allow_config_change:
            detail = "; ".join(f"{k}: {diff[k][0]!r} -> {diff[k][1]!r}" for k in inside)
            raise ConfigError(f"--resume: [train] settings differ from the run in {out} ({detail}); the result would "
                              "not match an uninterrupted run. Pass --allow-config-change to change them "
                              "deliberately (the change is recorded in meta.json)")
        loaded = SubtaskAdaptiveNet.from_pretrained(out, map_location=device)
        model.load_state_dict(loaded.state_dict())
        state = read_json(out / "train_state.json")
        saved_world = state.get("world_size", 1)
        if saved_world != world and not allow_config_change:
            raise ConfigError(f"--resume: the run in {out} trained on {saved_world} process(es), this one runs on "
                              f"{world}; data shards and random streams depend on the number of processes, so the "
                              f"result would not match an uninterrupted run. Resume it with {saved_world} "
                              "process(es), or pass --allow-config-change to continue anyway (recorded in meta.json)")
        _load_opt_state(opts, load_tensors(out / "optimizer.safetensors"), state)
        start_epoch, history = state["epoch"], state["history"]
        changes = list(state.get("config_changes", []))
        changed = {k: diff[k] for k in inside}
        if saved_world != world:
            changed["world_size"] = [saved_world, world]
        if changed:
            changes.append({"at_epoch": start_epoch, "changes": changed})
        log(f"resuming {out} after epoch {start_epoch}")

    sampler = SubtaskSampler(len(model.basic), model.class_to_basic, s.size_weights, s.include_own, model.holdout,
                             s.sampling, s.size_tail)
    basic_to_class = torch.zeros(len(model.basic), len(info.classes))
    for k, b in enumerate(model.basic):
        basic_to_class[k, list(b)] = 1.0
    basic_to_class = basic_to_class.to(device)
    step_module = _TrainStep(model, cfg, basic_to_class, amp=t.bf16)
    ddp = None
    if ctx is not None:
        # find_unused_parameters: a dense batch (drawn alike on every rank) leaves the generator out of the graph.
        # BatchNorm normalizes with each rank's own batch statistics (torch's SyncBatchNorm runs on GPUs only);
        # rank 0's running statistics are broadcast at every forward, and recalibrated after training anyway.
        ddp = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
    ranks_here = [] if not sharded else [ctx.rank] if ctx is not None else list(range(world))

    def to_device(v: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda":  # page-locked, so the copy overlaps the host's work
            return v.pin_memory().to(device, non_blocking=True)
        return v.to(device)

    def draw(idx: torch.Tensor, gen: torch.Generator, x: torch.Tensor, dense: bool) -> tuple:
        """(x, y, select, texts, budgets) of one shard's batch: its subtasks (and descriptions, and budgets for
        a budget-conditioned model) drawn from gen."""
        if s.sets_per_batch and not dense:
            select = sample_grouped(sampler, len(idx), s.sets_per_batch, gen)
        else:
            select = sampler.sample(train_y[idx], gen)
        texts = None if dense or model.encoder is None else _descriptions(model, select, gen, cfg)
        budgets = None
        if model.budgeted and not dense:
            budgets = sample_budgets(len(idx), gen, cfg.generator.budget_min, cfg.generator.budget_free_share)
            if cfg.loss.budget_monotone > 0 or cfg.loss.budget_agree > 0:  # a larger partner per budget
                budgets = torch.stack([budgets, larger_budgets(budgets, gen)], dim=1)
            budgets = to_device(budgets)
        return to_device(x), to_device(train_y[idx]), to_device(select), texts, budgets

    n = len(train_x)
    per_rank = -(-n // world)  # DistributedSampler pads every shard to ceil(n / world)
    steps = _batches(per_rank if sharded else n, local_bs)
    epochs = planned_epochs(t.epochs, t.min_steps, steps)
    # a run that min_steps stretches evaluates and saves as often as planned: every eval_every of the epochs asked
    # for, and a checkpoint for every epoch asked for (its short epochs saved each took 25-30 ms: 1,000 of them 16%
    # of an adapt run on 90 images); resuming from any saved epoch equals the uninterrupted run
    eval_every = max(1, round(t.eval_every * epochs / t.epochs)) if t.eval_every else 0
    save_every = max(1, epochs // t.epochs)
    if epochs > t.epochs and start_epoch == 0:
        log(f"{n} training images make {steps} step(s) an epoch: training {epochs} epochs, not {t.epochs}, to take "
            f"train.min_steps = {t.min_steps} steps (set it to 0 for exactly train.epochs)"
            + (f"; evaluating every {eval_every} epochs" if 0 < eval_every < epochs
               else "; evaluating at its end" if eval_every else ""))
    total, warmup = epochs * steps, int(t.warmup_epochs * steps)
    show = bool(t.progress and main)
    # the many short epochs of a stretched run get one bar over all the run's steps (its time left is the run's),
    # not a bar an epoch
    run_bar = (tqdm(total=(epochs - start_epoch) * steps, desc=f"epoch {start_epoch + 1}/{epochs}", disable=not show,
                    leave=False, unit="step")
               if epochs > t.epochs else None)
    macs_kept = "—"  # until a masked batch has run
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        if sharded:
            shared = torch.Generator().manual_seed(stream_seed(t.seed, epoch, "shared"))  # dense or masked
            orders = {r: torch.tensor(shard(n, world, r, t.seed, epoch)) for r in ranks_here}
            gens = {r: torch.Generator().manual_seed(stream_seed(t.seed, epoch, f"rank{r}")) for r in ranks_here}
        else:
            gen = torch.Generator().manual_seed(t.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=gen)
        model.train()
        sums = {"loss": 0.0, "mean_utility": 0.0, "kept": 0.0, "macs": 0.0, "masked_batches": 0}
        bar = run_bar if run_bar is not None else tqdm(total=steps, disable=not show, leave=False)
        bar.set_description(f"epoch {epoch + 1}/{epochs}", refresh=False)
        for i in range(steps):
            if sharded:
                dense = torch.rand((), generator=shared).item() < s.dense_share
                parts = []
                for r in ranks_here:
                    idx = orders[r][i * local_bs:(i + 1) * local_bs]
                    x = augmentation(to_float(train_x[idx]), gens[r])
                    parts.append(draw(idx, gens[r], x, dense))
            else:
                idx = perm[i * t.batch_size:(i + 1) * t.batch_size]
                x = augmentation(to_float(train_x[idx]), gen)
                dense = torch.rand((), generator=gen).item() < s.dense_share
                parts = [draw(idx, gen, x, dense)]
            f = lr_factor(epoch * steps + i, total, warmup)
            for o, lrs in zip(opts, base_lrs):
                for g, lr in zip(o.param_groups, lrs):
                    g["lr"] = lr * f
            if ddp is not None:
                loss, stats = ddp(*parts[0], dense)
                after_first = None
            else:
                # one process: each (emulated) rank's batch in turn; gradients are averaged as DDP averages them,
                # and BN keeps the running statistics of the first, as DDP keeps rank 0's
                results, after_first = [], None
                for j, part in enumerate(parts):
                    results.append(step_module(*part, dense))
                    if j == 0 and len(parts) > 1:
                        after_first = [b.detach().clone() for b in model.buffers()]
                if len(results) == 1:
                    loss, stats = results[0]
                else:
                    loss = torch.stack([r[0] for r in results]).mean()
                    stats = None if dense else torch.stack([r[1] for r in results]).mean(dim=0)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {i}; lower train.lr")
            def between(dense=dense, after_first=after_first) -> None:
                if dense:  # the generator took no part: no gradient, so Adam leaves it alone (as on one process)
                    for p in model.generator.parameters():
                        p.grad = None
                if after_first is not None:
                    with torch.no_grad():
                        for b, v in zip(model.buffers(), after_first):
                            b.copy_(v)

            descend(opts, loss, between)
            sums["loss"] += loss.item()
            if stats is not None:
                mu, kept, macs = stats.tolist()
                sums["macs"] += macs
                sums["mean_utility"] += mu
                sums["kept"] += kept
                sums["masked_batches"] += 1
            if i % 20 == 0:  # the subnets' kept share of the dense net's MACs: this epoch's, else the last known
                if sums["masked_batches"]:
                    macs_kept = f"{sums['macs'] / sums['masked_batches']:.2f}"
                bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.4f}", macs_kept=macs_kept, refresh=False)
            bar.update()
        if run_bar is None:
            bar.close()
        if ctx is not None:
            # the epoch's figures over every rank's batches; every rank takes rank 0's BN buffers
            total_sums = ctx.all_sum([sums["loss"], sums["mean_utility"], sums["kept"], sums["macs"]])
            sums["loss"], sums["mean_utility"], sums["kept"], sums["macs"] = (v / world for v in total_sums)
            ctx.broadcast_buffers(model)
        mb = sums["masked_batches"]
        # mean_utility: the mean |utility| the sparsity term pushes down (not a share of pruned channels; that is
        # 1 - kept_fraction). An epoch whose batches all ran dense has no masks to average: null, never a 0 that
        # reads as "nothing kept" (small data sets, few batches an epoch, and subtasks.dense_share make it common)
        rec = {"epoch": epoch + 1, "loss": sums["loss"] / steps,
               "mean_utility": sums["mean_utility"] / mb if mb else None,
               "kept_fraction": sums["kept"] / mb if mb else None, "kept_mac_ratio": sums["macs"] / mb if mb else None,
               "seconds": time.perf_counter() - t0}
        stopping = stop_after_epoch is not None and epoch + 1 >= stop_after_epoch
        if main:  # rank 0 alone evaluates and writes; the others wait at the barrier below
            last = epoch + 1 == epochs
            if len(val_y) and ((eval_every and (epoch + 1) % eval_every == 0) or last):
                rec.update(_quick_eval(model, cfg, val_x, val_y, train_x, epoch))  # no validation split: no figures
            history.append(rec)
            save = last or stopping or (epoch + 1) % save_every == 0
            if save or "val_dense_acc" in rec:  # a stretched run prints a line per epoch asked for; history: all
                with tqdm.external_write_mode():  # the run's bar, where one is shown, steps aside for the line
                    log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}))
            if save:
                _save_epoch(model, out, opts, epoch + 1, epochs, history, changes, world, run_numerics, provenance)
        else:
            history.append(rec)
        if ctx is not None:
            ctx.barrier()
        if stopping:
            break
    if run_bar is not None:
        run_bar.close()
    return model


def _save_epoch(model: SubtaskAdaptiveNet, out: Path, opts, epoch: int, epochs: int, history: list, changes: list,
                world: int, run_numerics: dict, provenance: Optional[dict]) -> None:
    """The checkpoint after `epoch` of `epochs`, with what --resume needs; it replaces this run's own previous
    checkpoint (checked up front to be ours, or new)."""
    tensors, plain = _opt_state(opts)
    plain.update({"epoch": epoch, "epochs": epochs, "history": history, "config_changes": changes,
                  "world_size": world})
    model.meta = {"history": history, "epoch": epoch, "config_changes": changes, "world_size": world,
                  "selection": "periodic evaluation on the validation split (the data set's own, or "
                               "data.val_fraction of the training images); the test split is not read in training",
                  "numerics": run_numerics}
    if provenance:
        model.meta["provenance"] = provenance
    model.save_pretrained(out, force=True, extra_files={"train_state.json": plain},
                          extra_tensors={"optimizer.safetensors": tensors})


def _descriptions(model: SubtaskAdaptiveNet, select: torch.Tensor, gen: torch.Generator, cfg: Config) -> list[str]:
    """One training description per row: phrasing i of cfg.generator.phrasings fixed ones per combination."""
    pick = torch.randint(0, cfg.generator.phrasings, (len(select),), generator=gen).tolist()
    out = []
    for row, i in zip(select, pick):
        classes = model.classes_of(tuple(row.nonzero().flatten().tolist()))
        rng = random.Random(f"{cfg.train.seed}:{','.join(map(str, classes))}:{i}")
        out.append(describe(classes, model.info, rng, "train"))
    return out


def _quick_eval(model: SubtaskAdaptiveNet, cfg: Config, val_x, val_y, train_x, epoch: int) -> dict:
    """Dense accuracy and a few random subtasks on the validation split (the module's statistics untouched)."""
    k = len(model.basic)
    subtasks = []
    for size in sorted({2, min(k, 5)}):
        n = max(1, cfg.train.eval_subtasks // 2)
        subtasks += [model.classes_of(b) for b in sample_combinations(k, size, n, epoch, model.holdout, seen=True)]
    present = set(val_y.tolist())
    subtasks = [t for t in subtasks if present.issuperset(t)]  # a val/ without some class: the others' sets
    engine = PruningEngine(model, images=train_x)
    r = evaluate(engine, val_x, val_y, subtasks, progress=False, seed=epoch)
    model.train()
    sub = r["subtasks"]
    if not sub:
        return {"val_dense_acc": r["dense"]["acc"]}
    return {"val_dense_acc": r["dense"]["acc"],
            "val_sub_acc": sum(x["acc"] for x in sub) / len(sub),
            "val_sub_dense_acc": sum(x["dense_acc"] for x in sub) / len(sub),
            "sub_mac_ratio": sum(x["mac_ratio"] for x in sub) / len(sub)}
