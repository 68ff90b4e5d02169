"""The command line: `hypersan <command>` (`main`), and the demo it runs.

Imports: anything. Every command imports what it needs when it runs, so that quick commands stay quick.
"""
from __future__ import annotations


def main(argv=None) -> int:
    """`hypersan ...`: see `hypersan.cli.commands.main`."""
    from .commands import main as run

    return run(argv)
