"""What a guarded budget costs to build, beside an unguarded one (docs/BUDGETS.md, "Guarded budgets").

    python tools/guard_cost.py --checkpoint fmnist_budget --budget 0.5 --classes "Sneaker,Bag" "Shirt,Coat,Pullover"

For each class set, on fresh engines (nothing cached; the data set read before the clock starts): the cold build
of the net at the budget, the cold build of the guarded request (every weighed budget calibrated and scored on
the validation split), and the guarded request again (decision and statistics cached). Beside them, one dense
batch-256 forward, measured in the same run. Prints JSON: per class set and the medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypersan.prune.engine import PruningEngine  # noqa: E402
from hypersan.research.bench import timed, dense_forward_seconds  # noqa: E402


def guard_costs(make_engine: Callable[[], PruningEngine], class_sets: list, budget: float) -> dict:
    """Seconds to build each class set's net at `budget` cold, guarded cold and guarded warm; each cold build on
    an engine of its own from `make_engine` (its data read first, so only the build is timed)."""
    rows = []
    for classes in class_sets:
        plain, guarded = make_engine(), make_engine()
        for eng in (plain, guarded):
            eng.images()
            eng.validation()
        row = {"classes": list(classes),
               "cold_s": timed(lambda: plain.subnet(classes, fold_bn=True, budget=budget)),
               "guarded_cold_s": timed(lambda: guarded.subnet(classes, fold_bn=True, budget=budget, guard=True)),
               "guarded_warm_s": timed(lambda: guarded.subnet(classes, fold_bn=True, budget=budget, guard=True))}
        g = guarded.guard(classes, budget)
        row.update(weighed=len(g["weighed"]), served=g["budget"])
        rows.append(row)
    med = {k: statistics.median(r[k] for r in rows) for k in ("cold_s", "guarded_cold_s", "guarded_warm_s")}
    return {"budget": budget, "rows": rows, "median": med}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a budget-conditioned checkpoint folder or shipped name")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--classes", nargs="+", required=True, help='class sets, each comma-separated: "Sneaker,Bag"')
    args = p.parse_args(argv)
    sets = [[c.strip() for c in s.split(",")] for s in args.classes]
    base = PruningEngine.from_pretrained(args.checkpoint)
    images, val = base.images(), base.validation()  # read once; every engine below starts with an empty cache

    def fresh() -> PruningEngine:
        return PruningEngine(base.model, images=images, validation=val)

    result = {"checkpoint": args.checkpoint, "command": "python tools/guard_cost.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), **guard_costs(fresh, sets, args.budget),
        "dense_forward_s": dense_forward_seconds(base)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
