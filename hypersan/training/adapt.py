"""`hypersan.adapt`: your own network, made subtask-adaptive on your own image folder, in one call.

    import hypersan
    from mypkg.models import build          # returns an nn.Module mapping (B, C, H, W) to (B, num_classes)

    engine = hypersan.adapt(build, "data/my-images", "runs/mine", kwargs={"width": 16})
    net = engine.subnet(["cat", "dog"])     # a physically smaller copy of your network, for those classes
    engine.export(["cat", "dog"], "cat-dog", formats="safetensors,pt2,onnx")

It writes the config that `hypersan train` would read (`[model] arch = "custom"`, `[data] dataset =
"imagefolder"`), trains with the same trainer, and returns the checkpoint's PruningEngine. It takes the function
that builds the network, not a built network: the checkpoint rebuilds the network by calling it (nothing is
pickled), so it must be importable by name ("package.module:function").
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

from torch import nn

from ..config import ConfigError, load_config, validate
from ..prune.engine import PruningEngine
from .train import train


# adapt's settings where no config is given, on top of the dataclass defaults: a run takes at least 1,000 steps
# (configs/folder.toml asks the same), or a small folder trains only a few dozen: on 10 Fashion-MNIST classes of 30
# images the dense net reached 49.6% of the validation images after 30 epochs (150 steps) and 79.3% after 1,000
# steps (docs/RESULTS.md, *Small folders train for a number of steps*). The masks keep widths in blocks of 16
# channels from the first step (generator.keep_multiple), with a lighter sparsity weight: a small CNN of 32 and 64
# channels trained with free widths kept every channel once its widths were rounded up to the CPU's block at the
# build (1.000 of the MACs, 0.99 of the dense time); in blocks, its pairs kept 0.362 of the MACs and ran in 0.42
# of the time, 93.80% against 94.00% of the validation images (loss.gamma 0.02; the default 0.05: 92.35% at
# 0.256; docs/RESULTS.md, *Small folders train in blocks of 16 channels*). `overrides` and `config` replace them.
DEFAULTS = ("train.min_steps=1000", "generator.keep_multiple=16", "loss.gamma=0.02")


def factory_name(factory: str | Callable[..., nn.Module]) -> str:
    """"package.module:function" for a factory given as that string or as the function itself."""
    if isinstance(factory, str):
        return factory
    if isinstance(factory, nn.Module):
        raise ConfigError("adapt() takes the function that builds your network, not a built network: checkpoints "
                          "rebuild it by calling that function (nothing is pickled). Pass e.g. mypkg.models.build "
                          "or 'mypkg.models:build', and its keyword arguments as kwargs=")
    if not callable(factory):
        raise ConfigError(f"adapt() takes a network's factory function, not a {type(factory).__name__}")
    module, qual = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qual or "<lambda>" in qual:
        raise ConfigError(f"{qual or factory!r} cannot be imported by name from another process (it lives in "
                          f"{module or 'no module'}{', inside a function' if '<locals>' in qual else ''}); define "
                          "it at the top level of a module on the Python path, so checkpoints can rebuild the network")
    return f"{module}:{qual}"


def adapt(factory: str | Callable[..., nn.Module], data_dir: Optional[str | os.PathLike], out: str | os.PathLike,
          *, kwargs: Optional[dict] = None, config: Optional[str | os.PathLike] = None,
          overrides: Sequence[str] = (), resume: bool = False, force: bool = False,
          weights: Optional[str | os.PathLike] = None, new_head: bool = False,
          mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
          log: Callable[[str], None] = print) -> PruningEngine:
    """Train your network subtask-adaptively on an image folder and return its PruningEngine.

    `factory`: the function that builds the network (or its name, "package.module:function"), called with `kwargs`
    and `num_classes`. `data_dir`: the image folder (`train/<class>/*.png|jpg`, optionally `val/` and `test/`;
    docs/DATA.md), or None to keep the config's data. `config`: a TOML config to start from (the defaults
    otherwise, and `DEFAULTS`: at least 1,000 training steps however small the folder, widths in blocks of 16
    channels); `overrides`:
    "section.key=value" strings on top. `out`: the checkpoint folder, written after every epoch; `resume`
    continues it, `force` replaces an earlier run there (never another folder).
    `weights`: your network's trained weights (.safetensors, or a state_dict file read with weights_only=True),
    loaded before joint training starts (`[model] weights`). `new_head`: the weights were trained on other
    classes (ImageNet's 1,000, say): every tensor but the head's is loaded, and the head starts afresh for the
    folder's classes (`[model] new_head`). `mean`, `std`: the per-channel normalization the weights were trained
    with, for pixels in [0, 1] (torchvision's ImageNet weights: [0.485, 0.456, 0.406] and [0.229, 0.224, 0.225];
    `[data] mean`, `std`); by default the network sees images normalized with the folder's own mean and std."""
    norm = [f"data.{key}={[float(v) for v in values]}" for key, values in (("mean", mean), ("std", std))
            if values is not None]
    base = [] if data_dir is None else ['data.dataset="imagefolder"', f"data.data_dir={str(data_dir)!r}"]
    cfg = load_config(config, [*base, 'model.arch="custom"', f"model.factory={factory_name(factory)!r}",
                               *(DEFAULTS if config is None else ()), *overrides, *norm,
                               *([] if weights is None else [f"model.weights={str(weights)!r}"]),
                               *(["model.new_head=true"] if new_head else [])])
    if kwargs is not None:
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ConfigError(f"kwargs must be a dict of keyword arguments, not {kwargs!r}")
        cfg.model.kwargs = dict(kwargs)
        validate(cfg)
    train(cfg, out, resume=resume, force=force, log=log)
    return PruningEngine.from_pretrained(out)


__all__ = ["DEFAULTS", "adapt", "factory_name"]
