import os
from pathlib import Path

import pytest
import torch

from hypersan.config import load_config
from hypersan.data.datasets import SYSTEM_FMNIST_DIR

ROOT = Path(__file__).resolve().parents[1]
# an explicit $HYPERSAN_DATA is the only place looked at (hypersan does the same); unset, the system copy
HAVE_FMNIST = Path(os.environ.get("HYPERSAN_DATA") or SYSTEM_FMNIST_DIR, "train-images-idx3-ubyte.gz").exists()

needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed: "
                                  "`apt-get install dataset-fashion-mnist` (CI installs it)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def tiny_config():
    return load_config(ROOT / "configs" / "tiny.toml")
