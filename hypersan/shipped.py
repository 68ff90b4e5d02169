"""The models shipped inside the package, by name (no torch import, so the CLI can list them cheaply)."""
from __future__ import annotations

DEFAULT = "fmnist"

SHIPPED = {
    "fmnist": "Fashion-MNIST, widths free per channel (the default)",
    "fmnist_b16": "Fashion-MNIST, widths in multiples of 16 (faster pruned nets on AVX-512 CPUs, less accurate)",
}


def checkpoint_help() -> str:
    """Help text for a --checkpoint option: a directory or one of the shipped names."""
    names = ", ".join(f"{n} (the default)" if n == DEFAULT else n for n in SHIPPED)
    return f"checkpoint directory, or a shipped model: {names}"
