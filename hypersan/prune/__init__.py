"""Pruning: from a class set to a smaller network.

Modules, bottom to top: `metrics` (MACs, accuracy, AP), `stats` (BN statistics per class set, keyed and cached),
`surgery` (physical removal of channels, BN folding), `engine` (`PruningEngine`: masks -> statistics -> surgery
-> artifact).

Imports: the package root, `language`, `data`, `nn` and `deploy`.
"""
