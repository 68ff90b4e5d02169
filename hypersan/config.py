"""Experiment configuration: TOML files read into dataclasses with strict keys and types."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file or override is malformed: unknown key, wrong type or bad value."""


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"  # fashion_mnist | cifar10 | cifar100 | folder | imagefolder (your own: data_dir)
    data_dir: str = ""  # empty: $HYPERSAN_DATA, then the system location; folder: train.npz, test.npz, dataset.json
    train_limit: int = 0  # >0: only the first N training images (a folder read class by class: each class its share)
    test_limit: int = 0  # >0: use only the first N test images; 0: all
    val_size: int = 0  # validation images held out of the training data (stratified, seeded); auto: 0 = val_fraction
    val_fraction: float = 0.1  # auto: the share of training images held out for validation (stratified, seeded)
    val_seed: int = 0  # seed of the validation split
    # auto: the data set's own validation split where it has one (an image folder's val/, a folder's val.npz), else
    # val_size images (when > 0) or val_fraction of the training images | sample: val_size images (0: none) |
    # dataset: the data set's own validation split (a folder with val.npz, such as glyphs)
    val_split: str = "auto"
    crop_padding: int = 2  # training augmentation: random crops after zero padding by this many pixels
    hflip: bool = True  # training augmentation: random horizontal flips
    # training augmentation for photos: > 0 = random resized crops in place of crop_padding's (torchvision's
    # RandomResizedCrop: an area of U(crop_scale, 1) of the image's, aspect 3/4 to 4/3, resized back); 0 = none
    crop_scale: float = 0.0  # > 0: random resized crops of at least this share of the area (e.g. 0.08); 0 = none
    basic_subtasks: str = "classes"  # classes | groups (named groups become the basic subtasks)
    channels: int = 0  # imagefolder: 0 = from the images (grayscale: 1, else RGB: 3), or 1 / 3 to convert
    corrupt_images: str = "error"  # imagefolder: error (refuse a file Pillow cannot decode) | skip (leave out, counted)
    image_size: int = 0  # imagefolder: 0 = as they are (one size), or N: shorter side resized to N, centre crop
    # the net's input normalization, per channel of pixels in [0, 1]: [] = the training images' own (computed);
    # give the one your weights were trained with, e.g. ImageNet's [0.485, 0.456, 0.406] and [0.229, 0.224, 0.225]
    mean: list[float] = field(default_factory=list)  # per-channel mean subtracted; [] = the training images' mean
    std: list[float] = field(default_factory=list)  # per-channel std divided by; [] = the training images' std


@dataclass
class ModelConfig:
    arch: str = "resnet"  # resnet | vgg | custom (your own network, from factory; docs/CUSTOM.md)
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])  # channels of each stage (dense widths)
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1])  # resnet: blocks per stage; vgg: convs per stage
    factory: str = ""  # custom: "package.module:function" returning the nn.Module; called with kwargs, num_classes
    kwargs: dict[str, Any] = field(default_factory=dict)  # custom: keyword arguments of the factory
    weights: str = ""  # custom: your trained weights (.safetensors, or a state_dict file) that start training
    new_head: bool = False  # custom: the head starts afresh, not from model.weights (trained on other classes)
    scaling: bool = True  # custom: a scaling mask per channel group, as the built-in backbones have (always)


@dataclass
class GeneratorConfig:
    kind: str = "hypernet"  # hypernet | pertask
    conditioning: str = "multihot"  # multihot | text (sentence embedding of a description of the class set)
    encoder: str = ""  # text conditioning: sentence-transformers model name or path ("" = bundled all-MiniLM-L6-v2)
    phrasings: int = 8  # text conditioning: training descriptions per combination
    hidden: int = 256  # hypernet: width of the MLP's hidden layers
    linear_skip: bool = True  # hypernet: add a linear path from the condition to every utility head
    layers: int = 2  # hypernet: hidden layers of the MLP
    sigma: float = 1.0  # utility init ~ N(0, sigma)
    threshold: float = 0.1  # a channel is kept where |utility| > threshold
    surrogate_temp: float = 0.1  # width of the sigmoid surrogate gradient around the threshold
    min_keep: int = 1  # every site keeps at least this many channels (the top ones by utility)
    keep_multiple: int = 1  # kept counts rounded down to a multiple of this (16: AVX-512 conv blocks)
    round_to: str = ""  # builds round kept widths up to "auto" (CPU's block), "0" (exact), "8"; "": by network kind
    budget: bool = False  # budget-conditioned: the generator also reads a MAC budget (docs/BUDGETS.md)
    budget_min: float = 0.02  # the smallest budget (MAC ratio to the dense net) trained and accepted
    budget_free_share: float = 0.1  # share of training samples drawn with no limit (budget 1)
    budget_nested: bool = False  # budget-conditioned: one channel order per class set; nets nested across budgets


GAMMA_SIZE_MODES = ("constant", "linear", "quadratic")  # loss.gamma_size (see losses.sparsity_weights)


@dataclass
class LossConfig:
    beta: float = 4.0  # BCE weight on the classes of the sample's subtask
    gamma: float = 0.05  # weight of the L1 sparsity term on utilities
    gamma_size: str = "constant"  # constant | linear: per-sample gamma * (|C| - |T|) / (|C| - 1) | quadratic: its square
    budget_over: float = 4.0  # budget-conditioned: weight of the relative excess of MACs over the budget
    budget_under: float = 0.5  # budget-conditioned: weight of the relative shortfall (spare budget buys accuracy)
    distill: float = 0.0  # in-place distillation: share of the unmasked net's outputs in a masked batch's targets
    budget_monotone: float = 0.0  # budget-conditioned: weight of the hinge on a sample's loss rising with the budget
    budget_agree: float = 0.0  # budget-conditioned: weight of the disagreement of a sample's predictions at two budgets
    subset_share: float = 0.0  # share of each sample's BCE on its subtask's outputs; 0 = beta weighting (docs/RECIPE.md)
    size_power: float = 0.0  # each sample's BCE times (|T| / |C|) ** size_power: 0 = one scale for every class set
    sparsity_price: str = "uniform"  # uniform: every channel's utility weighs alike in the L1 | macs: by its MAC cost
    distill_over: str = "all"  # all: sigmoid targets on every output | subset: KL of the softmax over the subtask


@dataclass
class SubtaskConfig:
    size_weights: list[float] = field(default_factory=lambda: [1.0] * 10)  # P(size=k) for k = 1..len
    size_tail: float = 0.0  # the weight of each size after the list, up to all classes (0: none drawn)
    include_own: float = 0.8  # probability that a sample's subtask contains its own class
    dense_share: float = 0.2  # share of batches trained without masks (the dense path)
    holdout: list[list[str]] = field(default_factory=list)  # explicit combinations never sampled
    holdout_fraction: float = 0.0  # plus a seeded fraction of all combinations of size 2..K-1
    holdout_seed: int = 0  # seed of the held-out fraction
    sampling: str = "own"  # own: own class in the subtask with probability include_own | natural: drawn blind to the image
    sets_per_batch: int = 0  # >0: each masked batch is split into this many micro-batches of one class set each


@dataclass
class TrainConfig:
    seed: int = 0  # seeds initialization, data order, subtask sampling and augmentation
    epochs: int = 10  # passes over the training images
    min_steps: int = 0  # at least this many steps: a small data set trains ceil(min_steps / steps an epoch) epochs
    batch_size: int = 128  # images per step
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # backbone learning rate (peak of the cosine schedule)
    generator_lr: float = 1e-3  # mask generator learning rate (Adam)
    momentum: float = 0.9  # sgd only
    weight_decay: float = 5e-4  # backbone only
    warmup_epochs: float = 0.5  # linear warm-up before the cosine decay
    eval_every: int = 1  # epochs between evaluations (0: only at the end); scaled as min_steps stretches a run
    eval_subtasks: int = 8  # random subtasks checked at each periodic evaluation
    threads: int = 0  # torch threads; 0 leaves the default
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: auto or cuda give each process cuda:LOCAL_RANK)
    bf16: bool = False  # bf16 autocast of the backbone's forward in training; CUDA only (an error on CPU)
    dist_timeout: float = 1800.0  # distributed runs: seconds a process waits for the others before the run fails
    progress: bool = True  # a progress bar on a terminal (a line per epoch either way)
    init_from: str = ""  # a checkpoint whose backbone weights start this run (same backbone and classes); "" = random
    sandwich: bool = False  # every masked step also trains the unmasked body and the batch's cheapest class set


@dataclass
class CalibConfig:
    batches: int = 20  # training batches that BN statistics of a subtask are recalibrated on
    batch_size: int = 256  # images per calibration batch


@dataclass
class VocabConfig:
    """Words for requests in natural language, added to the dataset's vocabulary (see hypersan.language.grounding)."""

    synonyms: dict[str, list[str]] = field(default_factory=dict)  # class or group name -> extra words for it
    groups: dict[str, list[str]] = field(default_factory=dict)  # group name -> class names (new, or replacing one)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    subtasks: SubtaskConfig = field(default_factory=SubtaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return value coerced to tp, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(tp)
        return [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        key_tp, val_tp = typing.get_args(tp)
        return {_check_type(k, key_tp, where): _check_type(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is Any:  # a value of the TOML file as it is (a factory's keyword arguments)
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(repr(where + '.' + k if where else k) for k in unknown)}; "
                          f"allowed in [{where or 'top level'}]: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        sub = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], sub)
        else:
            kwargs[name] = _check_type(data[name], tp, sub)
    return cls(**kwargs)


def build_section(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """A dataclass (any strict config section, e.g. an ablation's) from nested dicts; unknown keys and wrong
    types are errors naming the key."""
    return _build(cls, data, where)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from nested dicts, rejecting unknown keys and wrong types."""
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare strings need no quotes on the command line
    return key.strip().split("."), value


def shipped_configs() -> Path | None:
    """hypersan's own `configs/` folder: the one beside the package in the checkout it runs from (`make setup`
    installs the checkout in place); None where the package was installed without it (a `configs` folder beside
    an installed package, in site-packages, is not hypersan's: the checkout's pyproject.toml marks it)."""
    root = Path(__file__).resolve().parent.parent
    return root / "configs" if (root / "configs").is_dir() and (root / "pyproject.toml").is_file() else None


def find_config(path: str | Path, what: str = "config file") -> Path:
    """The TOML file `path` names: the path itself where it exists, else one of hypersan's own configs, so that
    `folder`, `folder.toml`, `configs/folder.toml` and `sweeps/glyphs` work from any folder. A name found
    nowhere is a ConfigError naming the nearest shipped configs."""
    p = Path(path)
    if p.is_file():
        return p
    d = shipped_configs()
    if d is None or p.is_absolute():
        raise ConfigError(f"{what} {str(p)!r} not found")
    rel = Path(*p.parts[1:]) if len(p.parts) > 1 and p.parts[0] == "configs" else p
    for c in (d / rel, d / rel.parent / f"{rel.name}.toml"):
        if c.is_file():
            return c
    from .info import known_names

    names = sorted(x.relative_to(d).with_suffix("").as_posix() for x in d.rglob("*.toml"))
    raise ConfigError(f"{what} {str(p)!r} not found, here or among hypersan's configs in {d} "
                      f"({known_names(names, 'configs', near=rel.with_suffix('').as_posix(), hint=False)}); "
                      "give a path to a TOML file or one of those names")


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The tables of a TOML file (a path, or a name of hypersan's own configs: `find_config`); a missing file or
    invalid TOML is a ConfigError naming the file."""
    p = find_config(path, what)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (it is not UTF-8); give a TOML {what}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a TOML config (or defaults when path is None) and apply `section.key=value` overrides."""
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    for ov in overrides or []:
        keys, value = _parse_override(ov)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return config_from_dict(data)


# Valid range of every numeric config field as an interval (inf: no upper bound), and what the value means.
# Lists are checked element by element. A new numeric field needs an entry: validate() refuses a field without
# one, and tests/test_config.py checks every field against a valid and an invalid value.
RANGES: dict[str, tuple[str, str]] = {
    "data.train_limit": ("[0, inf)", "0 = every training image"),
    "data.test_limit": ("[0, inf)", "0 = every test image"),
    "data.val_size": ("[0, inf)", "validation images taken out of the training data; 0 = none"),
    "data.val_seed": ("[0, inf)", "seed of the validation split"),
    "data.val_fraction": ("[0, 1)", "a share of the training images; 0 = none"),
    "data.crop_padding": ("[0, inf)", "0 = no random crop"),
    "data.crop_scale": ("[0, 1]", "the least share of the image a random resized crop keeps; 0 = none"),
    "data.channels": ("[0, 3]", "0 = from the images; 1 or 3 converts (image folders); 2 is refused"),
    "data.image_size": ("[0, inf)", "0 = as they are; N: shorter side to N, then the centre N x N crop"),
    "data.mean": ("[0, 1]", "per-channel mean of pixels in [0, 1]; [] = the training images' own"),
    "data.std": ("(0, inf)", "per-channel std of pixels in [0, 1]; [] = the training images' own"),
    "model.widths": ("[1, inf)", "channels per stage"),
    "model.blocks": ("[1, inf)", "blocks (resnet) or convs (vgg) per stage"),
    "generator.phrasings": ("[1, inf)", "training descriptions per combination"),
    "generator.hidden": ("[1, inf)", "hidden units of the hypernetwork"),
    "generator.layers": ("[0, inf)", "hidden layers of the hypernetwork; 0 = linear"),
    "generator.sigma": ("(0, inf)", "standard deviation of the initial utilities"),
    "generator.threshold": ("[0, inf)", "utilities are non-negative"),
    "generator.surrogate_temp": ("(0, inf)", "the surrogate gradient divides by it"),
    "generator.min_keep": ("[1, inf)", "no layer may lose all its channels"),
    "generator.keep_multiple": ("[1, inf)", "1 = no rounding"),
    "loss.beta": ("[0, inf)", "weight of the subtask's classes in the BCE"),
    "loss.gamma": ("[0, inf)", "weight of the sparsity term; 0 = none"),
    "loss.budget_over": ("[0, inf)", "weight of MACs over the budget"),
    "loss.budget_under": ("[0, inf)", "weight of MACs under the budget; 0 = no pull"),
    "loss.distill": ("[0, 1]", "a share of the targets; 0 = no distillation"),
    "loss.budget_monotone": ("[0, inf)", "weight of the hinge; 0 = one budget per sample"),
    "loss.budget_agree": ("[0, inf)", "weight of the symmetric KL; 0 = none"),
    "generator.budget_min": ("(0, 1]", "a MAC ratio to the dense net"),
    "generator.budget_free_share": ("[0, 1]", "a share of training samples"),
    "subtasks.size_weights": ("[0, inf)", "relative probability of each subtask size"),
    "subtasks.size_tail": ("[0, inf)", "relative probability of each size after size_weights, up to all classes"),
    "subtasks.include_own": ("[0, 1]", "a probability"),
    "subtasks.sets_per_batch": ("[0, inf)", "micro-batches of one class set per masked batch; 0 = a set per sample"),
    "loss.subset_share": ("[0, 1]", "a share of each sample's loss; 0 = the beta weighting"),
    "loss.size_power": ("[0, 1]", "the power of |T| / |C| that scales each sample's loss; 0 = one scale for all"),
    "subtasks.dense_share": ("[0, 1]", "a share of batches"),
    "subtasks.holdout_fraction": ("[0, 1]", "a fraction of combinations"),
    "subtasks.holdout_seed": ("[0, inf)", "seed of the hashed holdout"),
    "train.seed": ("[0, inf)", "training seed"),
    "train.epochs": ("[1, inf)", "training epochs"),
    "train.min_steps": ("[0, inf)", "0 = exactly train.epochs"),
    "train.batch_size": ("[1, inf)", "training images per step"),
    "train.lr": ("(0, inf)", "backbone learning rate"),
    "train.generator_lr": ("(0, inf)", "generator learning rate"),
    "train.momentum": ("[0, 1)", "SGD momentum"),
    "train.weight_decay": ("[0, inf)", "0 = none"),
    "train.warmup_epochs": ("[0, inf)", "0 = no warmup"),
    "train.eval_every": ("[0, inf)", "epochs between evaluations; 0 = only at the end"),
    "train.eval_subtasks": ("[1, inf)", "subtasks checked at each evaluation"),
    "train.threads": ("[0, inf)", "0 = torch's default"),
    "train.dist_timeout": ("(0, inf)", "seconds before a silent process fails a distributed run"),
    "calib.batches": ("[1, inf)", "batches that estimate BN statistics"),
    "calib.batch_size": ("[1, inf)", "images per calibration batch"),
}

_INTERVAL = re.compile(r"([\[(])(-?[\d.]+), (-?[\d.]+|inf)([\])])")


def numeric_fields(cls: type = Config, where: str = "") -> dict[str, Any]:
    """Dotted key -> type of every numeric field (int, float, or a list of them) in a config dataclass."""
    out: dict[str, Any] = {}
    for name, tp in typing.get_type_hints(cls).items():
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            out.update(numeric_fields(tp, key))
        elif tp in (int, float) or (typing.get_origin(tp) is list and typing.get_args(tp)[0] in (int, float)):
            out[key] = tp
    return out


def _range_rule(spec: str) -> tuple[str, Any]:
    """('must be >= 0', test) for an interval like '[0, inf)'."""
    m = _INTERVAL.fullmatch(spec)
    if m is None:  # pragma: no cover - a typo in RANGES
        raise ValueError(f"bad interval {spec!r} in RANGES")
    lo_br, lo, hi, hi_br = m.groups()
    low, high = float(lo), float(hi)
    above = (lambda v: v >= low) if lo_br == "[" else (lambda v: v > low)
    below = (lambda v: v <= high) if hi_br == "]" else (lambda v: v < high)
    if hi == "inf":
        return f"must be {'>=' if lo_br == '[' else '>'} {lo}", above
    return f"must lie in {spec}", lambda v: above(v) and below(v)


def _check_range(key: str, value: Any) -> None:
    if key not in RANGES:
        raise ConfigError(f"config field {key} has no valid range; add one to hypersan.config.RANGES")
    spec, meaning = RANGES[key]
    rule, ok = _range_rule(spec)
    for sub, v in ([(f"{key}[{i}]", x) for i, x in enumerate(value)] if isinstance(value, list) else [(key, value)]):
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{sub} must be a finite number, got {v}; valid: {spec} ({meaning})")
        if not ok(v):
            raise ConfigError(f"{sub} {rule}, got {v!r} ({meaning})")


def parse_round_to(value: str, where: str = "--round-to") -> int | str:
    """A width multiple as written ("16", "0": none) or "auto" (the CPU's vector block): the int, or "auto"."""
    text = str(value).strip()
    if text == "auto":
        return text
    if text.isdigit():
        return int(text)
    raise ConfigError(f"{where} = {value!r}: give a width multiple such as 16, 0 (the exact widths), or auto")


def validate(cfg: Config) -> None:
    """Check value ranges and choices that types alone do not catch."""
    def choice(value: str, allowed: tuple[str, ...], where: str) -> None:
        if value not in allowed:
            raise ConfigError(f"{where} = {value!r}; choose one of {', '.join(map(str, allowed))}")

    choice(cfg.data.dataset, ("fashion_mnist", "cifar10", "cifar100", "folder", "imagefolder"), "data.dataset")
    choice(cfg.data.corrupt_images, ("error", "skip"), "data.corrupt_images")
    if cfg.data.channels == 2:
        raise ConfigError("data.channels = 2; choose 0 (from the images), 1 (grayscale) or 3 (RGB)")
    if cfg.data.image_size > 0 and cfg.data.dataset != "imagefolder":
        raise ConfigError(f"data.image_size = {cfg.data.image_size} resizes the images of an image folder (data.dataset "
                          f"= 'imagefolder'); the {cfg.data.dataset} images are read as they are: remove it")
    choice(cfg.data.basic_subtasks, ("classes", "groups"), "data.basic_subtasks")
    choice(cfg.data.val_split, ("auto", "sample", "dataset"), "data.val_split")
    if cfg.data.val_split == "dataset" and cfg.data.dataset not in ("folder", "imagefolder"):
        raise ConfigError("data.val_split = 'dataset' reads the validation split of a dataset folder (val.npz, or "
                          "an image folder's val/); "
                          f"{cfg.data.dataset} has none: use 'sample' (data.val_size images of the training data)")
    choice(cfg.model.arch, ("resnet", "vgg", "custom"), "model.arch")
    if cfg.generator.round_to:
        parse_round_to(cfg.generator.round_to, "generator.round_to")
    if (cfg.model.arch == "custom") != bool(cfg.model.factory):
        raise ConfigError("model.arch = 'custom' builds your network with model.factory = 'package.module:function'"
                          if cfg.model.arch == "custom" else
                          f"model.factory is read with model.arch = 'custom' only (it is {cfg.model.arch!r}); "
                          "set arch = 'custom', or remove factory")
    if not cfg.model.scaling and cfg.model.arch != "custom":
        raise ConfigError("model.scaling = false is read with model.arch = 'custom' only; the built-in backbones "
                          "always have their scaling sites")
    if cfg.model.weights and cfg.model.arch != "custom":
        raise ConfigError("model.weights loads your own network's trained weights (model.arch = 'custom'); a built-in "
                          "backbone starts from another hypersan run with train.init_from")
    if cfg.model.new_head and not cfg.model.weights:
        raise ConfigError("model.new_head = true starts the head afresh where model.weights loads the rest of the "
                          "network; set model.weights, or remove new_head")
    choice(cfg.generator.kind, ("hypernet", "pertask"), "generator.kind")
    choice(cfg.generator.conditioning, ("multihot", "text"), "generator.conditioning")
    if cfg.generator.budget and cfg.generator.kind != "hypernet":
        raise ConfigError("generator.budget = true feeds the budget to the hypernetwork; per-task masks take no input "
                          "but the class set: set generator.kind = 'hypernet', or generator.budget = false")
    if cfg.loss.budget_monotone > 0 and not cfg.generator.budget:
        raise ConfigError("loss.budget_monotone > 0 compares each sample's loss at two budgets; this model takes no "
                          "budget: set generator.budget = true, or loss.budget_monotone = 0")
    if cfg.loss.budget_agree > 0 and not cfg.generator.budget:
        raise ConfigError("loss.budget_agree > 0 compares each sample's predictions at two budgets; this model takes no "
                          "budget: set generator.budget = true, or loss.budget_agree = 0")
    if cfg.generator.budget_nested and not cfg.generator.budget:
        raise ConfigError("generator.budget_nested = true nests a budget-conditioned model's nets; this model takes "
                          "no budget: set generator.budget = true, or budget_nested = false")
    if cfg.generator.kind == "pertask" and cfg.generator.conditioning != "multihot":
        raise ConfigError("generator.kind = 'pertask' learns one vector per basic subtask and needs "
                          "generator.conditioning = 'multihot'; use kind = 'hypernet' for text conditioning")
    choice(cfg.loss.gamma_size, GAMMA_SIZE_MODES, "loss.gamma_size")
    choice(cfg.loss.sparsity_price, ("uniform", "macs"), "loss.sparsity_price")
    choice(cfg.loss.distill_over, ("all", "subset"), "loss.distill_over")
    choice(cfg.subtasks.sampling, ("own", "natural"), "subtasks.sampling")
    if cfg.train.sandwich and cfg.generator.budget:
        raise ConfigError("train.sandwich = true trains each batch's cheapest class set; a budget-conditioned model "
                          "trains every budget already: set train.sandwich = false")
    choice(cfg.train.optimizer, ("sgd", "adamw"), "train.optimizer")
    for key in numeric_fields():
        section, name = key.split(".")
        _check_range(key, getattr(getattr(cfg, section), name))
    if cfg.subtasks.sets_per_batch and cfg.subtasks.sampling != "natural":
        raise ConfigError("subtasks.sets_per_batch > 0 gives a micro-batch one class set whatever its images; that "
                          "is subtasks.sampling = 'natural' (set it), not 'own', which picks a set per image")
    if cfg.subtasks.sets_per_batch > cfg.train.batch_size:
        raise ConfigError(f"subtasks.sets_per_batch = {cfg.subtasks.sets_per_batch} exceeds train.batch_size = "
                          f"{cfg.train.batch_size}; a micro-batch needs at least one image")
    if len(cfg.model.widths) != len(cfg.model.blocks) or not cfg.model.widths:
        raise ConfigError(f"model.widths and model.blocks must be non-empty lists of the same length, got "
                          f"{cfg.model.widths} and {cfg.model.blocks}")
    if not cfg.subtasks.size_weights or sum(cfg.subtasks.size_weights) <= 0:
        raise ConfigError("subtasks.size_weights must be non-negative with a positive sum, e.g. [1.0, 1.0, 1.0]")
    if cfg.train.optimizer == "sgd" and cfg.train.momentum == 0:
        raise ConfigError("train.momentum = 0 with train.optimizer = 'sgd': Nesterov SGD needs a momentum in (0, 1)")


def reference_markdown() -> str:
    """docs/CONFIG.md: every section and key of Config with its type, default and the comment beside it in the
    source, generated from the dataclasses (`python tools/config_reference.py` rewrites the file; a test checks it
    is current)."""
    import inspect

    lines = ["# Config reference", "",
             "Generated from the dataclasses in `hypersan/config.py` by `python tools/config_reference.py`; a test "
             "fails when it is out of date. Every key can be set in a TOML config (`[section]` then `key = value`) "
             "or on the command line with `--set section.key=value`. Unknown keys and wrong types are errors. "
             "`--config` takes a path, or from any folder the name of one of hypersan's own configs in `configs/` "
             "(`--config folder` is `configs/folder.toml`).", ""]
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        cls = hints[f.name]
        comments, above = {}, []  # a key's inline comment, else the comment lines just above it
        for line in inspect.getsource(cls).splitlines():
            m = re.match(r"\s+(\w+):[^#]*(?:#\s*(.*))?$", line)
            if re.match(r"\s+#", line):
                above.append(line.strip()[1:].strip())
            elif m:
                comments[m.group(1)] = (m.group(2) or " ".join(above)).strip()
                above = []
            else:
                above = []
        doc = (cls.__doc__ or "").strip()
        lines += [f"## [{f.name}]", ""]
        if doc and not doc.startswith(cls.__name__ + "("):
            lines += [doc, ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        sub = typing.get_type_hints(cls)
        for g in dataclasses.fields(cls):
            default = g.default if g.default is not dataclasses.MISSING else g.default_factory()
            tp = getattr(sub[g.name], "__name__", None) if not typing.get_args(sub[g.name]) else None
            tp = tp or str(sub[g.name]).replace("typing.", "")
            text = comments.get(g.name, "").replace("|", "\\|")
            lines.append(f"| `{g.name}` | {tp} | `{json.dumps(default)}` | {text} |")
        lines.append("")
    return "\n".join(lines)
