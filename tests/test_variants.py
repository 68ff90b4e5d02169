"""`hypersan study variants`: variants scored beside an ablation, each against its dense arm and its peer."""
from hypersan.research import variants


def _sub(indices, acc, mac, fp=0.0):
    return {"indices": list(indices), "size": len(indices), "acc": acc, "mac_ratio": mac, "fp_rate": fp}


def test_a_variant_is_read_against_the_dense_arm_everywhere_and_against_the_peer_on_its_class_sets():
    result = {"dense": {"acc": 0.87},
              "subtasks": [_sub([1], 0.95, 0.04, fp=0.02), _sub([2], 0.97, 0.06, fp=0.01),
                           _sub([1, 2], 0.90, 0.08), _sub([1, 2, 3], 0.80, 0.10)]}
    dense = {(1,): {"acc": 0.96, "fp_rate": 0.01}, (2,): {"acc": 0.99, "fp_rate": 0.01},
             (1, 2): {"acc": 0.92}, (1, 2, 3): {"acc": 0.84}}
    peer = {(1, 2): {"acc": 0.93, "mac_ratio": 0.07}, (1,): {"acc": 0.97, "mac_ratio": 0.03}}
    r = variants.summarize(result, dense, peer)
    assert abs(r["all_gap"] - (-1 - 2 - 2 - 4) / 4) < 1e-9 and abs(r["all_mac"] - 0.07) < 1e-9
    assert abs(r["single_gap"] - (-1.5)) < 1e-9 and abs(r["single_fp"] - 0.015) < 1e-9 and r["dense_fp"] == 0.01
    assert r["peer_sets"] == 2 and abs(r["peer_gap"] - (-2.5)) < 1e-9  # (0.95-0.97, 0.90-0.93) on the peer's sets
    assert abs(r["mac"] - 0.06) < 1e-9 and abs(r["peer_mac"] - 0.05) < 1e-9
    text = variants.table({"lite": {**r, "train_s": 306.4}}, "tp_subset_ft_long")
    assert "| lite | 87.00% | -2.25, 0.070 | -1.50, 1.50% (1.00%) | -2.50, 0.060 / 0.050 | — | 306 |" in text
    none = variants.summarize({"dense": {"acc": 0.5}, "subtasks": [_sub([1, 2], 0.9, 0.1)]}, dense, {})
    assert none["single_gap"] is None and none["peer_gap"] is None
    assert "| x | 50.00% | -2.00, 0.100 | — | —, — / — | — | — |" in variants.table({"x": none}, "peer")


def test_rematch_reads_the_peer_pruned_to_the_runs_own_macs():
    import pytest

    result = {"dense": {"acc": 0.87, "macs": 1000},
              "subtasks": [_sub([1], 0.95, 0.02), _sub([1, 2], 0.90, 0.03), _sub([1, 2, 3], 0.80, 0.10)]}
    peer = {(1, 2): {"acc": 0.93, "mac_ratio": 0.07}, (1,): {"acc": 0.97, "mac_ratio": 0.05}}
    # the run's own ratios, on the peer's class sets only
    assert variants.rematch_targets(result, peer, 1000) == {(1,): 0.02, (1, 2): 0.03}
    with pytest.raises(ValueError, match="same architecture"):
        variants.rematch_targets(result, peer, 999)
    again = {(1, 2): {"acc": 0.89, "mac_ratio": 0.031}, (1,): {"acc": 0.94, "mac_ratio": 0.021}}
    r = variants.summarize(result, {k: {"acc": 1.0, "fp_rate": 0.0} for k in [(1,), (1, 2), (1, 2, 3)]}, peer, again)
    assert abs(r["rematch_gap"] - (1 + 1) / 2) < 1e-9 and abs(r["rematch_mac"] - 0.026) < 1e-9
    assert "| +1.00, 0.026 |" in variants.table({"small": {**r, "train_s": 1.0}}, "peer")


def test_finished_runs_follow_links_and_skip_unfinished_ones(tmp_path):
    from hypersan.research.sweep import finished_runs

    done, half, target = tmp_path / "runs" / "a", tmp_path / "runs" / "b", tmp_path / "elsewhere" / "m"
    for p in (done, half, target):
        p.mkdir(parents=True)
    (done / "done").touch()
    (target.parent / "m.time.json").write_text("{}")  # a model an ablation trained
    (tmp_path / "runs" / "lite").symlink_to(target, target_is_directory=True)
    assert list(finished_runs(tmp_path / "runs")) == ["a", "lite"]
    (done / "train_state.json").write_text('{"history": [{"seconds": 1.5}, {"seconds": 2.0}]}')
    assert variants.train_seconds(done) == 3.5 and variants.train_seconds(half) is None
