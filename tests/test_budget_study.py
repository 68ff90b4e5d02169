"""The budget study's analysis (hypersan.research.budget_study) on hand-made rows: the budget met, the gap to the fixed-γ
front at the budget model's own MACs, and the share of class sets whose accuracy does not fall with the budget."""

import importlib

import pytest



@pytest.fixture(scope="module")
def study():
    return importlib.import_module("hypersan.research.budget_study")


def _budget_rows(study, accs_of):
    rows = []
    for classes, accs in accs_of.items():
        for b, acc in zip(study.BUDGETS, accs):
            rows.append({"classes": list(classes), "budget": b, "mac_ratio": b - 0.01, "generated_mac_ratio": b * 1.05
                         if classes == (0, 1) and b == 0.2 else b - 0.01, "acc_val": acc, "acc_test": acc})
    return rows


def test_the_analysis_counts_met_budgets_rising_sets_and_the_gap_to_the_family(study):
    assert len(study.BUDGETS) == 5
    rising = (0.90, 0.91, 0.93, 0.93, 0.94)
    dip = (0.90, 0.897, 0.93, 0.935, 0.94)  # loses 0.3 pt from the first budget to the second
    small_dip = (0.90, 0.899, 0.93, 0.93, 0.94)  # loses 0.1 pt: within the 0.2 pt allowed
    rows = _budget_rows(study, {(0, 1): rising, (2, 3): dip, (4, 5): small_dip})
    rows[-1]["mac_ratio"] = rows[-1]["budget"] + 0.006  # one case over budget + 0.005
    # the family: two fixed models per class set at 0.15 and 0.25 of the MACs, 0.92 and 0.94
    fixed = {name: [{"classes": list(t), "mac_ratio": m, "acc_val": a, "acc_test": a}
                    for t in [(0, 1), (2, 3), (4, 5)]] for name, m, a in [("g4", 0.15, 0.92), ("g1", 0.25, 0.94)]}
    dense = [{"classes": list(t), "acc_val": 0.95, "acc_test": 0.95} for t in [(0, 1), (2, 3), (4, 5)]]
    a = study.analyse(rows, fixed, dense, "test")
    assert a["cases"] == 15 and a["budget_met"] == pytest.approx(14 / 15)
    assert a["rising_share"] == pytest.approx(2 / 3)
    assert a["falls_per_step"] == [1, 0, 0, 0]  # the dip's 0.3 pt, from the first budget to the second
    at_02 = a["per_budget"]["0.2"]  # MACs 0.19: the family gives 0.92 + 0.4 x 0.02 = 0.928 there
    assert at_02["family_compared"] == 3
    assert at_02["vs_family_pt"] == pytest.approx(100 * (0.93 - 0.928), abs=1e-6) and at_02["family_within_0.3pt"]
    # at the budget asked for (0.2 of the MACs, where the family gives 0.93) rather than the 0.19 the nets use
    assert at_02["vs_family_at_budget_pt"] == pytest.approx(0.0, abs=1e-6)
    assert a["per_budget"]["0.08"]["family_compared"] == 0 and a["per_budget"]["0.08"]["vs_family_pt"] is None
    assert at_02["vs_dense_pt"] == pytest.approx(-2.0)
    assert a["generated_over"] == 1 and a["generated_over_max"] == pytest.approx(1.05)
    assert a["family"]["g4"] == {"acc": pytest.approx(0.92), "mac_ratio": pytest.approx(0.15)}
    assert "rising_one_image_share" not in a
    assert a["family_rising_share"] == 1.0  # every class set: 0.92 at 0.15 of the MACs, then 0.94 at 0.25
    fixed["g1"][1]["acc_test"] = 0.917  # (2, 3) loses 0.3 pt from the smaller model to the larger
    assert study.analyse(rows, fixed, dense, "test")["family_rising_share"] == pytest.approx(2 / 3)
    fixed["g1"][1]["acc_test"] = 0.94
    alone = study.analyse(rows, {}, dense, "test")  # no family given: no comparison with one
    assert alone["family_rising_share"] is None
    assert alone["family"] == {} and all(v["vs_family_pt"] is None for v in alone["per_budget"].values())
    # with 250 images per class set one image is 0.4 pt: the 0.3-pt dip is within one image; with 500 it is not
    a = study.analyse(rows, fixed, dense, "test", {(0, 1): 250, (2, 3): 250, (4, 5): 250})
    assert a["rising_share"] == pytest.approx(2 / 3) and a["rising_one_image_share"] == 1.0
    assert a["images_median"] == 250
    a = study.analyse(rows, fixed, dense, "test", {(0, 1): 500, (2, 3): 500, (4, 5): 500})
    assert a["rising_one_image_share"] == pytest.approx(2 / 3)
    assert a["served_smaller"] == 0
    # a guarded request served at a smaller budget: counted, and its generated net is judged by that budget
    rows[2] = {**rows[2], "served_budget": 0.12, "generated_mac_ratio": 0.125, "mac_ratio": 0.11}
    a = study.analyse(rows, fixed, dense, "test")
    assert a["served_smaller"] == 1 and a["generated_over"] == 1
    assert a["generated_over_max"] == pytest.approx(0.125 / 0.12)  # over 0.12, not the 0.2 asked for


def test_the_family_is_read_at_full_strength(study):
    # g16 is beaten on average (validation) by g20 at fewer MACs: a user would not keep it
    macs = {"g24": 0.07, "g20": 0.09, "g16": 0.10, "g8": 0.20, "g2": 0.60}
    val = {"g24": 0.97, "g20": 0.98, "g16": 0.975, "g8": 0.99, "g2": 0.995}
    fixed = {n: [{"classes": [0, 1], "mac_ratio": macs[n], "acc_val": val[n], "acc_test": val[n]},
                 {"classes": [2, 3], "mac_ratio": macs[n], "acc_val": val[n], "acc_test": val[n]}] for n in macs}
    assert study.family_front(fixed) == ["g24", "g20", "g8", "g2"]
    fixed["g16"][0]["acc_val"] = 0.984  # better than g20 on one class set, not on average: the mean decides
    assert "g16" not in study.family_front(fixed)
    pts = [(0.09, 0.98), (0.20, 0.99), (0.40, 0.985)]
    assert study.family_at(pts, 0.145, 0.6) == pytest.approx(0.985)
    assert study.family_at(pts, 0.5, 0.6) == pytest.approx(0.985)  # past the costliest kept model: that model
    assert study.family_at(pts, 0.5, 0.4) is None and study.family_at(pts, 0.05, 0.6) is None
    assert study.family_at([], 0.1, 0.6) is None
    # in the analysis: a budget net at 0.095 is read on the g20-g8 line, not on g16's dip
    rows = _budget_rows(study, {(0, 1): (0.9,) * 5, (2, 3): (0.9,) * 5})
    for r in rows:
        r["mac_ratio"] = 0.095 if r["budget"] == 0.12 else r["mac_ratio"]
    dense = [{"classes": [0, 1], "acc_val": 1.0, "acc_test": 1.0}, {"classes": [2, 3], "acc_val": 1.0, "acc_test": 1.0}]
    front = study.family_front(fixed)
    a = study.analyse(rows, fixed, dense, "test", front=front)
    want = 0.98 + 0.01 * 0.005 / 0.11
    assert a["per_budget"]["0.12"]["vs_family_pt"] == pytest.approx(100 * (0.9 - want))
    every = study.analyse(rows, fixed, dense, "test")  # all models kept: g16's lower accuracy pulls the line down
    assert every["per_budget"]["0.12"]["vs_family_pt"] > a["per_budget"]["0.12"]["vs_family_pt"] + 0.1


def test_an_earlier_studys_rows_are_reused_only_for_the_same_weights_subtasks_seed_and_limit(study, tmp_path):
    from safetensors.torch import save_file
    import torch

    for name, value in [("a", 1.0), ("b", 1.0), ("c", 2.0)]:
        (tmp_path / name).mkdir()
        save_file({"w": torch.full((3,), value)}, str(tmp_path / name / "model.safetensors"))
    ha, hb, hc = (study.weights_hash(str(tmp_path / n)) for n in "abc")
    assert ha == hb != hc  # the hash reads the weights, not the folder name
    tasks = [(0, 1), (2, 3, 4)]
    rows = [{"classes": [0, 1], "mac_ratio": 0.1}, {"classes": [2, 3, 4], "mac_ratio": 0.2}]
    prev = {"subtasks_list": [[0, 1], [2, 3, 4]], "seed": 0, "limit": 0,
            "hashes": {"g1": ha, "g4": hc, "budget": hc, "dense": ha}, "fixed_rows": {"g1": rows, "g4": rows},
            "budget_rows": rows, "dense_rows": rows}
    got = study.reusable_rows(prev, {"g1": ha, "g4": ha, "budget": ha, "dense": ha}, tasks, 0, 0)
    assert sorted(got) == ["dense", "g1"] and got["g1"] is rows  # g4 and the budget model have other weights now
    assert sorted(study.reusable_rows(prev, {"budget": hc}, tasks, 0, 0)) == ["budget"]
    # guarded requests serve other nets: the budget model's rows are reused only under the same guard setting
    assert sorted(study.reusable_rows(prev, {"budget": hc, "g1": ha}, tasks, 0, 0, guard=True)) == ["g1"]
    assert sorted(study.reusable_rows({**prev, "guard": True}, {"budget": hc}, tasks, 0, 0, guard=True)) == ["budget"]
    assert study.reusable_rows(prev, {"g1": ha}, tasks, 1, 0) == {}  # another seed
    assert study.reusable_rows(prev, {"g1": ha}, tasks, 0, 500) == {}  # another image limit
    assert study.reusable_rows(prev, {"g1": ha}, tasks[:1], 0, 0) == {}  # other subtasks
    old = {k: v for k, v in prev.items() if k != "hashes"}  # a study written before the hashes were recorded
    assert study.reusable_rows(old, {"g1": ha}, tasks, 0, 0) == {}


def test_a_fall_is_significant_only_beyond_what_a_coin_gives(study):
    assert study.fall_p([1, 2], [1, 2]) == 1.0  # the same errors
    assert study.fall_p([1, 2, 3], [1]) == 1.0  # it lost nothing
    assert study.fall_p([], [7]) == 0.5  # one image lost, none gained: a coin gives that half the time
    assert study.fall_p([], [4, 5, 6, 7, 8]) == pytest.approx(1 / 32)
    assert study.fall_p([9], [4, 5, 6, 7, 8]) == pytest.approx(7 / 64)  # 5 lost, 1 gained: P(X >= 5 | n = 6)
    # by the budget: (0, 1) loses 5 images from 0.12 to 0.2 (significant); (2, 3) swaps one image per step
    wrong = {(0, 1): [[1], [1], [1, 10, 11, 12, 13, 14], [1], [1]], (2, 3): [[5], [6], [5], [6], [5]]}
    rows = [{"classes": list(t), "budget": b, "wrong_test": w} for t, ws in wrong.items()
            for b, w in zip(study.BUDGETS, ws)]
    sig = study.significant_falls(rows, "test")
    assert sig["per_step"] == [0, 1, 0, 0] and sig["rising_share"] == 0.5
    assert sig["images_changed_median"] == 2 and sig["images_changed_max"] == 5
    assert study.significant_falls(rows, "val") is None  # rows scored before the errors were recorded


def test_the_twin_spread_counts_class_sets_that_retraining_moves_by_more_than_the_rule(study):
    mine = _budget_rows(study, {(0, 1): (0.90,) * 5, (2, 3): (0.95,) * 5})
    other = _budget_rows(study, {(0, 1): (0.90, 0.903, 0.897, 0.9, 0.9), (2, 3): (0.95, 0.94, 0.95, 0.95, 0.951)})
    assert study.twin_spread(mine, other, "test") == {"0.08": 0.0, "0.12": 1.0, "0.2": 0.5, "0.3": 0.0, "0.5": 0.0}
    with pytest.raises(ValueError, match="same subtasks"):
        study.twin_spread(mine, [r for r in other if r["budget"] != 0.5], "test")

