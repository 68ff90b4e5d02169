"""Serving: pruned networks over HTTP (hypersan's v1 API and the Open Inference Protocol v2).

Modules: `wire` (image and tensor encodings), `service` (`SubnetService`: ids, bounded caches, the build queue),
`schemas` (request and response models), `v1` and `v2` (the routes), `app` (the ASGI app, its guard and errors,
and `serve`).

Imports: the package root, `language`, `data`, `nn`, `deploy` and `prune`.
`from hypersan.serve import create_app` reads the names of `app`.
"""
from ..lazy import forward_names

__getattr__ = forward_names(__name__, "app", ("app", "service", "schemas", "v1", "v2", "wire"))
