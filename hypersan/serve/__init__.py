"""Serving: pruned networks over HTTP (hypersan's v1 API and the Open Inference Protocol v2).

Modules: `wire` (image and tensor encodings), `service` (`SubnetService`: ids, bounded caches, the build queue),
`schemas` (request and response models), `v1` and `v2` (the routes), `app` (the ASGI app, its guard and errors,
and `serve`).

Imports: the package root, `language`, `data`, `nn`, `deploy` and `prune`.
`from hypersan.serve import create_app` reads the names of `app`.
"""
from __future__ import annotations

import importlib
from typing import Any


_SUBMODULES = ("app", "service", "schemas", "v1", "v2", "wire")


def __getattr__(name: str) -> Any:
    if name.startswith("__") or name in _SUBMODULES:  # a submodule not imported yet: the import system's to find
        raise AttributeError(name)
    module = importlib.import_module(f"{__name__}.app")
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
