"""Checkpoint folders on disk: where they are, what they hold, and the names used to file their contents.

A checkpoint folder holds config.json, dataset.json, meta.json, model.safetensors and, optionally, the BN
statistics cache (bn_cache.safetensors, see hypersan.prune.stats). This module reads the JSON parts and names
things; it knows nothing of the network, so every layer above it may use it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, config_from_dict
from ..info import DatasetInfo
from ..io import ArtifactError, read_json
from ..shipped import DEFAULT, SHIPPED

if TYPE_CHECKING:
    from ..data.subtasks import Subtask

CHECKPOINT_FORMAT = 1
CHECKPOINT_KIND = "checkpoint"  # the marker kind of a checkpoint folder (see io.atomic_dir)
DENSE = "dense"


def subtask_key(subtask: Subtask | None) -> str:
    """String name of a subtask in files and cache keys ("dense" for the unmasked net, "7-8" for (7, 8))."""
    return DENSE if subtask is None else "-".join(map(str, subtask))


def parse_subtask_key(key: str) -> Subtask | None:
    """Inverse of subtask_key; raises ValueError on anything else."""
    if key == DENSE:
        return None
    try:
        out = tuple(int(p) for p in key.split("-"))
    except ValueError:
        raise ValueError(f"{key!r} is not a subtask key (\"dense\" or class indices joined by '-')") from None
    if not out or list(out) != sorted(set(out)) or out[0] < 0:
        raise ValueError(f"{key!r} is not a canonical subtask key (sorted, distinct, non-negative indices)")
    return out


def default_checkpoint(name: str = DEFAULT) -> Path:
    """A model shipped inside the package (default: `shipped.DEFAULT`)."""
    if name not in SHIPPED:
        raise ArtifactError(f"no shipped model {name!r}; shipped: {', '.join(SHIPPED)}")
    return Path(__file__).resolve().parents[1] / "pretrained" / name


def resolve_checkpoint(path: str | os.PathLike | None) -> Path:
    """A checkpoint directory, or the name of a shipped model when no such directory exists (None: default)."""
    if path is None:
        return default_checkpoint()
    p = Path(path)
    if not p.exists() and str(path) in SHIPPED:
        return default_checkpoint(str(path))
    shipped = f"name a shipped model ({', '.join(SHIPPED)}) or a checkpoint folder"
    if p.is_file():
        raise ArtifactError(f"{str(p)!r} is a file, not a checkpoint folder: {shipped} (hypersan train --out FOLDER "
                            "writes one)")
    if not p.is_dir():
        raise ArtifactError(f"checkpoint folder {str(p)!r} not found: {shipped}")
    marker = p / ".hypersan.json"
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (ValueError, AttributeError, OSError):
            kind = None
        if kind == "artifact":
            raise ArtifactError(f"{str(p)!r} is a subnet artifact (a pruned net for one class set), not a "
                                "checkpoint: load it with hypersan.load_subnet, or give the checkpoint it was pruned "
                                "from")
    return p


def read_checkpoint(path: str | os.PathLike | None) -> tuple[Path, Config, DatasetInfo, dict]:
    """(folder, config, vocabulary, meta) of a checkpoint, every JSON part checked; the weights stay on disk."""
    p = resolve_checkpoint(path)
    meta = read_json(p / "meta.json")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise ArtifactError(f"{p}: checkpoint format {got!r} is not supported "
                            f"(this hypersan reads format {CHECKPOINT_FORMAT})")
    raw = read_json(p / "config.json")
    if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
        raw["data"].setdefault("val_size", 0)  # written before validation splits existed: trained on every image
        raw["data"].setdefault("val_split", "sample")  # written before "auto": val_size images were held out
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        # written before custom networks had scaling sites (the built-in backbones always had theirs)
        raw["model"].setdefault("scaling", raw["model"].get("arch") != "custom")
    try:
        config = config_from_dict(raw)
    except ValueError as e:
        raise ArtifactError(f"{p / 'config.json'}: {e}") from None
    try:
        info = DatasetInfo.from_dict(read_json(p / "dataset.json"))
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{p / 'dataset.json'}: {e}") from None
    return p, config, info, meta


def checkpoint_vocabulary(path: str | os.PathLike | None) -> DatasetInfo:
    """A checkpoint's vocabulary: its dataset.json, extended by the [vocab] section of its config.json."""
    from ..language.vocabulary import extend_vocabulary

    p = resolve_checkpoint(path)
    if not (p / "dataset.json").is_file():
        raise ArtifactError(f"{p}: no dataset.json; is this a hypersan checkpoint directory?")
    try:
        info = DatasetInfo.from_dict(read_json(p / "dataset.json"))
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{p / 'dataset.json'}: {e}") from None
    if (p / "config.json").is_file():
        vocab = config_from_dict({"vocab": read_json(p / "config.json").get("vocab", {})}).vocab
        info = extend_vocabulary(info, vocab.synonyms, vocab.groups)
    return info
