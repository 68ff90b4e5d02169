"""Packages that read the names of one of their modules when first asked (no import cost before)."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable


def forward_names(package: str, module: str, submodules: Iterable[str]) -> Callable[[str], Any]:
    """A module-level __getattr__ for `package` that gives the names of `package.module`, imported on first use.
    The package's `submodules` are left to the import system (asking for one not imported yet must import it,
    not look for it in `module`)."""
    skip = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name.startswith("__") or name in skip:
            raise AttributeError(name)
        target = importlib.import_module(f"{package}.{module}")
        try:
            return getattr(target, name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
