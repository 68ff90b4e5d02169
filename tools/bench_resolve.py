"""Benchmark request grounding: model load time and request -> class set latency, printed as one JSON object.

    python tools/bench_resolve.py [--threads 2] [--repeats 3] [--files tests/data/fmnist_requests.jsonl ...]

Latency is measured per request with the encoder loaded and the vocabulary embedded (`Grounder.warmup`):
`first` is each distinct request seen for the first time (nothing of it cached), `cached` the same requests again.
Requests that need the sentence encoder (paraphrases, modifiers, unknown words) are also reported on their own.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 3), "p90_ms": round(pct(ms, 0.9), 3),
            "max_ms": round(max(ms), 3)} if ms else {"n": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the process (the target is 2 cores)")
    ap.add_argument("--encoder-threads", type=int, default=1,
                    help="threads while encoding a request (as hypersan.language.text.default_encoder); 0: the process's")
    ap.add_argument("--repeats", type=int, default=3, help="cached passes over the requests")
    ap.add_argument("--files", nargs="+", default=[str(ROOT / "tests/data/fmnist_requests.jsonl"),
                                                   str(ROOT / "tests/data/fmnist_requests_heldout.jsonl")])
    args = ap.parse_args()

    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from hypersan.data.datasets import FASHION_MNIST
    from hypersan.language.grounding import Grounder, GroundingError
    from hypersan.language.text import Encoder

    t1 = time.perf_counter()
    encoder = Encoder(threads=args.encoder_threads or None)
    t2 = time.perf_counter()
    grounder = Grounder(FASHION_MNIST, encoder).warmup()
    t3 = time.perf_counter()

    requests = list(dict.fromkeys(json.loads(line)["request"] for f in args.files
                                  for line in Path(f).read_text().splitlines() if line.strip()))

    def run_once(r: str) -> tuple[float, bool]:
        misses = encoder.misses + encoder.hits
        t = time.perf_counter()
        try:
            grounder.ground(r)
        except GroundingError:
            pass
        return (time.perf_counter() - t) * 1000, encoder.misses + encoder.hits > misses

    first, used_encoder = [], []
    for r in requests:
        ms, enc = run_once(r)
        first.append(ms)
        used_encoder.append(enc)
    cached = [run_once(r)[0] for _ in range(args.repeats) for r in requests]
    print(json.dumps({
        "threads": args.threads,
        "encoder_threads": args.encoder_threads or args.threads,
        "device": encoder.device,
        "model": encoder.model_name,
        "import_s": round(t1 - t0, 3),
        "model_load_s": round(t2 - t1, 3),
        "vocab_embed_s": round(t3 - t2, 3),
        "requests": len(requests),
        "first": summary(first),
        "first_needing_encoder": summary([m for m, e in zip(first, used_encoder) if e]),
        "first_lexical_only": summary([m for m, e in zip(first, used_encoder) if not e]),
        "cached": summary(cached),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
