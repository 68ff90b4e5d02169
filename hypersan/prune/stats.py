"""BatchNorm statistics per subtask: exact recalibration, and a cache whose keys name everything they depend on.

After training with per-sample masks, a backbone's running statistics are a mixture over every subtask seen;
each subtask's masks need statistics of their own. They depend on:
- the subtask, and for a text-conditioned generator the text it was conditioned on;
- any rounding of the kept widths;
- the calibration settings: number and size of batches, seed, augmentation and the source of the images;
- the weights.
`StatsKey` names all of them, so a cached entry is reused only for exactly what produced it. Every tensor
that enters the cache (computed, or loaded from a file) is checked against the backbone's BN buffers.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from ..nn.bn import BNStats, bn_modules, get_bn_stats, set_bn_stats  # noqa: F401 (re-exported)
from ..nn.subnet import weights_layout
from ..nn.checkpoint import parse_subtask_key, subtask_key
from ..data.datasets import Augmentation, to_float
from ..io import ArtifactError, load_tensors, save_tensors
from ..data.subtasks import Subtask

STATS_FILE = "bn_cache.safetensors"
_SUFFIXES = (".running_mean", ".running_var")


class StatsCacheError(ArtifactError):
    """A BN-statistics cache (in memory or on disk) does not match the model it is meant for."""


# ---------------------------------------------------------------- recalibration

@torch.no_grad()
def recalibrate(net: nn.Module, forward: Callable[[Tensor], object], batches) -> BNStats:
    """Recompute BN running statistics as the exact average over `batches` of forward(x).

    The net's own statistics and train/eval mode are restored afterwards; the new ones are returned.
    """
    bns = bn_modules(net)
    if not bns:
        raise ValueError("the net has no BatchNorm layer to recalibrate (was BN folded?)")
    saved = get_bn_stats(net)
    was_training = net.training
    momenta = {n: m.momentum for n, m in bns.items()}
    for m in bns.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    net.train()
    seen = 0
    try:
        for x in batches:
            forward(x)
            seen += 1
        if seen == 0:
            raise ValueError("no calibration batch: the statistics would stay at mean 0, variance 1")
        return get_bn_stats(net)
    finally:
        for n, m in bns.items():
            m.momentum = momenta[n]
        set_bn_stats(net, saved)
        net.train(was_training)


@contextlib.contextmanager
def channels_last_weights(module: nn.Module) -> Iterator[nn.Module]:
    """The module's 4-D parameters and buffers in channels-last memory format for the duration; afterwards each
    holds exactly the tensor it held before (same storage, same values)."""
    saved = [(t, t.data) for t in (*module.parameters(), *module.buffers()) if t.dim() == 4]
    try:
        yield weights_layout(module, torch.channels_last)
    finally:
        for t, data in saved:
            t.data = data


def recalibrate_channels_last(net: nn.Module, forward: Callable[[Tensor], object],
                              batches: Callable[[], object]) -> BNStats:
    """`recalibrate` with the net's weights and the batches channels-last (on CPU 1.3-1.6x faster for the test
    MobileNetV2- and ResNet-18-style networks at width 16, 2-core Zen 4). A network whose forward needs the default
    layout (a `.view` of a feature map raises on channels-last strides) is calibrated again in that layout: the
    statistics start afresh either way. `batches()` gives a new iterable of the same batches each call."""
    try:
        with channels_last_weights(net):
            return recalibrate(net, lambda x: forward(x.contiguous(memory_format=torch.channels_last)), batches())
    except RuntimeError:
        return recalibrate(net, forward, batches())


# ---------------------------------------------------------------- what the statistics depend on

def _sha(data: bytes, n: int = 16) -> str:
    return hashlib.sha256(data).hexdigest()[:n]


def weights_fingerprint(net: nn.Module) -> str:
    """Short hash of every parameter and buffer other than BN statistics (what the statistics depend on)."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        if name.endswith((*_SUFFIXES, ".num_batches_tracked")):
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def masks_fingerprint(masks: Optional[dict]) -> str:
    """Short hash of a subtask's masks {site: tensor}: which channels each site keeps (its non-zero entries) and
    the shapes; "dense" for None (no masks). That is what the keep rule, rounding and a budget's cut decide. The
    scalings' values are left out: they follow from the weights and the condition, which a statistics key names
    on its own, and their last bits depend on the CPU's kernels (AVX2 and AVX-512 round differently), so a cache
    or a subnet id written on one machine would not be found on another."""
    if masks is None:
        return "dense"
    h = hashlib.sha256()
    for name in sorted(masks):
        kept = (masks[name].detach().to("cpu") != 0).to(torch.uint8).contiguous()
        h.update(f"{name}:{tuple(kept.shape)}:".encode() + kept.view(-1).numpy().tobytes())
    return h.hexdigest()[:16]


def images_fingerprint(images: Tensor) -> str:
    """Short hash of an image tensor's shape, dtype and bytes (names user-supplied calibration images)."""
    t = images.detach().cpu().contiguous()
    return _sha(f"{tuple(t.shape)}:{t.dtype}".encode() + t.view(-1).view(torch.uint8).numpy().tobytes())


@dataclass(frozen=True)
class CalibSpec:
    """How calibration batches are drawn: count, size, seed, augmentation and the images' source."""

    batches: int
    batch_size: int
    seed: int
    source: str  # e.g. "fashion_mnist:train:val5000@0", or "images:<hash>" for user-supplied images
    augmentation: Augmentation

    def __post_init__(self):
        if self.batches < 1 or self.batch_size < 1:
            raise ValueError(f"calibration needs >= 1 batch of >= 1 image, got {self.batches} x {self.batch_size}; "
                             "with none the statistics silently become mean 0, variance 1")

    def fingerprint(self) -> str:
        """Short hash of every field."""
        a = self.augmentation
        fields = (self.batches, self.batch_size, self.seed, self.source, a.crop_padding, a.hflip)
        if a.crop_scale:  # only where set: the statistics cached (and shipped) before it keep their keys
            fields += (a.crop_scale,)
        return _sha(repr(fields).encode(), 12)

    def count(self, n_images: int) -> int:
        """Batches drawn from n_images: `batches`, but no more than about four draws of each image (at least
        2 batches): 20 x 256 augmented draws of a 90-image folder would repeat each image 57 times, for nothing."""
        return min(self.batches, max(2, -(-4 * n_images // self.batch_size)))

    def stream(self, images: Tensor, device: torch.device) -> Iterator[Tensor]:
        """The calibration batches: seeded random draws from uint8 `images`, augmented as in training."""
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.count(len(images))):
            idx = torch.randint(0, len(images), (self.batch_size,), generator=gen)
            yield self.augmentation(to_float(images[idx]), gen).to(device)


@dataclass(frozen=True)
class StatsKey:
    """Everything one subtask's BN statistics depend on."""

    subtask: Optional[Subtask]  # None: the dense net
    text: Optional[str]  # the description a text-conditioned generator was conditioned on (None: canonical)
    rounding: Optional[str]  # e.g. "up16" / "nearest16" (None: the widths the keep rule gave)
    calib: str  # CalibSpec.fingerprint()
    weights: str  # weights_fingerprint() of the model
    masks: str = "-"  # masks_fingerprint() of the masks: the kept channels, whatever decided them (threshold,
    # min_keep, keep_multiple, rounding, a budget)

    def __str__(self) -> str:
        text = "-" if self.text is None else _sha(self.text.encode())
        return (f"{subtask_key(self.subtask)}|t={text}|r={self.rounding or '-'}~{self.masks}|c={self.calib}"
                f"|w={self.weights}")

    @property
    def tag(self) -> tuple:
        """What the masks depend on (subtask, text, rounding): the module's `stats_tag` when loaded."""
        return (subtask_key(self.subtask), self.text, self.rounding)


def _parse_key(key: str) -> tuple:
    """Check a cache key's form (subtask|t=..|r=..|c=..|w=..); raises ValueError naming the problem."""
    parts = key.split("|")
    if len(parts) != 5 or [p[:2] for p in parts[1:]] != ["t=", "r=", "c=", "w="]:
        raise ValueError(f"{key!r} is not a statistics key (subtask|t=..|r=..|c=..|w=..)")
    return (parse_subtask_key(parts[0]), *[p[2:] for p in parts[1:]])


# ---------------------------------------------------------------- the cache

class StatsCache:
    """BN statistics by StatsKey, every entry checked against the backbone's BN buffers (names, shapes, dtypes).
    `max_entries`: at most this many, the least recently used dropped first (None: no bound)."""

    def __init__(self, backbone: nn.Module, max_entries: Optional[int] = None):
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be at least 1 (or None), got {max_entries}")
        self.reference = {k: (tuple(v.shape), v.dtype) for k, v in get_bn_stats(backbone).items()}
        self.max_entries = max_entries
        self._entries: dict[str, BNStats] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: StatsKey | str) -> bool:
        return str(key) in self._entries

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, key: StatsKey | str) -> Optional[BNStats]:
        """The statistics stored under exactly this key, or None."""
        hit = self._entries.pop(str(key), None)
        if hit is not None:
            self._entries[str(key)] = hit  # most recently used last
        return hit

    def put(self, key: StatsKey | str, stats: BNStats) -> BNStats:
        """Store statistics after checking them; returns them."""
        _parse_key(str(key))
        self.check(stats, f"statistics for {key}")
        self._entries.pop(str(key), None)
        self._entries[str(key)] = out = {k: v.detach().cpu().clone() for k, v in stats.items()}
        while self.max_entries is not None and len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]
        return out

    def clear(self) -> None:
        self._entries.clear()

    def check(self, stats: BNStats, where: str) -> None:
        """Raise StatsCacheError unless `stats` has exactly the backbone's BN tensors, with their shapes and dtypes."""
        missing = sorted(set(self.reference) - set(stats))
        extra = sorted(set(stats) - set(self.reference))
        if missing or extra:
            raise StatsCacheError(f"{where}: tensors do not match the model's BN layers (missing: "
                                  f"{', '.join(missing[:4]) or 'none'}; unknown: {', '.join(extra[:4]) or 'none'})")
        for k, (shape, dtype) in self.reference.items():
            v = stats[k]
            if not torch.is_tensor(v) or tuple(v.shape) != shape or v.dtype != dtype:
                got = f"{tuple(v.shape)} {v.dtype}" if torch.is_tensor(v) else type(v).__name__
                raise StatsCacheError(f"{where}: {k} is {got}, the model's is {shape} {dtype}")
            if k.endswith(".running_var") and not bool((v >= 0).all() and torch.isfinite(v).all()):
                raise StatsCacheError(f"{where}: {k} holds negative or non-finite variances")
            if k.endswith(".running_mean") and not bool(torch.isfinite(v).all()):
                raise StatsCacheError(f"{where}: {k} holds non-finite means")

    def save(self, path: str | Path) -> None:
        """Write every entry to one safetensors file ("<key>/<bn tensor name>")."""
        flat = {f"{key}/{name}": v for key, st in self._entries.items() for name, v in st.items()}
        if flat:
            save_tensors(Path(path), flat)

    def load(self, path: str | Path) -> int:
        """Add every entry of a file written by save(); any malformed key or tensor rejects the whole file.
        Returns the number of entries read."""
        grouped: dict[str, BNStats] = {}
        for name, v in load_tensors(Path(path)).items():
            key, sep, tensor = name.partition("/")
            if not sep:
                raise StatsCacheError(f"{path}: tensor {name!r} is not named <key>/<bn tensor>; not a hypersan "
                                      "statistics cache")
            try:
                _parse_key(key)
            except ValueError as e:
                raise StatsCacheError(f"{path}: {e}; delete the file to recalibrate") from None
            grouped.setdefault(key, {})[tensor] = v
        for key, st in grouped.items():
            self.check(st, f"{path}, entry {key}")
        for key, st in grouped.items():
            self._entries[key] = st
        return len(grouped)
