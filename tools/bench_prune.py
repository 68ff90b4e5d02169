"""Benchmark physical pruning on a checkpoint (default: the default shipped model): same as `hypersan bench`.

    python tools/bench_prune.py [--checkpoint DIR] [--json] [--round-to 8] [--subtasks size=2,n=6 ...]

Dense, masked and pruned forwards are timed side by side in one process (2 threads, batch 256, 10 timed
rounds after 3 warm-up rounds, by default; latency ratios are medians of per-round ratios); see
hypersan/research/bench.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hypersan.cli.commands import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
