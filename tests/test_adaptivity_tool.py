"""hypersan study adaptivity (hypersan.research.adaptivity): per-subtask nets against the all-classes net with its head cut, on a tiny checkpoint."""

import pytest

from hypersan.config import load_config
from hypersan.data.datasets import FASHION_MNIST
from hypersan.nn.model import SubtaskAdaptiveNet

from .conftest import ROOT, needs_fmnist


def _tool():
    from hypersan.research import adaptivity

    return adaptivity


@needs_fmnist
def test_pairs_and_the_all_classes_subtask_equals_the_agnostic_net(tmp_path):
    model = SubtaskAdaptiveNet(load_config(ROOT / "configs" / "tiny.toml"), FASHION_MNIST)
    model.save_pretrained(tmp_path / "ck")
    r = _tool().measure(str(tmp_path / "ck"), "val", per_size=1, log=lambda m: None, max_pairs=3)
    assert r["images"] == 256
    sizes = {s["size"]: s for s in r["by_size"]}
    assert sizes[2]["n"] == 3 and sorted(sizes) == list(range(1, 11))
    every = sizes[10]  # the all-classes subtask's own net is the agnostic net: same masks, statistics and head
    assert every["acc"] == pytest.approx(every["agnostic_acc"], abs=1e-9)
    assert every["mac_vs_agnostic"] == pytest.approx(1.0)
    for s in r["by_size"]:
        assert 0 < s["mac_ratio"] <= 1 and 0 <= s["acc"] <= 1
        # one body for every subtask: only the head's rows change its MACs
        assert s["agnostic_mac_ratio"] == pytest.approx(r["agnostic_all_classes_mac"], rel=0.01)
    assert "MACs adaptive/agnostic" in _tool().format_result(r)
