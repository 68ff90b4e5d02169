"""The ablation's figures: gaps against one reference, matched-MAC pairing, the class-agnostic curve, mean ± std
over seeds and the cost crossover, on a small hand-made results.csv whose answers are worked out by hand."""
import math

import pytest

from hypersan.research.report import (adaptivity, crossover, equal_accuracy, gap, hardest_pairs, interp_acc,
                                      interp_mac, mean_std, paired_difference, pareto_front, per_seed_means,
                                      read_results, reference_acc, summary_table, write_csv)


def _row(method, seed, classes, acc, mac=1.0, split="test", seen=True, backbone=None, target=None, size=None,
         gamma=4.0):
    return {"method": method, "seed": seed, "gamma": gamma, "split": split, "classes": classes,
            "size": size or len(classes.split("|")), "seen": seen, "acc": acc,
            "backbone_acc": acc if backbone is None else backbone, "map": acc, "backbone_map": acc, "mac_ratio": mac,
            "param_ratio": mac, "fp_rate": 0.1, "backbone_fp_rate": 0.1, "target_mac_ratio": target,
            "phrasing": "canonical", "build_s": None, "build_warm_s": None, "train_s": None, "finetune_steps": None,
            "images_seen": None, "latency_ratio": None, "widths": None}


ROWS = [
    # the reference: the dense net, two seeds, two pairs, both splits
    _row("dense", 0, "A|B", 0.90), _row("dense", 0, "C|D", 0.80), _row("dense", 1, "A|B", 0.92),
    _row("dense", 1, "C|D", 0.84), _row("dense", 0, "A|B", 0.50, split="val"),
    # the hypernetwork: its own backbone (0.95) is not the reference
    _row("hypernet", 0, "A|B", 0.88, 0.05, backbone=0.95), _row("hypernet", 0, "C|D", 0.82, 0.07, backbone=0.95),
    _row("hypernet", 1, "A|B", 0.90, 0.05, backbone=0.95), _row("hypernet", 1, "C|D", 0.80, 0.07, backbone=0.95),
    _row("hypernet", 0, "A|B", 0.40, 0.05, split="val"),
    # a peer on A|B only (both seeds) and on a subset the hypernetwork lacks (unpaired)
    _row("tp_subset_ft_long", 0, "A|B", 0.85, 0.049), _row("tp_subset_ft_long", 1, "A|B", 0.89, 0.049),
    _row("tp_subset_ft_long", 0, "E|F", 0.10, 0.05),
    # the class-agnostic curve on pairs: (0.05, 0.80), (0.10, 0.84), (0.20, 0.88)
    *[_row("agnostic_tp", 0, c, a, m, target=m) for m, a in ((0.05, 0.80), (0.10, 0.84), (0.20, 0.88))
      for c in ("A|B", "C|D")],
]


def test_every_gap_is_against_the_dense_net_on_the_same_classes_split_and_seed():
    ref = reference_acc(ROWS)
    assert gap(ROWS[5], ref) == pytest.approx(-2.0)  # 0.88 - 0.90, not 0.88 - 0.95 (its own backbone)
    assert gap(ROWS[6], ref) == pytest.approx(+2.0)  # 0.82 - 0.80
    assert gap(ROWS[9], ref) == pytest.approx(-10.0)  # validation against validation: 0.40 - 0.50
    assert gap(ROWS[12], ref) is None  # no reference for E|F
    table = summary_table(ROWS, 4.0)
    # hypernet: seed 0 mean gap (-2 + 2) / 2 = 0, seed 1 (-2 - 4) / 2 = -3: -1.50 ± 2.12; against its own
    # backbone, a separate column: seed 0 (-7 - 13) / 2, seed 1 (-5 - 15) / 2: -10.00 ± 0.00
    line = next(ln for ln in table.splitlines() if ln.startswith("| hypernet |"))
    assert "| -1.50 ± 2.12 | -10.00 ± 0.00 |" in line


def test_matched_mac_pairs_subsets_and_seeds_before_averaging():
    d = paired_difference(ROWS, "hypernet", "tp_subset_ft_long", 4.0)
    assert d["pairs"] == 2 and d["seeds"] == 2  # E|F has no hypernetwork row; C|D no peer row
    assert d["per_seed"] == pytest.approx([3.0, 1.0])  # 0.88 - 0.85, 0.90 - 0.89
    assert d["mean"] == pytest.approx(2.0) and d["std"] == pytest.approx(math.sqrt(2.0))
    assert d["mac_a"] == pytest.approx(0.05) and d["mac_b"] == pytest.approx(0.049)


def test_the_class_agnostic_curve_is_interpolated_both_ways():
    pts = [(0.05, 0.80), (0.10, 0.84), (0.20, 0.88)]
    assert interp_mac(pts, 0.86) == pytest.approx(0.15)
    assert interp_mac(pts, 0.70) == pytest.approx(0.05)  # the curve starts above: its smallest MACs
    assert interp_mac(pts, 0.95) is None  # never reached
    assert interp_acc(pts, 0.075) == pytest.approx(0.82)
    assert interp_acc(pts, 0.5) is None
    # in log MACs: 0.86 lies halfway from 0.10 to 0.20, at their geometric mean; 0.075 lies log 1.5 / log 2 of the
    # way from 0.05 to 0.10
    assert interp_mac(pts, 0.86, log=True) == pytest.approx(0.02 ** 0.5)
    assert interp_acc(pts, 0.075, log=True) == pytest.approx(0.80 + 0.04 * math.log(1.5) / math.log(2))
    a = adaptivity(ROWS, 4.0)  # hypernet pairs: mean acc 0.85 at mean MACs 0.06; the curve needs 0.125 for 0.85
    assert a["acc"] == pytest.approx(0.85) and a["mac_ratio"] == pytest.approx(0.06)
    assert a["agnostic_mac_ratio_linear"] == pytest.approx(0.125) and a["ratio_linear"] == pytest.approx(0.48)
    need = 0.1 * 2 ** 0.25  # a quarter of the way from 0.10 to 0.20 in log MACs
    assert a["agnostic_mac_ratio"] == pytest.approx(need) and a["ratio"] == pytest.approx(0.06 / need)


def test_mean_std_over_seeds_and_the_cost_crossover():
    assert per_seed_means(ROWS[5:9], "acc") == pytest.approx([0.85, 0.85])
    assert mean_std([0.1, 0.3]) == "0.200 ± 0.141" and mean_std([0.25]) == "0.250" and mean_std([]) == "—"
    # 300 s more training, then 2 s against 62 s per subset: cheaper from the 5th subset on
    assert crossover(900, 2, 600, 62) == pytest.approx(5.0)
    assert crossover(900, 70, 600, 62) is None and crossover(500, 1, 600, 62) == 0.0


def test_results_csv_round_trips_raw_figures(tmp_path):
    write_csv(tmp_path / "results.csv", ROWS)
    back = read_results(tmp_path / "results.csv")
    assert len(back) == len(ROWS)
    assert back[5]["acc"] == 0.88 and back[5]["backbone_acc"] == 0.95 and back[5]["split"] == "test"
    assert back[9]["split"] == "val" and back[5]["seen"] is True and back[5]["seed"] == 0
    assert "gap" not in open(tmp_path / "results.csv").readline()  # gaps live in the report only


def test_the_pareto_front_drops_beaten_nets_and_equal_accuracy_reads_it():
    # (0.3, 0.85) is beaten by the cheaper (0.2, 0.90); (0.5, 0.90) adds nothing over (0.2, 0.90)
    pts = [(1.0, 0.95), (0.3, 0.85), (0.2, 0.90), (0.1, 0.80), (0.5, 0.90)]
    assert pareto_front(pts) == [(0.1, 0.80), (0.2, 0.90), (1.0, 0.95)]
    # 0.85 lies halfway from 0.80 to 0.90: the curve needs 0.15; an adaptive net at 0.05 uses a third of that
    e = equal_accuracy(0.05, 0.85, pts)
    assert e["curve_mac_ratio_linear"] == pytest.approx(0.15) and e["mac_vs_curve_linear"] == pytest.approx(1 / 3)
    # read in log MACs, halfway from 0.1 to 0.2 is their geometric mean: the concave curve needs fewer MACs
    assert e["curve_mac_ratio"] == pytest.approx((0.1 * 0.2) ** 0.5) and e["mac_vs_curve"] == pytest.approx(
        0.05 / (0.02 ** 0.5))
    assert e["curve_acc"] is None and e["acc_gap_pt"] is None  # 0.05 lies below the curve's cheapest net
    assert not e["below"]
    e = equal_accuracy(0.05, 0.75, pts)  # less accurate than the cheapest net: its MACs bound what the curve needs
    assert e["below"] and e["curve_mac_ratio"] == pytest.approx(0.1) and e["mac_vs_curve"] == pytest.approx(0.5)
    e = equal_accuracy(0.6, 0.97, pts)  # more accurate than any point: the curve never gets there
    assert e["curve_mac_ratio"] is None and e["mac_vs_curve"] is None
    assert e["acc_gap_pt_linear"] == pytest.approx(100 * (0.97 - (0.90 + 0.05 * 0.4 / 0.8)))
    t = math.log(0.6 / 0.2) / math.log(1.0 / 0.2)  # 0.6 lies this far from 0.2 to 1.0 in log MACs
    assert e["curve_acc"] == pytest.approx(0.90 + 0.05 * t) and e["acc_gap_pt"] == pytest.approx(
        100 * (0.97 - 0.90 - 0.05 * t))


def test_the_hardest_pairs_by_confusion_rate_both_ways():
    labels = [0] * 10 + [1] * 10 + [2] * 10 + [3] * 5
    pred = list(labels)
    pred[0:3] = [1, 1, 1]  # 0 -> 1 three times
    pred[10:12] = [0, 0]  # 1 -> 0 twice: pair (0, 1) at 5 / 20
    pred[20:22] = [3, 3]  # 2 -> 3 twice: pair (2, 3) at 2 / 15, above
    pred[30] = 2  # 3 -> 2 once: (2, 3) at 3 / 15 = 0.2 < 0.25
    pred[22] = 0  # 2 -> 0 once: (0, 2) at 1 / 20
    assert hardest_pairs(pred, labels, 2) == [(0, 1), (2, 3)]
    assert hardest_pairs(pred, labels, 5) == [(0, 1), (2, 3), (0, 2)]  # pairs never confused are not listed


def test_every_method_has_one_look_of_its_own_in_every_figure():
    from hypersan.research.ablate import JOINT, PER_SUBSET
    from hypersan.research.report import METHOD_STYLES

    methods = {*JOINT, *PER_SUBSET, "agnostic_hypernet", "agnostic_tp", "scratch"}
    assert methods <= set(METHOD_STYLES)
    colours = [c for _, c, _ in METHOD_STYLES.values()]
    labels = [label for label, _, _ in METHOD_STYLES.values()]
    assert len(set(colours)) == len(colours) and len(set(labels)) == len(labels)


def test_macs_against_difficulty_within_a_size_and_overall():
    from hypersan.research.report import difficulty, difficulty_table, pearson

    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0) and pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert pearson([1, 2], [1, 2]) is None and pearson([1, 1, 1], [1, 2, 3]) is None
    sets = ["A|B", "C|D", "E|F", "A|B|C", "D|E|F", "A|C|E"]
    errs = [0.02, 0.10, 0.06, 0.05, 0.15, 0.10]  # dense error on each set
    macs = [0.05, 0.04, 0.06, 0.08, 0.07, 0.09]  # MACs grow with size but not with error within a size
    rows = [_row("dense", 0, c, 1 - e) for c, e in zip(sets, errs)]
    rows += [_row("hypernet", 0, c, 0.9, m) for c, m in zip(sets, macs)]
    d = difficulty(rows, "hypernet", 4.0)
    assert d["sets"] == 6
    assert d["size"][0] == pytest.approx(pearson(macs, [2, 2, 2, 3, 3, 3]))
    assert d["error"][0] == pytest.approx(pearson(macs, errs))
    within = d["error_within_size"][0]  # MACs and error less their size's mean: (0, -.01, .01, 0, -.01, .01)
    assert within == pytest.approx(pearson([0, -0.01, 0.01, 0, -0.01, 0.01], [-0.04, 0.04, 0, -0.05, 0.05, 0]))
    assert within < 0  # this net spends less on its harder sets of a size
    assert f"| hypernet | 6 | {d['size'][0]:.2f} |" in difficulty_table(rows, 4.0)


def test_accuracy_against_seconds_per_class_set_on_the_peers_sets():
    from hypersan.research.report import per_subset_seconds, seconds_table

    rows = [_row("dense", 0, "A|B", 0.90), _row("dense", 0, "C|D", 0.80)]
    for m, acc, secs, steps in (("hypernet", 0.88, 0.5, 0), ("tp_subset_ft_long", 0.91, 100.0, 2000)):
        r = _row(m, 0, "A|B", acc, 0.05)
        r.update(build_s=secs, finetune_steps=steps)
        rows.append(r)
    off = _row("hypernet", 0, "C|D", 0.70, 0.05)  # no peer built for C|D: not in the comparison
    off["build_s"] = 0.1
    rows.append(off)
    t = per_subset_seconds(rows, 4.0)
    assert set(t) == {"hypernet", "tp_subset_ft_long"} and t["hypernet"]["sets"] == 1
    assert t["hypernet"]["gap"] == pytest.approx([-2.0]) and t["tp_subset_ft_long"]["seconds"] == 100.0
    lines = seconds_table(rows, 4.0).splitlines()
    assert lines[2].startswith("| hypernet |") and lines[3].startswith("| tp_subset_ft_long |")  # by seconds
    assert "| 2,000 | 100.00 |" in lines[3]


def test_plots_are_drawn_again_only_when_their_rows_or_files_change(tmp_path, monkeypatch):
    from hypersan.research import report

    drawn = []

    def draw(folder, rows, gamma):  # stands in for matplotlib: one file per call, named by the rows' count
        folder.mkdir(parents=True, exist_ok=True)
        drawn.append(len(rows))
        (folder / "pareto.png").write_bytes(b"png %d" % len(rows))
        return [str(folder / "pareto.png")]

    monkeypatch.setattr(report, "write_plots", draw)
    folder = tmp_path / "plots"
    first = report.write_plots_once(folder, ROWS, 4.0)
    assert first == [str(folder / "pareto.png")] and drawn == [len(ROWS)]
    assert report.write_plots_once(folder, list(ROWS), 4.0) == first and drawn == [len(ROWS)]  # same rows: kept
    report.write_plots_once(folder, ROWS, 2.0)  # another gamma
    report.write_plots_once(folder, ROWS[:-1], 2.0)  # another row set
    assert drawn == [len(ROWS), len(ROWS), len(ROWS) - 1]
    (folder / "pareto.png").unlink()  # a plot gone: drawn again
    report.write_plots_once(folder, ROWS[:-1], 2.0)
    (folder / report.PLOTS_MANIFEST).write_text("{not json")  # a manifest that does not read: drawn again
    report.write_plots_once(folder, ROWS[:-1], 2.0)
    assert len(drawn) == 5 and (folder / "pareto.png").is_file()
    monkeypatch.setattr(report, "write_plots", lambda folder, rows, gamma: [])  # no matplotlib: nothing recorded
    (folder / report.PLOTS_MANIFEST).unlink()
    assert report.write_plots_once(folder, ROWS, 4.0) == [] and not (folder / report.PLOTS_MANIFEST).exists()
