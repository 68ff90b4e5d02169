"""SubtaskAdaptiveNet: a maskable backbone plus a mask generator, saved as safetensors + JSON."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from . import __version__
from .backbones import build_backbone
from .calibrate import BNStats, get_bn_stats, recalibrate, set_bn_stats
from .config import Config, config_from_dict
from .data import DatasetInfo, augment, to_float
from .descriptions import canonical_description
from .generators import HyperNetwork, PerTaskMasks, to_masks
from .io import ArtifactError, atomic_dir, load_checked, load_tensors, read_json, save_tensors, write_json
from .shipped import DEFAULT, SHIPPED
from .subtasks import Holdout, Subtask, canonical

CHECKPOINT_FORMAT = 1
DENSE = "dense"


def subtask_key(subtask: Subtask | None) -> str:
    """String key of a subtask's cached statistics ("dense" for the unmasked net)."""
    return DENSE if subtask is None else "-".join(map(str, subtask))


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


class SubtaskAdaptiveNet(nn.Module):
    """One base network plus a generator of channel masks for any combined subtask."""

    def __init__(self, config: Config, info: DatasetInfo):
        super().__init__()
        self.config = config
        self.info = info
        m = config.model
        c, h, w = info.input_shape
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
        self.encoder = None
        cond_dim = len(self.basic)
        if g.conditioning == "text":
            from .text import Encoder

            self.encoder = Encoder(g.encoder or None)
            cond_dim = self.encoder.dim
        if g.kind == "hypernet":
            self.generator: nn.Module = HyperNetwork(self.sites, cond_dim, g.hidden, g.layers, g.sigma, g.linear_skip)
        else:
            self.generator = PerTaskMasks(self.sites, len(self.basic), g.sigma)
        s = config.subtasks
        explicit = [self.basic_of(self.resolve(c)) for c in s.holdout]
        self.holdout = Holdout(len(self.basic), explicit, s.holdout_fraction, s.holdout_seed)
        self.bn_cache: dict[str, BNStats] = {}
        self.meta: dict = {}

    # ------------------------------------------------------------ subtasks
    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    def resolve(self, classes: Iterable[int | str]) -> Subtask:
        """Canonical class-index subtask from class names (case-insensitive) or indices."""
        out = []
        for c in classes:
            if isinstance(c, str):
                out.append(self.info.index(c))
            elif 0 <= int(c) < len(self.info.classes):
                out.append(int(c))
            else:
                raise ValueError(f"class index {c} out of range 0..{len(self.info.classes) - 1}")
        return canonical(out)

    def basic_of(self, subtask: Subtask) -> Subtask:
        """The basic subtasks that cover a class subtask."""
        return canonical(self.class_to_basic[i] for i in subtask)

    def classes_of(self, basic: Subtask) -> Subtask:
        return canonical(i for k in basic for i in self.basic[k])

    def select(self, subtasks: Sequence[Subtask]) -> Tensor:
        """(B, K) bool multi-hot over basic subtasks for class subtasks."""
        out = torch.zeros(len(subtasks), len(self.basic), dtype=torch.bool)
        for r, t in enumerate(subtasks):
            out[r, list(self.basic_of(t))] = True
        return out

    def is_seen(self, subtask: Subtask) -> bool:
        return self.basic_of(subtask) not in self.holdout

    # ------------------------------------------------------------ masks and forward
    def condition(self, select: Tensor, texts: Sequence[str] | None = None) -> Tensor:
        """Generator input for a (B, K) selection over basic subtasks: the multi-hot itself, or (text
        conditioning) the sentence embeddings of `texts`, by default the canonical description of each row."""
        if self.encoder is None:
            return select.to(dtype=torch.float32, device=self._device())
        if texts is None:
            texts = [canonical_description(self.classes_of(tuple(r.nonzero().flatten().tolist())), self.info)
                     for r in select]
        if len(texts) != len(select):
            raise ValueError(f"{len(texts)} texts for {len(select)} conditions")
        return self.encoder.encode(list(texts), convert_to_tensor=True).to(self._device())

    def generate(self, select: Tensor, texts: Sequence[str] | None = None
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(masks, raw generator output) for a (B, K) selection (and, with text conditioning, its descriptions)."""
        g = self.config.generator
        raw = self.generator(self.condition(select, texts))
        return to_masks(raw, self.sites, g.threshold, g.surrogate_temp, g.min_keep, g.keep_multiple), raw

    def forward(self, x: Tensor, select: Tensor | None = None) -> Tensor:
        """Logits (B, num_classes); select=None runs the dense net."""
        masks = None if select is None else self.generate(select)[0]
        return self.backbone(x, masks)

    @torch.no_grad()
    def subtask_masks(self, subtask: Subtask) -> dict[str, Tensor]:
        """Masks (1, C) of one subtask, in inference mode."""
        return self.generate(self.select([subtask]))[0]

    def vocabulary(self) -> DatasetInfo:
        """The vocabulary requests are grounded against: the dataset's, extended by the config's [vocab]."""
        from .grounding import extend_vocabulary

        return extend_vocabulary(self.info, self.config.vocab.synonyms, self.config.vocab.groups)

    def ground(self, request: str):
        """Ground a natural-language request to this model's classes (raises GroundingError when it cannot)."""
        from .grounding import Grounder

        if getattr(self, "_grounder", None) is None:
            self._grounder = Grounder(self.vocabulary())
        return self._grounder.ground(request)

    def request_text(self, request: str) -> str | None:
        """The description to condition the generator on for a request in words: the request itself with
        text conditioning (its masks come from its own embedding), None with multi-hot conditioning."""
        return request if self.config.generator.conditioning == "text" else None

    def subnet(self, classes: str | Iterable[int | str], **kwargs) -> nn.Module:
        """The physically pruned plain network of a subtask, given as class names / indices or as a request
        in words ("shoes and handbags"); see surgery.prune for the keyword options. With a text-conditioned
        generator a request in words conditions it on the request's own embedding (`text=None` instead
        uses the canonical description of the grounded classes); the grounded classes decide the head."""
        from .surgery import prune

        grounding = None
        if isinstance(classes, str):
            grounding = self.ground(classes)
            kwargs.setdefault("text", self.request_text(classes))
            classes = grounding.indices
        net = prune(self, classes, **kwargs)
        if grounding is not None:
            net.request = grounding.request
            net.grounding = grounding.to_dict()
        return net

    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # ------------------------------------------------------------ BN statistics per subtask
    def calibrate(self, subtask: Subtask | None, images: Tensor, batches: int | None = None,
                  batch_size: int | None = None, seed: int = 0, force: bool = False) -> BNStats:
        """Recalibrated BN statistics of a subtask (None: the dense net), computed once and cached."""
        key = subtask_key(subtask)
        if key in self.bn_cache and not force:
            return self.bn_cache[key]
        n = batches or self.config.calib.batches
        bs = batch_size or self.config.calib.batch_size
        gen = torch.Generator().manual_seed(seed)
        masks = None if subtask is None else self.subtask_masks(subtask)
        dev = self._device()
        d = self.config.data

        def stream():
            for _ in range(n):
                idx = torch.randint(0, len(images), (bs,), generator=gen)
                yield augment(to_float(images[idx]), d.crop_padding, d.hflip, gen).to(dev)

        stats = recalibrate(self.backbone, lambda x: self.backbone(x, masks), stream())
        self.bn_cache[key] = stats
        return stats

    @contextlib.contextmanager
    def using_stats(self, subtask: Subtask | None):
        """Temporarily load a subtask's cached BN statistics into the backbone."""
        key = subtask_key(subtask)
        if key not in self.bn_cache:
            raise KeyError(f"no calibrated BN statistics for subtask {key}; call calibrate() first")
        saved = get_bn_stats(self.backbone)
        set_bn_stats(self.backbone, {k: v.to(self._device()) for k, v in self.bn_cache[key].items()})
        try:
            yield
        finally:
            set_bn_stats(self.backbone, saved)

    # ------------------------------------------------------------ save / load
    def save_pretrained(self, path: str | os.PathLike, extra_files: dict[str, dict] | None = None,
                        extra_tensors: dict[str, dict[str, Tensor]] | None = None) -> Path:
        """Write config, vocabulary, metadata, weights and cached BN statistics to a directory, atomically."""
        with atomic_dir(path) as tmp:
            write_json(tmp / "config.json", self.config.to_dict())
            write_json(tmp / "dataset.json", self.info.to_dict())
            meta = dict(self.meta)
            meta.update({"format": CHECKPOINT_FORMAT, "hypersan_version": __version__,
                         "holdout": self.holdout.to_dict(), "classes": self.classes,
                         "basic_subtasks": [list(b) for b in self.basic]})
            write_json(tmp / "meta.json", meta)
            save_tensors(tmp / "model.safetensors", self.state_dict())
            cache = {f"{k}/{n}": v for k, st in self.bn_cache.items() for n, v in st.items()}
            if cache:
                save_tensors(tmp / "bn_cache.safetensors", cache)
            for name, data in (extra_files or {}).items():
                write_json(tmp / name, data)
            for name, tensors in (extra_tensors or {}).items():
                save_tensors(tmp / name, tensors)
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu"
                        ) -> "SubtaskAdaptiveNet":
        """Load a checkpoint directory or a shipped model by name (default: `shipped.DEFAULT`), checking every
        tensor."""
        p = resolve_checkpoint(path)
        meta = read_json(p / "meta.json")
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ArtifactError(f"{p}: checkpoint format {meta.get('format')!r} is not supported "
                                f"(this hypersan reads format {CHECKPOINT_FORMAT})")
        config = config_from_dict(read_json(p / "config.json"))
        info = DatasetInfo.from_dict(read_json(p / "dataset.json"))
        model = cls(config, info)
        load_checked(model, load_tensors(p / "model.safetensors"), str(p / "model.safetensors"))
        if (p / "bn_cache.safetensors").exists():
            for k, v in load_tensors(p / "bn_cache.safetensors").items():
                key, name = k.split("/", 1)
                model.bn_cache.setdefault(key, {})[name] = v
        model.meta = {k: v for k, v in meta.items() if k not in ("format", "hypersan_version")}
        model.source = str(p)
        return model.to(map_location)


def default_checkpoint(name: str = DEFAULT) -> Path:
    """A model shipped inside the package (default: `shipped.DEFAULT`)."""
    if name not in SHIPPED:
        raise ArtifactError(f"no shipped model {name!r}; shipped: {', '.join(SHIPPED)}")
    return Path(__file__).parent / "pretrained" / name


def resolve_checkpoint(path: str | os.PathLike | None) -> Path:
    """A checkpoint directory, or the name of a shipped model when no such directory exists (None: default)."""
    if path is None:
        return default_checkpoint()
    p = Path(path)
    if not p.exists() and str(path) in SHIPPED:
        return default_checkpoint(str(path))
    if not p.is_dir():
        raise ArtifactError(f"checkpoint directory {str(p)!r} not found (or name a shipped model: "
                            f"{', '.join(SHIPPED)})")
    return p
