"""The models shipped inside the package, by name (no torch import, so the CLI can list them cheaply)."""
from __future__ import annotations

DEFAULT = "fmnist_b16"

SHIPPED = {
    "fmnist_b16": "Fashion-MNIST, kept widths in multiples of 16, the channel block of AVX-512 convolutions",
    "fmnist": "Fashion-MNIST, kept widths free per channel (fewer MACs, slower pruned nets on AVX-512 CPUs)",
    "fmnist_budget": "Fashion-MNIST, budget-conditioned: a net for any class set at any MAC budget in [0.05, 1] "
                     "(prune --budget 0.1, or 'under 10% of the compute' in words)",
    "glyphs": "135 characters (digits, Latin, Greek, Cyrillic letters) from real fonts; the named groups' statistics "
              "are shipped, other class sets calibrate on the glyph set (make glyphs)",
    "glyphs_budget": "the 135 glyph classes, budget-conditioned (MAC budgets in [0.05, 1]; guard=True for accuracy "
                     "that rises with the budget); calibrates on the glyph set (make glyphs)",
    **{f"glyphs_dense_w{w}": f"the glyph study's class-agnostic curve: a dense net of stage widths {w}/{2 * w}/{4 * w}, "
                             "trained without masks (8 epochs); every class set is its body with the head cut"
       for w in (2, 4, 8, 16)},
}


def checkpoint_help() -> str:
    """Help text for a --checkpoint option: a directory or one of the shipped names."""
    names = ", ".join(f"{n} (the default)" if n == DEFAULT else n for n in SHIPPED)
    return f"checkpoint directory, or a shipped model: {names}"
