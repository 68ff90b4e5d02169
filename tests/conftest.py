import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hypersan.config import load_config
from hypersan.data.datasets import SYSTEM_FMNIST_DIR

# evaluations cache dense logits (hypersan.io.user_cache_dir): never in the user's home during tests
os.environ.setdefault("HYPERSAN_CACHE", tempfile.mkdtemp(prefix="hypersan-test-cache-"))

ROOT = Path(__file__).resolve().parents[1]
# an explicit $HYPERSAN_DATA is the only place looked at (hypersan does the same); unset, the system copy
HAVE_FMNIST = Path(os.environ.get("HYPERSAN_DATA") or SYSTEM_FMNIST_DIR, "train-images-idx3-ubyte.gz").exists()

needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed: "
                                  "`apt-get install dataset-fashion-mnist` (CI installs it)")


# `make test` runs the suite in one pytest-xdist worker per core. Each worker gets its share of the cores
# (THREADS), and torch.set_num_threads is held to that share in the worker, so the configs' `train.threads = 2`
# never puts two threads of each worker on one core. Run alone (plain `pytest`), a test has 2 threads as before.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # as xdist counts
THREADS = max(1, min(2, CORES // WORKERS)) if WORKERS > 1 else 2
set_threads_uncapped = torch.set_num_threads
if WORKERS > 1:
    torch.set_num_threads = lambda n: set_threads_uncapped(min(int(n), THREADS))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)


@pytest.fixture
def tiny_config():
    return load_config(ROOT / "configs" / "tiny.toml")


PATTERN_CLASSES = ["circle", "square", "cross", "stripes"]


def pattern_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three-channel 12x12 images whose class is a drawn pattern, with noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(PATTERN_CLASSES)
    x = rng.integers(0, 60, (n, 3, 12, 12)).astype(np.uint8)
    yy, xx = np.mgrid[:12, :12]
    shapes = [(yy - 6) ** 2 + (xx - 6) ** 2 < 12, (abs(yy - 6) < 4) & (abs(xx - 6) < 4),
              (yy == xx) | (yy == 11 - xx), yy % 3 == 0]
    for i, c in enumerate(y):
        x[i, c % 3][shapes[c]] = 250
    return x, y


def load_tool(name: str):
    """A script of tools/ imported as a module (tools/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
