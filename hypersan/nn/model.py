"""SubtaskAdaptiveNet: a maskable backbone plus a mask generator, as one plain nn.Module.

The module holds weights and a forward, nothing else: no cache, no data, no files beyond its own weights.
BatchNorm is the one subtlety. After training with per-sample masks, the running statistics in the module
are a mixture over every subtask seen; each subtask (and the dense net) needs statistics recalibrated for
its own masks. The module records whose statistics are loaded (`stats_tag`), and in eval mode a forward
for any other subtask raises an error naming the call that loads the right ones
(`PruningEngine.using_statistics`, or `PruningEngine.predict`). Training mode uses batch statistics and
needs none.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..version import __version__
from .backbones import build_backbone
from .custom import CustomBackbone
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_KIND, read_checkpoint, subtask_key
from ..config import Config
from ..data.datasets import DatasetInfo
from ..language.descriptions import canonical_description
from .generators import (BUDGET_FEATURES, BudgetError, HyperNetwork, PerTaskMasks, budget_features, budget_label,
                         to_masks)
from ..io import atomic_dir, load_checked, load_tensors, save_tensors, write_json
from ..data.subtasks import Holdout, Subtask, canonical, resolve_classes


def basic_subtasks(info: DatasetInfo, mode: str) -> list[tuple[int, ...]]:
    """The basic subtasks as class-index tuples: one per class, or the dataset's groups (a partition)."""
    if mode == "classes":
        return [(i,) for i in range(len(info.classes))]
    basic = [canonical(info.index(c) for c in members) for members in info.groups.values()]
    covered = sorted(i for b in basic for i in b)
    if covered != list(range(len(info.classes))):
        raise ValueError(f"data.basic_subtasks = 'groups' needs groups that partition the classes of {info.name}; "
                         "each class must lie in exactly one group")
    return basic


class StatisticsError(RuntimeError):
    """An eval-mode forward asked for a subtask whose BN statistics are not the ones loaded in the module."""


class SubtaskAdaptiveNet(nn.Module):
    """One base network plus a generator of channel masks for any combined subtask."""

    def __init__(self, config: Config, info: DatasetInfo):
        super().__init__()
        self.config = config
        self.info = info
        m = config.model
        c, h, w = info.input_shape
        if m.arch == "custom":  # the user's network, from its factory; its channel groups are the sites
            self.backbone = CustomBackbone(m.factory, m.kwargs, c, len(info.classes), [c, h, w], list(info.mean),
                                           list(info.std), scaling=m.scaling)
        else:
            self.backbone = build_backbone({"arch": m.arch, "in_channels": c, "num_classes": len(info.classes),
                                            "widths": m.widths, "blocks": m.blocks, "mean": list(info.mean),
                                            "std": list(info.std)})
        self.sites = self.backbone.sites()
        self.basic = basic_subtasks(info, config.data.basic_subtasks)
        self.class_to_basic = [0] * len(info.classes)
        for k, b in enumerate(self.basic):
            for i in b:
                self.class_to_basic[i] = k
        g = config.generator
        self.encoder = None  # a sentence encoder: no trainable weights, not a submodule
        cond_dim = len(self.basic)
        if g.conditioning == "text":
            from ..language.text import Encoder

            self.encoder = Encoder(g.encoder or None)
            cond_dim = self.encoder.dim
        if g.budget:
            cond_dim += BUDGET_FEATURES  # the budget's features follow the class set's condition
        if g.kind == "hypernet":
            self.generator: nn.Module = HyperNetwork(self.sites, cond_dim, g.hidden, g.layers, g.sigma, g.linear_skip,
                                                        nested_budget=g.budget and g.budget_nested)
        else:
            self.generator = PerTaskMasks(self.sites, len(self.basic), g.sigma)
        s = config.subtasks
        explicit = [self.basic_of(self.resolve(c)) for c in s.holdout]
        self.holdout = Holdout(len(self.basic), explicit, s.holdout_fraction, s.holdout_seed)
        self.meta: dict = {}
        # whose BN statistics the backbone holds: None = the training mixture, else a StatsKey-like tuple
        # (subtask key, text, rounding) set by PruningEngine.using_statistics
        self.stats_tag: Optional[tuple] = None

    # ------------------------------------------------------------ subtasks
    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    def resolve(self, classes: Iterable[int | str]) -> Subtask:
        """Canonical class-index subtask from class names (case-insensitive) or indices; duplicates, floats,
        bools and empty lists are errors."""
        return resolve_classes(classes, self.classes)

    def basic_of(self, subtask: Subtask) -> Subtask:
        """The basic subtasks that cover a class subtask."""
        return canonical(self.class_to_basic[i] for i in subtask)

    def classes_of(self, basic: Subtask) -> Subtask:
        """The classes of a set of basic subtasks."""
        return canonical(i for k in basic for i in self.basic[k])

    def select(self, subtasks: Sequence[Subtask]) -> Tensor:
        """(B, K) bool multi-hot over basic subtasks for class subtasks."""
        out = torch.zeros(len(subtasks), len(self.basic), dtype=torch.bool)
        for r, t in enumerate(subtasks):
            out[r, list(self.basic_of(t))] = True
        return out

    def is_seen(self, subtask: Subtask) -> bool:
        """Whether a subtask's combination could be sampled in training (not held out)."""
        return self.basic_of(subtask) not in self.holdout

    def request_text(self, request: str) -> str | None:
        """The description to condition the generator on for a request in words: the request itself with
        text conditioning (its masks come from its own embedding), None with multi-hot conditioning."""
        return request if self.config.generator.conditioning == "text" else None

    # ------------------------------------------------------------ masks and forward
    @property
    def class_agnostic(self) -> bool:
        """Whether the net was trained without masks (subtasks.dense_share = 1): its generator never learned, and
        every class set's net is the dense body with its head cut to the set, on the dense net's statistics."""
        return self.config.subtasks.dense_share >= 1.0

    @property
    def budgeted(self) -> bool:
        """Whether the generator reads a MAC budget besides the class set (generator.budget)."""
        return bool(self.config.generator.budget)

    def condition(self, select: Tensor, texts: Sequence[str] | None = None, budgets: Tensor | None = None
                  ) -> Tensor:
        """Generator input for a (B, K) selection over basic subtasks: the multi-hot itself, or (text
        conditioning) the sentence embeddings of `texts`, by default the canonical description of each row;
        then, for a budget-conditioned model, the features of each row's budget (B,) (default 1: no limit)."""
        if budgets is not None and not self.budgeted:
            raise BudgetError("this model is not budget-conditioned (generator.budget = false): it takes no budget; "
                              "train one with generator.budget = true, or leave the budget out")
        if self.encoder is None:
            cond = select.to(dtype=torch.float32, device=self.device)
        else:
            if texts is None:
                texts = [canonical_description(self.classes_of(tuple(r.nonzero().flatten().tolist())), self.info)
                         for r in select]
            if len(texts) != len(select):
                raise ValueError(f"{len(texts)} texts for {len(select)} conditions")
            cond = self.encoder.encode(list(texts), convert_to_tensor=True).to(self.device)
        if not self.budgeted:
            return cond
        if budgets is None:
            budgets = torch.ones(len(cond), device=cond.device)
        budgets = budgets.to(device=cond.device, dtype=cond.dtype).reshape(-1)
        if len(budgets) != len(cond):
            raise ValueError(f"{len(budgets)} budgets for {len(cond)} conditions")
        return torch.cat([cond, budget_features(budgets, self.config.generator.budget_min)], dim=1)

    def generate(self, select: Tensor, texts: Sequence[str] | None = None, budgets: Tensor | None = None
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(masks, raw generator output) for a (B, K) selection (and, with text conditioning, its descriptions;
        for a budget-conditioned model, its budgets (B,))."""
        g = self.config.generator
        raw = self.generator(self.condition(select, texts, budgets))
        return to_masks(raw, self.sites, g.threshold, g.surrogate_temp, g.min_keep, g.keep_multiple), raw

    @torch.no_grad()
    def subtask_masks(self, subtask: Subtask, text: str | None = None, budget: float | None = None
                      ) -> dict[str, Tensor]:
        """Masks (1, C) of one subtask (optionally conditioned on a description and a budget), in inference mode.
        These are the generator's masks: PruningEngine.masks also cuts them to meet the budget exactly."""
        budgets = None if budget is None else torch.tensor([float(budget)])
        return self.generate(self.select([subtask]), None if text is None else [text], budgets)[0]

    def forward(self, x: Tensor, select: Tensor | None = None, budgets: Tensor | None = None) -> Tensor:
        """Logits (B, num_classes); select=None runs the dense net; `budgets` (B,): a budget-conditioned model's
        budgets (default: no limit).

        In eval mode the backbone's BN statistics must be those of the requested subtask: load them with
        `PruningEngine.using_statistics(subtask)` (or call `PruningEngine.predict`). Anything else raises.
        """
        if not self.training:
            self._check_stats(select, budgets)
        masks = None if select is None else self.generate(select, None, budgets)[0]
        return self.backbone(x, masks)

    def _check_stats(self, select: Tensor | None, budgets: Tensor | None = None) -> None:
        if select is None:
            want = subtask_key(None)
        else:
            rows = select.bool()
            if rows.shape[0] > 1 and not bool((rows == rows[:1]).all()):
                raise StatisticsError("an eval-mode forward runs one subtask at a time (BN statistics are per "
                                      "subtask); this batch mixes several. Split it by subtask, or use "
                                      "PruningEngine.predict for each")
            want = subtask_key(self.classes_of(tuple(rows[0].nonzero().flatten().tolist())))
        label = None
        if budgets is not None and select is not None:
            b = budgets.reshape(-1)
            if len(b) > 1 and not bool((b == b[0]).all()):
                raise StatisticsError("an eval-mode forward runs one budget at a time (BN statistics are per "
                                      "subnet); this batch mixes several")
            label = budget_label(float(b[0]))
        have = self.stats_tag
        if have is None or have[0] != want or have[1] is not None or have[2] != label:
            loaded = "the mixture learned in training" if have is None else f"those of {have}"
            raise StatisticsError(
                f"eval-mode forward of subtask {want!r}, but the BN statistics in the module are {loaded}; the "
                f"logits would be wrong. Run it inside `with engine.using_statistics(classes):` (hypersan."
                f"PruningEngine), or call engine.predict(x, classes)")

    def train(self, mode: bool = True) -> "SubtaskAdaptiveNet":
        if mode:
            self.stats_tag = None  # a training forward overwrites the running statistics with a new mixture
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.stats_tag = None  # new weights and statistics: no subtask's calibrated ones any more
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # ------------------------------------------------------------ save / load
    def save_pretrained(self, path: str | os.PathLike, force: bool = False, extra_files: dict[str, dict] | None = None,
                        extra_tensors: dict[str, dict[str, Tensor]] | None = None) -> Path:
        """Write config, vocabulary, metadata and weights to a checkpoint directory, atomically.

        An existing checkpoint there is replaced only with force=True; any other folder is never replaced.
        """
        with atomic_dir(path, CHECKPOINT_KIND, force=force) as tmp:
            self.write_files(tmp)
            for name, data in (extra_files or {}).items():
                write_json(tmp / name, data)
            for name, tensors in (extra_tensors or {}).items():
                save_tensors(tmp / name, tensors)
        return Path(path)

    def write_files(self, folder: Path) -> None:
        """Write config.json, dataset.json, meta.json and model.safetensors into a folder."""
        write_json(folder / "config.json", self.config.to_dict())
        write_json(folder / "dataset.json", self.info.to_dict())
        meta = dict(self.meta)
        holdout = self.holdout.to_dict()
        meta.update({"format": CHECKPOINT_FORMAT, "hypersan_version": __version__, "holdout": holdout,
                     "classes": self.classes, "basic_subtasks": [list(b) for b in self.basic]})
        write_json(folder / "meta.json", meta)
        save_tensors(folder / "model.safetensors", self.state_dict())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu"
                        ) -> "SubtaskAdaptiveNet":
        """Load a checkpoint directory or a shipped model by name (default: `shipped.DEFAULT`), checking every
        tensor; the module is returned in eval mode. Its BN statistics are the training mixture: load a
        subtask's own with `PruningEngine` before an eval forward."""
        p, config, info, meta = read_checkpoint(path)
        model = cls(config, info)
        load_checked(model, load_tensors(p / "model.safetensors"), str(p / "model.safetensors"))
        model.meta = {k: v for k, v in meta.items() if k not in ("format", "hypersan_version")}
        model.source = str(p)
        return model.to(map_location).eval()

