"""The glyph study's report (tools/glyph_study.py) on hand-made results: the class-agnostic curve it reads, the
budget it chooses per group on validation, and the lower bound it marks when a net is under the curve."""
import importlib.util

import pytest

from .conftest import ROOT


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("glyph_study", ROOT / "tools" / "glyph_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SUBTASKS = [{"group": "digits", "name": "digits", "indices": [0, 1, 2]},
            {"group": "pairs", "name": "a, b", "indices": [3, 4]},
            {"group": "pairs", "name": "c, d", "indices": [5, 6]}]


def _rows(*mac_acc):
    return {"rows": [{"mac_ratio": m, "acc": a, "seen": True} for m, a in mac_acc], "top1": 0.5, "pred": []}


def _both(*mac_acc):
    return {"val": _rows(*mac_acc), "test": _rows(*mac_acc)}


def _nets():
    # the curve: (0.1, 0.90) and (1.0, 0.98) on digits; (0.1, 0.95) and (1.0, 0.99) on pairs
    nets = {"dense-w16": {"agnostic": _both((1.0, 0.98), (1.0, 0.99), (1.0, 0.99))},
            "dense-w4": {"agnostic": _both((0.1, 0.90), (0.1, 0.95), (0.1, 0.95))}}
    budgets = {
        # digits at 0.05: 0.94 needs 0.1 + 0.9 * 0.5 = 0.55 of the curve: 0.05 / 0.55
        "0.05": {"adaptive": {"val": _rows((0.05, 0.94), (0.04, 0.80), (0.04, 0.80)),
                              "test": _rows((0.05, 0.93), (0.04, 0.91), (0.04, 0.89))},
                 "agnostic": _both((0.05, 0.80), (0.05, 0.85), (0.05, 0.85))},
        # digits at 0.2: 0.97 needs 0.1 + 0.9 * 7 / 8 = 0.8875: 0.2 / 0.8875, worse than 0.05 / 0.55 -> 0.05 chosen
        "0.2": {"adaptive": {"val": _rows((0.2, 0.97), (0.2, 0.97), (0.2, 0.97)),
                             "test": _rows((0.2, 0.96), (0.2, 0.97), (0.2, 0.97))},
                "agnostic": _both((0.2, 0.85), (0.2, 0.90), (0.2, 0.90))},
    }
    nets["budget"] = {"agnostic": _both((1.0, 0.97), (1.0, 0.98), (1.0, 0.98)), "budgets": budgets}
    return nets


def test_the_curve_takes_every_class_agnostic_net_and_each_budgets_all_classes_net(study):
    pts = study.curve_points(_nets(), "val")
    assert set(pts) == {"dense-w16", "dense-w4", "budget", "budget@0.05", "budget@0.2"}
    assert study.group_means(pts["budget@0.2"], SUBTASKS)["pairs"] == pytest.approx((0.2, 0.90))


def test_the_budget_report_chooses_per_group_on_validation_and_marks_lower_bounds(study):
    text = "\n".join(study.budget_report(_nets(), SUBTASKS, {}))
    chosen = text.split("the budget chosen per group on validation")[1].split("\n## ")[0]
    digits = next(line for line in chosen.splitlines() if line.startswith("| digits"))
    # 0.05 is chosen on validation (0.05 / 0.55 = 0.09); its test figures: 0.93 needs 0.1 + 0.9 * 3 / 8
    assert digits.split(" | ")[1] == "0.05" and digits.split(" | ")[2] == f"{0.05 / 0.55:.2f}"
    assert digits.split(" | ")[5] == f"{0.05 / (0.1 + 0.9 * 3 / 8):.2f}"
    # the pairs at 0.05 (0.80 on val) are under the curve's cheapest net (this model's all-classes net at 0.05,
    # 0.85): a lower bound, not chosen
    val = text.split("against the class-agnostic curve (val)")[1].split("\n## ")[0]
    pairs = next(line for line in val.splitlines() if line.startswith("| pairs | 0.05"))
    assert "≥ 0.80" in pairs
    pairs_chosen = next(line for line in chosen.splitlines() if line.startswith("| pairs"))
    assert pairs_chosen.split(" | ")[1] == "0.2"


def test_the_full_report_carries_the_budget_sections(study):
    nets = _nets()
    for r in nets.values():  # the width check reads top-1 and predictions of every net
        for split in ("val", "test"):
            r["agnostic"][split]["pred"] = [0]
    text = study.report(nets, SUBTASKS, None, ["x"], {"val": [0], "test": [0]})
    assert "## budget: the budget chosen per group on validation (test figures)" in text
