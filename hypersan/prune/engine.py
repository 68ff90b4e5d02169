"""PruningEngine: the object users talk to. It owns what the nn.Module must not: calibration data, the validated
BN-statistics cache, grounding of requests in words, surgery and export.

    engine = PruningEngine.from_pretrained("fmnist_b16")
    net = engine.subnet("sneakers and bags")          # a plain, physically smaller nn.Module
    engine.export(["Sneaker", "Bag"], "out/shoes")    # safetensors + JSON artifact

Statistics are calibrated through the physically pruned net (about a fifth of the dense MACs for a typical
subtask); for its kept channels that is the same computation as a masked forward at dense width.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import torch
from torch import Tensor, nn

from ..config import parse_round_to
from ..nn.checkpoint import CHECKPOINT_KIND, resolve_checkpoint
from ..data.datasets import Augmentation, DatasetError, split_train_val, validation_images, validation_rule
from ..deploy.export import DEFAULT_FORMATS, parse_formats, save_subnet
from ..deploy.quantize import check_weight_bits
from ..io import atomic_dir
from .metrics import count_macs, count_params, kept_widths, plain_accuracy_and_errors, subnet_cost
from ..nn.custom import CustomBackbone
from ..nn.model import SubtaskAdaptiveNet
from .stats import (STATS_FILE, BNStats, CalibSpec, StatsCache, StatsKey, get_bn_stats, images_fingerprint,
                    masks_fingerprint, recalibrate_channels_last, set_bn_stats, weights_fingerprint)
from ..data.subtasks import Subtask
from .budget import BudgetError, MacModel, enforce_budget
from ..nn.generators import budget_label
from .surgery import ROUND_MODES, expand_bn_stats, prune_backbone, round_widths

ROUND_AUTO = "auto"
RoundTo = Optional[Union[int, str]]  # a width multiple, "auto" (the CPU's vector block), or None (the default)


def vector_block() -> int:
    """Channels per vector block of this CPU's float32 convolution kernels: 16 with AVX-512, else 8 (AVX2, NEON
    and the rest). Widths in multiples of it run at the speed their MACs promise (docs/CUSTOM.md, *Faster*)."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


# A guarded request for budget b weighs the nets at these smaller budgets too (docs/BUDGETS.md, "Guarded budgets"):
# the budgets the studies score. A finer grid weighs more nets on the same validation images, so it picks by noise
# more often and costs a calibration per budget.
GUARD_GRID = (0.08, 0.12, 0.2, 0.3, 0.5)


def training_images(model: SubtaskAdaptiveNet, data_dir: str | None = None) -> tuple[Tensor, str]:
    """(uint8 images, source name) of the model's training split: the dataset's training images minus the
    validation split its config names, as the model was trained on."""
    x, _, source = training_split(model, data_dir)
    return x, source


def training_split(model: SubtaskAdaptiveNet, data_dir: str | None = None) -> tuple[Tensor, Tensor, str]:
    """(uint8 images, labels, source name) of the model's training split (see training_images)."""
    d = model.config.data
    try:
        x, y, _, _, _ = split_train_val(d, data_dir, val=False)
    except DatasetError as e:
        raise DatasetError(f"BN statistics of a subtask are recalibrated on the {d.dataset} training images, which "
                           f"could not be read: {e} -- install the dataset (or point $HYPERSAN_DATA / --data-dir at "
                           "it), or pass images= to PruningEngine") from None
    kind, held = validation_rule(d, data_dir)
    if kind == "dataset":  # the validation split is a file of its own: every training image trains
        return x, y, f"{d.dataset}:train:limit{d.train_limit}:val-dataset"
    if d.val_split == "auto" and not d.val_size:  # a share of the images: its count names the split
        return x, y, f"{d.dataset}:train:limit{d.train_limit}:valfrac{d.val_fraction:g}@{d.val_seed}"
    return x, y, f"{d.dataset}:train:limit{d.train_limit}:val{held}@{d.val_seed}"


def _cost(arch: dict, widths: dict, num_classes: int, input_shape) -> tuple[int, int]:
    """metrics.subnet_cost on the meta device: shapes only, no weights allocated or initialized (15x faster)."""
    with torch.device("meta"):
        return subnet_cost(arch, widths, num_classes, input_shape)


def labelled_sample(images: Tensor, labels: Tensor, limit: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded sample of up to `limit` images (uint8, as given, in their order) with their labels."""
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return images[idx], labels[idx]


class PruningEngine:
    """A SubtaskAdaptiveNet with its calibration data, BN-statistics cache, grounding, surgery and export."""

    def __init__(self, model: SubtaskAdaptiveNet, images: Optional[Tensor] = None, data_dir: Optional[str] = None,
                 seed: int = 0, cache: Optional[StatsCache] = None, log: Optional[Callable[[str], None]] = None,
                 validation: Optional[tuple[Tensor, Tensor]] = None, labels: Optional[Tensor] = None):
        """`images`: uint8 calibration images (default: the model's training split, read when first needed).
        `log`: called with one line per slow step (reading data, BN calibration, each file written); silent
        by default. `validation`: (uint8 images, labels) that guarded budgets pick on (default: the model's
        validation split, read when first needed). `labels`: the classes of `images`, where known (a single
        class's decision threshold is calibrated on them in evaluation)."""
        self.model = model.eval()
        self.log = log
        self.cache = cache if cache is not None else StatsCache(model.backbone)
        self.data_dir = data_dir
        self.seed = seed
        self._images = images
        if labels is not None and (images is None or labels.ndim != 1 or len(labels) != len(images)):
            raise ValueError("labels= gives the classes of images=: pass both, one label per image")
        self._labels: Optional[Tensor] = labels  # of the calibration images, where known
        self._source = None if images is None else f"images:{images_fingerprint(images)}"
        self._said_reading = False
        self._grounder = None
        self._dense_cost: Optional[tuple[int, int]] = None
        self._weights: Optional[tuple[tuple, str]] = None
        self._mac_model: Optional[MacModel] = None
        self.budget_cuts = {"requests": 0, "cut": 0, "channels": 0}  # budgeted masks, those cut to fit, channels cut
        self.guard_grid: tuple[float, ...] = GUARD_GRID  # the smaller budgets a guarded request weighs (see guard)
        self._val: Optional[tuple[Tensor, Tensor]] = None  # what a guard picks on: read when first needed
        self._val_source: Optional[str] = None
        if validation is not None:
            vx, vy = validation
            if vx.dtype != torch.uint8 or vy.ndim != 1 or len(vx) != len(vy):
                raise ValueError("validation= takes (uint8 images, labels), as many labels as images; got "
                                 f"{vx.dtype} images of shape {tuple(vx.shape)} and labels of shape {tuple(vy.shape)}")
            self._val = vx, vy
            self._val_source = f"images:{images_fingerprint(vx)}:{images_fingerprint(vy)}"
        self._guards: dict[tuple, dict] = {}  # guard decisions, by everything they depend on (oldest first)
        self.max_guards = 10_000  # decisions kept (a few hundred bytes each); the oldest goes first

    # ------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu",
                        **kwargs) -> "PruningEngine":
        """Load a checkpoint directory or shipped model by name, with its statistics cache (every tensor checked)."""
        p = resolve_checkpoint(path)
        model = SubtaskAdaptiveNet.from_pretrained(p, map_location)
        engine = cls(model, **kwargs)
        if (p / STATS_FILE).exists():
            engine.cache.load(p / STATS_FILE)
        return engine

    def save_pretrained(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write the model and its statistics cache to a checkpoint directory, atomically (see
        model.save_pretrained)."""
        if self._source is not None:  # what the cached statistics were calibrated on (see _calibration_source)
            self.model.meta["calibration_source"] = self._source
        with atomic_dir(path, CHECKPOINT_KIND, force=force) as tmp:
            self.model.write_files(tmp)
            self.cache.save(tmp / STATS_FILE)
        return Path(path)

    # ------------------------------------------------------------ requests
    def ground(self, request: str):
        """Ground a request in words to this model's classes (raises GroundingError when it cannot)."""
        if self._grounder is None:
            from ..language.grounding import Grounder
            from ..language.vocabulary import extend_vocabulary

            v = self.model.config.vocab
            self._grounder = Grounder(extend_vocabulary(self.model.info, v.synonyms, v.groups))
        return self._grounder.ground(request)

    def split_budget(self, classes, budget: Optional[float] = None) -> tuple[object, Optional[float]]:
        """(classes, budget) of a request: a request in words may state its budget ("under 10% of the compute"),
        which is taken out of the words; `budget` given as well must agree with it. Returns the budget checked
        against the model (None: no limit asked for)."""
        said = None
        if isinstance(classes, str):
            from ..language.budgets import SMALLEST, split_budget

            rest, said = split_budget(classes)
            if said is not None:
                classes = rest
                if said == SMALLEST:
                    said = self.model.config.generator.budget_min if self.model.budgeted else SMALLEST
        if said is not None and budget is not None and said != budget:
            raise BudgetError(f"the request states a budget of {said} and budget={budget} was given too; give one")
        return classes, self.check_budget(said if said is not None else budget)

    def check_budget(self, budget) -> Optional[float]:
        """A budget as a float in [generator.budget_min, 1], or None; BudgetError on a model that takes none."""
        if budget is None:
            return None
        if not self.model.budgeted:
            what = "'as small as possible'" if isinstance(budget, str) else f"a budget of {budget}"
            raise BudgetError(f"{what} was asked of a model that is not budget-conditioned (generator.budget = "
                              "false in its config): its subnets' size was fixed in training; leave the budget out, "
                              "or use a budget-conditioned model (the shipped one: --checkpoint fmnist_budget, or "
                              "PruningEngine.from_pretrained('fmnist_budget')), or train one (generator.budget = true)")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
            raise BudgetError(f"budget must be a number in (0, 1], the largest MAC ratio to the dense net; got "
                              f"{budget!r}")
        b_min = self.model.config.generator.budget_min
        if not b_min <= budget <= 1:
            raise BudgetError(f"budget {budget:g} is outside this model's range [{b_min:g}, 1] (the MAC ratio to the "
                              f"dense net it was trained for); ask for a budget in that range")
        return float(budget)

    @property
    def mac_model(self) -> MacModel:
        """The differentiable MAC count of this model's subnets (built on first use)."""
        if self._mac_model is None:
            self._mac_model = MacModel(self.model.backbone, self.model.info.input_shape)
        return self._mac_model

    def resolve(self, classes) -> tuple[Optional[Subtask], Optional[object]]:
        """(subtask, grounding) of a request: words are grounded, a list of names / indices resolved, None dense."""
        if classes is None:
            return None, None
        if isinstance(classes, str):
            g = self.ground(classes)
            return tuple(g.indices), g
        return self.model.resolve(classes), None

    # ------------------------------------------------------------ calibration data and keys
    def images(self) -> Tensor:
        """The calibration images (uint8), read from the training split on first use."""
        if self._images is None:
            if not self._said_reading:  # once, even where reading fails and is tried again
                self._said_reading = True
                self._say("reading the training images")
            self._images, self._labels, source = training_split(self.model, self.data_dir)
            # the images' own bytes name them: a dataset changed in place is new calibration data
            self._source = f"{source}:{images_fingerprint(self._images)}"
        return self._images

    def _calibration_source(self) -> str:
        """The name of the default calibration images (their data set and bytes). Where they cannot be read, a
        checkpoint's recorded name stands in, so that the statistics it ships (calibrated on exactly those
        images) still serve; a class set it has no statistics for still needs the images, and says so."""
        if self._source is None:
            try:
                self.images()
            except DatasetError:
                recorded = self.model.meta.get("calibration_source")
                if not isinstance(recorded, str) or not recorded:
                    raise
                return recorded
        return self._source

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def subtask_images(self, subtask: Optional[Subtask], limit: int = 1024, seed: int = 0) -> Tensor:
        """Up to `limit` training images of the subtask's classes (float32 in [0, 1]), a seeded sample: what an
        INT8 calibration of that subtask's net sees. Calibration images given by the user carry no labels, so
        all of them are sampled from."""
        from ..data.datasets import to_float

        x, y = self.images(), self._labels
        if subtask is not None and y is not None:
            x = x[torch.isin(y, torch.tensor(sorted(subtask)))]
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:limit]
        return to_float(x[idx.sort().values])

    def labelled_images(self, limit: int = 4096, seed: int = 0) -> Optional[tuple[Tensor, Tensor]]:
        """A seeded sample of up to `limit` calibration images (uint8) with their labels, or None when the
        calibration images carry no labels (images given by the user): what a single class's decision threshold
        is calibrated on."""
        x, y = self.images(), self._labels
        return None if y is None else labelled_sample(x, y, limit, seed)

    def calib_spec(self, seed: Optional[int] = None, images: Optional[Tensor] = None) -> CalibSpec:
        """The calibration settings for the default images (or `images`) and seed (default: the engine's)."""
        c, d = self.model.config.calib, self.model.config.data
        if images is not None:
            source = f"images:{images_fingerprint(images)}"
        else:
            source = self._calibration_source()
        return CalibSpec(c.batches, c.batch_size, self.seed if seed is None else seed, source, Augmentation.of(d))

    def round_multiple(self, round_to: RoundTo = None) -> int:
        """The width multiple a build rounds to: an integer as given (0 or 1: none); "auto": the CPU's vector
        block (vector_block: 16 with AVX-512, else 8); None: the model config's `generator.round_to` where it sets
        one, else "auto" for a custom network, whose odd widths otherwise run slower than the dense net
        (docs/CUSTOM.md), and 0 for the built-in backbones (the shipped models' recorded figures are of exact
        widths; `fmnist_b16` trains its widths in multiples of 16)."""
        if round_to is None:
            configured = self.model.config.generator.round_to  # the model's own choice, where its config makes one
            round_to = (parse_round_to(configured, "generator.round_to") if configured else
                        ROUND_AUTO if isinstance(self.model.backbone, CustomBackbone) else 0)
        if round_to == ROUND_AUTO:
            return vector_block()
        if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 0:
            raise ValueError(f"round_to must be a positive integer, 0 (no rounding) or 'auto' (the CPU's vector "
                             f"block), got {round_to!r}")
        return round_to

    def masks(self, subtask: Optional[Subtask], text: Optional[str] = None, round_to: RoundTo = None,
              round_mode: str = "up", budget: Optional[float] = None) -> tuple[Optional[dict], Optional[str]]:
        """(masks {site: (1, C)}, label) of a subtask; None masks for the dense net. The label names what besides
        the subtask and text decided the masks: the rounding ("up16") and the budget ("b0.1"), joined by a comma.

        With a budget the generator's masks are then cut, lowest utilities first, until the subnet's MACs are at
        most budget x the dense net's (`budget.enforce_budget`): the budget is met exactly, not on average.
        `budget_cuts` counts how often that was needed and how many channels it dropped."""
        return self._masks(subtask, text, round_to, round_mode, budget)[:2]

    def _masks(self, subtask, text, round_to, round_mode, budget) -> tuple[Optional[dict], Optional[str], int]:
        """masks() and the number of channels the budget cut from the generator's masks."""
        budget = self.check_budget(budget)
        round_to = self.round_multiple(round_to)
        if round_mode not in ROUND_MODES:
            raise ValueError(f"round mode must be one of {', '.join(ROUND_MODES)}, got {round_mode!r}")
        if text is not None and (subtask is None or self.model.config.generator.conditioning != "text"):
            raise ValueError("text= conditions a text-conditioned generator on a description of a subtask; this model "
                             f"is conditioned on {self.model.config.generator.conditioning!r}"
                             + ("" if subtask is not None else ", and no subtask was given"))
        if subtask is None or self.model.class_agnostic:  # a class-agnostic net: the dense body, its head cut
            return None, None, 0
        budgets = None if budget is None else torch.tensor([budget])
        with torch.no_grad():
            masks, raw = self.model.generate(self.model.select([subtask]), None if text is None else [text], budgets)
        rounding, dropped = None, 0
        if round_to > 1:
            rounded = round_widths(masks, raw, self.model.sites, round_to, round_mode)
            if any(not torch.equal(rounded[s.name], masks[s.name]) for s in self.model.sites if s.kind == "utility"):
                masks, rounding = rounded, f"{round_mode}{round_to}"
        if budget is not None and budget < 1:
            g = self.model.config.generator
            masks, dropped = enforce_budget(masks, raw, self.mac_model, budget, len(subtask), g.min_keep,
                                            round_to if round_to > 1 else g.keep_multiple)
            self.budget_cuts["requests"] += 1
            self.budget_cuts["cut"] += int(dropped > 0)
            self.budget_cuts["channels"] += dropped
        label = ",".join(x for x in (rounding, budget_label(budget) if budget is not None else None) if x)
        return masks, label or None, dropped

    def key(self, subtask: Optional[Subtask], text: Optional[str] = None, rounding: Optional[str] = None,
            seed: Optional[int] = None, images: Optional[Tensor] = None, masks: Optional[dict] = None) -> StatsKey:
        """The cache key of a subtask's statistics under the current weights, masks (so every setting that
        decides the kept channels: threshold, min_keep, keep_multiple, rounding) and calibration images."""
        if masks is None and subtask is not None:  # the masks the label ("up16", "nearest8,b0.1") stands for
            parts = (rounding or "").split(",")
            r = next((p for p in parts if p.startswith(("up", "nearest"))), "")
            b = next((float(p[1:]) for p in parts if p.startswith("b")), None)
            mode = "nearest" if r.startswith("nearest") else "up"
            masks = self.masks(subtask, text, int(r[len(mode):]) if r else 0, mode, b)[0]
        spec = self.calib_spec(seed, images)
        return StatsKey(subtask, text, rounding, spec.fingerprint(), self.weights_fingerprint(),
                        masks_fingerprint(masks))

    def weights_fingerprint(self) -> str:
        """stats.weights_fingerprint of the model, recomputed only when a tensor was replaced or changed in place
        (every in-place write, an optimizer step or load_state_dict included, bumps a tensor's version)."""
        bufs = [b for n, b in self.model.named_buffers()
                if not n.endswith((".running_mean", ".running_var", ".num_batches_tracked"))]
        versions = tuple((id(t), t._version) for t in (*self.model.parameters(), *bufs))
        if self._weights is None or self._weights[0] != versions:
            self._weights = (versions, weights_fingerprint(self.model))
        return self._weights[1]

    # ------------------------------------------------------------ statistics
    def statistics(self, subtask: Optional[Subtask], text: Optional[str] = None, round_to: RoundTo = None,
                   round_mode: str = "up", seed: Optional[int] = None, images: Optional[Tensor] = None,
                   budget: Optional[float] = None) -> BNStats:
        """Full-width BN statistics of a subtask's masks: from the cache when every setting matches, else
        recalibrated through the physically pruned net and cached."""
        masks, rounding = self.masks(subtask, text, round_to, round_mode, budget)
        return self._statistics(subtask, masks, text, rounding, seed, images)[0]

    def _statistics(self, subtask, masks, text, rounding, seed, images) -> tuple[BNStats, StatsKey]:
        if self.model.class_agnostic:
            subtask = None  # one body for every class set: the dense net's statistics
        key = self.key(subtask, text, rounding, seed, images, masks)
        hit = self.cache.get(key)
        if hit is not None:
            return hit, key
        spec = self.calib_spec(seed, images)
        src = images if images is not None else self.images()
        bb = self.model.backbone
        t0 = time.perf_counter()
        self._say(f"calibrating BN statistics on {spec.count(len(src))} x {spec.batch_size} training images")
        batches = lambda: spec.stream(src, self.model.device)  # noqa: E731
        # both kinds channels-last, weights and batches (stats.recalibrate_channels_last): 1.35-1.8x faster than
        # the default layout for the Fashion-MNIST nets on a 2-core Zen 4
        if isinstance(bb, CustomBackbone):  # through the masked module: a masked channel's statistics are unused
            stats = recalibrate_channels_last(bb, lambda x: bb(x, masks), batches)
        else:  # through the pruned net (cheaper), expanded to the full widths
            net = prune_backbone(bb, masks, range(len(self.model.classes)), physical=True)
            stats = expand_bn_stats(bb, masks, recalibrate_channels_last(net, net, batches))
        self._say(f"calibrated in {time.perf_counter() - t0:.1f} s")
        return self.cache.put(key, stats), key

    @contextlib.contextmanager
    def using_statistics(self, classes=None, text: Optional[str] = None, round_to: RoundTo = None, round_mode: str = "up",
                         seed: Optional[int] = None, images: Optional[Tensor] = None,
                         budget: Optional[float] = None) -> Iterator[SubtaskAdaptiveNet]:
        """Load a subtask's statistics into the module for the duration (an eval-mode forward then accepts it)."""
        classes, budget = self.split_budget(classes, budget)
        subtask, _ = self.resolve(classes)
        masks, rounding = self.masks(subtask, text, round_to, round_mode, budget)
        stats, key = self._statistics(subtask, masks, text, rounding, seed, images)
        model = self.model
        saved, tag = get_bn_stats(model.backbone), model.stats_tag
        set_bn_stats(model.backbone, {k: v.to(model.device) for k, v in stats.items()})
        model.stats_tag = key.tag
        try:
            yield model
        finally:
            set_bn_stats(model.backbone, saved)
            model.stats_tag = tag

    @torch.no_grad()
    def predict(self, x: Tensor, classes=None, batch_size: int = 1000, budget: Optional[float] = None,
                round_to: RoundTo = None) -> Tensor:
        """Logits (N, num_classes) of the masked module for a subtask (None: dense), with its own statistics, and
        its widths rounded as `subnet` rounds them (`round_to`, see round_multiple): the logits of `subnet`.
        `x` is float in [0, 1] or uint8 (divided by 255). With a budget, the masked module runs the generator's
        masks as they come; where those are over the budget (the engine would cut them) it raises BudgetError:
        `subnet` builds the net cut to fit."""
        classes, budget = self.split_budget(classes, budget)
        subtask, _ = self.resolve(classes)
        select = None if subtask is None or self.model.class_agnostic else self.model.select([subtask])
        if budget is not None and subtask is not None:
            if self._masks(subtask, None, 0, "up", budget)[2]:
                raise BudgetError(f"the generator's net for {subtask} is over the budget {budget:g}: cut to fit, it "
                                  "is no longer the masked module's; use engine.subnet(..., budget=...) for it")
        out = []
        rounded = None
        if subtask is not None and self.round_multiple(round_to) > 1:  # the masks the subnet is built from
            rounded, _ = self.masks(subtask, None, round_to, "up", budget)
        with self.using_statistics(subtask, round_to=round_to, budget=budget):
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(self.model.device)
                xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()
                if rounded is not None:
                    out.append(self.model.backbone(xb, rounded).float().cpu())
                    continue
                sel = None if select is None else select.expand(len(xb), -1)
                bud = None if budget is None or sel is None else torch.full((len(xb),), budget)
                out.append(self.model(xb, sel, bud).float().cpu())
        return torch.cat(out)

    # ------------------------------------------------------------ guarded budgets
    def validation(self) -> tuple[Tensor, Tensor]:
        """(uint8 images, labels) of the model's validation split, read on first use: what a guard picks on."""
        if self._val is None:
            d = self.model.config.data
            try:
                vx, vy = validation_images(d, self.data_dir)
            except DatasetError as e:
                raise DatasetError(f"a guarded budget picks its net on the {d.dataset} validation split, which could "
                                   f"not be read: {e} -- install the dataset (or point $HYPERSAN_DATA / --data-dir at "
                                   "it), or leave the guard off") from None
            self._val = vx, vy
            self._val_source = f"{d.dataset}:val"
        if not len(self._val[1]):
            raise BudgetError("a guarded budget picks its net on validation images, and there are none (the model was "
                              "trained with data.val_size = 0, or validation= was empty); leave the guard off")
        return self._val

    def check_guard(self) -> None:
        """BudgetError unless this model can guard a budget (a budget-conditioned one)."""
        if not self.model.budgeted:
            raise BudgetError("a guard weighs a budget-conditioned model's nets at several budgets; this model is not "
                              "budget-conditioned (generator.budget = false in its config): leave the guard off")

    def guard(self, classes, budget: Optional[float] = None, text: Optional[str] = None, round_to: RoundTo = None,
              round_mode: str = "up", seed: Optional[int] = None, images: Optional[Tensor] = None) -> dict:
        """The budget a guarded request is served at. The nets at `budget` and at every smaller budget of
        `guard_grid` (within the model's range) are weighed on the class set's validation images; the smallest
        budget whose net gets the most of them right is served. So a larger guarded budget never serves a net
        that is less accurate on validation than a smaller grid budget's (two budgets off the grid are not weighed
        against each other), and spare budget is left unspent where it buys nothing there. Costs a BN calibration
        and a validation pass per weighed budget, once: the decision is cached with everything it depends on
        (weights, calibration, rounding, text; at most `max_guards` decisions, the oldest dropped first). Returns
        {"requested", "budget" (the one served), "weighed" ([[budget, validation images right], ...], budgets
        ascending), "images" (the class set's validation images)}."""
        self.check_guard()
        classes, budget = self.split_budget(classes, budget)
        subtask, grounding = self.resolve(classes)
        if subtask is None:
            raise BudgetError("a guard weighs a class set's nets at several budgets; give the classes (the dense net "
                              "has one size)")
        if grounding is not None and text is None:
            text = self.model.request_text(classes)
        b = 1.0 if budget is None else budget
        vx, vy = self.validation()
        spec = self.calib_spec(seed, images)
        round_to = self.round_multiple(round_to)
        key = (subtask, text, round_to, round_mode, b, tuple(self.guard_grid), spec.fingerprint(),
               self.weights_fingerprint(), self._val_source)
        if key not in self._guards:  # weigh every budget's net on the class set's validation images, once
            keep = torch.isin(vy, torch.tensor(sorted(subtask)))
            if not bool(keep.any()):
                names = ", ".join(self.model.classes[i] for i in subtask)
                raise BudgetError(f"the validation split has no images of {names}, so a guard has nothing to pick "
                                  "on; leave the guard off")
            x, y = vx[keep], vy[keep]
            b_min = self.model.config.generator.budget_min
            weighed = []
            for c in sorted({g for g in self.guard_grid if b_min <= g < b} | {b}):
                net = self.subnet(list(subtask), fold_bn=True, round_to=round_to, round_mode=round_mode, text=text,
                                  seed=seed, images=images, budget=None if c >= 1 else c)
                weighed.append([c, len(y) - len(plain_accuracy_and_errors(net, subtask, x, y)[1])])
            held, right = max(weighed, key=lambda w: (w[1], -w[0]))  # the most right; of those, the smallest budget
            while self._guards and len(self._guards) >= self.max_guards:  # bounded, for a long-running server
                self._guards.pop(next(iter(self._guards)))
            self._guards[key] = {"requested": b, "budget": held, "weighed": weighed, "images": len(y)}
            self._say(f"guard: budget {b:g} serves the net at {held:g} ({right} of {len(y)} validation images "
                      "right)")
        got = self._guards[key]
        return {**got, "weighed": [list(w) for w in got["weighed"]]}  # a copy: the cached decision stays as it is

    # ------------------------------------------------------------ surgery and export
    @torch.no_grad()
    def subnet(self, classes=None, fold_bn: bool = False, round_to: RoundTo = None, round_mode: str = "up",
               physical: bool = True, text: Optional[str] = None, seed: Optional[int] = None,
               images: Optional[Tensor] = None, budget: Optional[float] = None, guard: bool = False) -> nn.Module:
        """The physically pruned plain network of a subtask, in eval mode.

        `classes`: class names / indices, a request in words ("shoes and handbags"), or None (the dense net).
        With a text-conditioned generator a request in words conditions it on the request's own embedding
        (pass text= to choose another description); the grounded classes decide the head. `physical=False`
        gives the masked form (dense widths, pruned channels zeroed). `round_to`/`round_mode`: see
        surgery.round_widths. BN statistics are the subtask's own (cached, or calibrated first). `budget`: the
        largest MAC ratio to the dense net (a budget-conditioned model only; a request in words may state it,
        "shoes under 10% of the compute"); the net meets it exactly. `guard=True`: the net at a smaller budget of
        `guard_grid` where the validation split finds the larger ones no more accurate (see guard; the net's
        `guard` records the decision), so that more budget never buys a net that is worse on validation.
        """
        classes, budget = self.split_budget(classes, budget)
        subtask, grounding = self.resolve(classes)
        if grounding is not None and text is None:
            text = self.model.request_text(classes)
        guarded = None
        if guard:
            guarded = self.guard(None if subtask is None else list(subtask), budget, text, round_to, round_mode, seed,
                                 images)
        served = budget if guarded is None else (None if guarded["budget"] >= 1 else guarded["budget"])
        masks, rounding = self.masks(subtask, text, round_to, round_mode, served)
        stats, _ = self._statistics(subtask, masks, text, rounding, seed, images)
        cls = list(range(len(self.model.classes))) if subtask is None else list(subtask)
        names = [self.model.classes[i] for i in cls]
        net = prune_backbone(self.model.backbone, masks, cls, names, bn_stats=stats, fold_bn=fold_bn,
                             input_shape=self.model.info.input_shape, physical=physical)
        if grounding is not None:
            net.request = grounding.request
            net.grounding = grounding.to_dict()
        net.conditioned_on = text
        net.rounding = rounding
        net.budget = budget
        net.guard = guarded
        return net

    def cost(self, net: nn.Module) -> dict:
        """MACs and parameters of a plain net built from this model (counted on a network of its widths, with
        BN), and their ratios to the dense net's."""
        arch, shape = self.model.backbone.arch, self.model.info.input_shape
        dense_macs, dense_params = self.dense_cost()
        if arch["arch"] == "custom":  # counted on the net itself: its widths alone do not give its layers
            macs, params = count_macs(net, tuple(shape)), count_params(net)
        else:
            macs, params = _cost(arch, net.arch["site_widths"], net.arch["num_classes"], shape)
        return {"macs": macs, "params": params, "mac_ratio": macs / dense_macs, "param_ratio": params / dense_params}

    def dense_cost(self) -> tuple[int, int]:
        """(MACs, parameters) of the dense net, counted once."""
        if self._dense_cost is None:
            bb, shape = self.model.backbone, self.model.info.input_shape
            if isinstance(bb, CustomBackbone):
                self._dense_cost = count_macs(bb, tuple(shape)), count_params(bb.net)
            else:
                self._dense_cost = _cost(bb.arch, bb.arch["site_widths"], len(self.model.classes), shape)
        return self._dense_cost

    def export(self, classes, out: str | os.PathLike, formats: Iterable[str] | str = DEFAULT_FORMATS,
               round_to: RoundTo = None, fold_bn: bool = True, round_mode: str = "up", text: Optional[str] = None,
               force: bool = False, quantize: Optional[str] = None, int8_images: int = 1024,
               budget: Optional[float] = None, guard: bool = False, net: Optional[nn.Module] = None,
               int8_weight_bits: int = 7) -> dict:
        """Prune to a subtask and write its artifact atomically; returns a JSON-able summary. An existing
        artifact at `out` is replaced only with force=True; any other folder never. `budget`, `guard`: see subnet.
        `net`: a net this engine already built for the request (a subnet, or one fine-tuned with
        hypersan.training.finetune.finetune_subnet), written as it is; `classes` and the building arguments are
        then not used.

        quantize="int8" also writes model.int8.onnx (and the float model.onnx it is quantized from), calibrated
        on `int8_images` of the subtask's training images, its weights in `int8_weight_bits` bits (7, the default:
        the same outputs with and without VNNI; 8: the full range)."""
        formats = parse_formats(list(formats) if not isinstance(formats, str) else formats)
        if quantize not in (None, "int8"):
            raise ValueError(f"unknown quantization {quantize!r}; the one supported is int8")
        check_weight_bits(int8_weight_bits)  # before any work
        if net is None:
            net = self.subnet(classes, fold_bn=fold_bn, round_to=round_to, round_mode=round_mode, text=text,
                              budget=budget, guard=guard)
        elif not set(net.classes) <= set(self.model.classes):
            raise ValueError(f"export(net=...): the net's classes {list(net.classes)[:5]} are not this model's; "
                             "pass a net this engine built")
        subtask = [self.model.classes.index(c) for c in net.classes]
        cost = self.cost(net)
        ratios = {k: cost[k] for k in ("mac_ratio", "param_ratio")}
        finetuned = getattr(net, "finetuned", None)
        extra = dict(ratios, round_to=self.round_multiple(round_to), round_mode=round_mode, conditioned_on=net.conditioned_on,
                     budget=net.budget, **({"guard": net.guard} if net.guard else {}),
                     **({"finetuned": finetuned} if finetuned else {}))
        if getattr(net, "grounding", None) is not None:
            extra.update(request=net.request, grounding=net.grounding)
        calib = self.subtask_images(tuple(subtask), int8_images, self.seed) if quantize else None
        files = save_subnet(net, out, formats, subtask=subtask, source=getattr(self.model, "source", None),
                            extra=extra, force=force, int8_images=calib, int8_weight_bits=int8_weight_bits,
                            log=self.log)
        summary = {"classes": list(net.classes), "subtask": subtask, **ratios, "budget": net.budget,
                   **({"guard": net.guard} if net.guard else {}), **({"finetuned": finetuned} if finetuned else {}),
                   "widths": dict(net.arch["site_widths"]), "files": {f: str(p) for f, p in files.items()},
                   "bytes": {f: p.stat().st_size for f, p in files.items()}}
        if getattr(net, "grounding", None) is not None:
            summary["grounding"] = net.grounding
        return summary

    def widths(self, subtask: Optional[Subtask], budget: Optional[float] = None) -> dict[str, int]:
        """Kept channels per utility site of a subtask's masks (the dense widths for None)."""
        masks, _ = self.masks(subtask, budget=budget)
        if masks is None:
            return dict(self.model.backbone.arch["site_widths"])
        return kept_widths(masks, self.model.sites)


__all__ = ["PruningEngine", "training_images"]
