"""Score request grounding on a JSON Lines request set: exact-set accuracy on accepts, rejection rate on rejects.

    hypersan study grounding tests/data/fmnist_requests.jsonl [--show-failures] [--threads 1]

Each line is {"request": str, "classes": [names]} (must ground to exactly that set) or
{"request": str, "reject": true, "unknown": str?} (must raise GroundingError, naming `unknown` if given).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path



def load_cases(path: str | Path) -> list[dict]:
    """The request cases of a JSON Lines file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def score(cases: list[dict], grounder) -> dict:
    """Accuracy on accept cases, rejection rate on reject cases, and the failures."""
    from ..language.grounding import GroundingError

    acc_ok = rej_ok = n_acc = n_rej = 0
    failures = []
    for c in cases:
        try:
            got = grounder.ground(c["request"]).classes
            err = None
        except GroundingError as e:
            got, err = None, e
        if c.get("reject"):
            n_rej += 1
            ok = err is not None and (not c.get("unknown") or c["unknown"] in err.unknown)
            rej_ok += ok
            if not ok:
                failures.append({"request": c["request"], "expected": "reject", "got": got or str(err)})
        else:
            n_acc += 1
            ok = got is not None and set(got) == set(c["classes"])
            acc_ok += ok
            if not ok:
                failures.append({"request": c["request"], "expected": c["classes"], "got": got or str(err)})
    return {"accept_cases": n_acc, "accept_correct": acc_ok, "accept_accuracy": acc_ok / max(n_acc, 1),
            "reject_cases": n_rej, "reject_correct": rej_ok, "rejection_rate": rej_ok / max(n_rej, 1),
            "failures": failures}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--show-failures", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from ..data.datasets import FASHION_MNIST
    from ..language.grounding import Grounder
    from ..language.text import Encoder

    t0 = time.perf_counter()
    grounder = Grounder(FASHION_MNIST, Encoder())
    load_s = time.perf_counter() - t0
    out = {"load_s": round(load_s, 3)}
    for f in args.files:
        r = score(load_cases(f), grounder)
        if not args.show_failures:
            r["failures"] = len(r["failures"])
        out[f] = r
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
