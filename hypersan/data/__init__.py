"""Data: the data sets, their class subsets, and the glyph builder.

Modules: `datasets` (Fashion-MNIST IDX files, dataset folders, splits, augmentation), `imagefolder`
(train/val/test folders of images), `glyphs` (characters rendered from font files), `subtasks` (class sets:
canonical form, held-out combinations, sampling).

Imports: the package root and `language`. `from hypersan.data import load_dataset` reads the names of
`datasets`.
"""
from __future__ import annotations

import importlib
from typing import Any


_SUBMODULES = ("datasets", "imagefolder", "glyphs", "subtasks")


def __getattr__(name: str) -> Any:
    if name.startswith("__") or name in _SUBMODULES:  # a submodule not imported yet: the import system's to find
        raise AttributeError(name)
    module = importlib.import_module(f"{__name__}.datasets")
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
