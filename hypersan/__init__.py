"""hypersan: subtask-adaptive networks with a mask-generating hypernetwork.

The data flow: request -> `language` (vocabulary, grounding, descriptions, text) -> `nn` (generators, masks,
SubtaskAdaptiveNet, a plain nn.Module) -> `prune` (statistics, surgery; the PruningEngine ties the steps
together for users) -> `deploy` (export, runtimes). `data` reads the data sets, `training` trains and evaluates,
`research` runs ablations and benchmarks, `serve` serves pruned nets over HTTP, and `cli` is a thin layer over
all of them. docs/DESIGN.md draws the layers and what each may import.

The names below are imported when first used (`from hypersan import PruningEngine` works as ever), so that
`import hypersan` and the command line's quick paths do not pay for importing torch.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

from .version import __version__

_LAZY = {"Config": "config", "ConfigError": "config", "load_config": "config",
         "SubtaskAdaptiveNet": "nn.model", "PruningEngine": "prune.engine",
         "load_subnet": "deploy.export", "save_subnet": "deploy.export", "adapt": "training.adapt",
         "finetune_subnet": "training.finetune"}

# Modules that moved into subpackages: their old names still import (with a DeprecationWarning) for one
# release. `hypersan.data`, `hypersan.serve` and `hypersan.cli` are packages now that read their old names.
_MOVED = {
    "words": "language.words", "vocabulary": "language.vocabulary", "text": "language.text",
    "descriptions": "language.descriptions", "grounding": "language.grounding",
    "imagefolder": "data.imagefolder", "glyphs": "data.glyphs", "subtasks": "data.subtasks",
    "backbones": "nn.backbones", "masks": "nn.masks", "generators": "nn.generators", "losses": "nn.losses",
    "checkpoint": "nn.checkpoint", "model": "nn.model", "subnet": "nn.subnet",
    "export": "deploy.export", "quantize": "deploy.quantize", "runtimes": "deploy.runtimes",
    "metrics": "prune.metrics", "stats": "prune.stats", "surgery": "prune.surgery", "engine": "prune.engine",
    "optim": "training.optim", "distributed": "training.distributed", "evaluate": "training.evaluate",
    "train": "training.train", "baselines": "research.baselines", "ablate": "research.ablate",
    "ablation_report": "research.report", "bench": "research.bench", "wire": "serve.wire", "demo": "cli.demo",
}

__all__ = ["Config", "ConfigError", "load_config", "SubtaskAdaptiveNet", "PruningEngine", "load_subnet",
           "save_subnet", "adapt", "finetune_subnet", "__version__"]


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `hypersan.<old>` as the module it moved to, once, with a DeprecationWarning."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, old = fullname.partition(".")
        if head != __name__ or old not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = f"{__name__}.{_MOVED[spec.name.partition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there (the old name goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hypersan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
