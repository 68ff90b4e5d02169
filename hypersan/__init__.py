"""hypersan: subtask-adaptive networks with a mask-generating hypernetwork.

The data flow, one module per step: request -> grounding (vocabulary, grounding) -> condition (descriptions,
text) -> generator (generators, masks) -> model (SubtaskAdaptiveNet, a plain nn.Module) -> statistics
(stats) -> surgery (surgery, subnet) -> artifact (export); the engine (PruningEngine) ties them together
for users, and the CLI is a thin layer over it.

The names below are imported when first used (`from hypersan import PruningEngine` works as ever), so that
`import hypersan` and the command line's quick paths do not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_LAZY = {"Config": "config", "ConfigError": "config", "load_config": "config", "SubtaskAdaptiveNet": "model",
         "PruningEngine": "engine", "load_subnet": "export", "save_subnet": "export"}

__all__ = ["Config", "ConfigError", "load_config", "SubtaskAdaptiveNet", "PruningEngine", "load_subnet",
           "save_subnet", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hypersan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
