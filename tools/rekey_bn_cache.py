"""Re-key a checkpoint's BN-statistics cache written under an older key format.

Two older formats are read. Keys of the oldest (`subtask|t=..|r=ROUNDING|c=..|w=..`) named the calibration source
by dataset and split only, and the masks not at all. Later keys (`..|r=ROUNDING~MASKS|..`) named the masks by
the bits of their values, scalings included, whose last bits depend on the CPU that ran the generator: a cache
written on one machine missed on another. Today's keys name the kept channels only (stats.masks_fingerprint).
Each entry whose settings match what the checkpoint's engine does today (same weights, same calibration
settings with seed 0, the same training split, which this tool reads; canonical text) is filed again under
today's key. Nothing is recomputed; entries that match nothing are dropped (they are recalibrated when needed).
tests/test_shipped.py recomputes entries and compares.

    python tools/rekey_bn_cache.py CHECKPOINT_DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hypersan.nn.checkpoint import parse_subtask_key  # noqa: E402
from hypersan.io import load_tensors  # noqa: E402
from hypersan.prune.stats import STATS_FILE, CalibSpec  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    args = p.parse_args(argv)
    folder = Path(args.checkpoint)
    from hypersan.prune.engine import PruningEngine

    engine = PruningEngine.from_pretrained(folder)
    model = engine.model
    d, c = model.config.data, model.config.calib
    engine.images()  # today's source names the images' bytes
    old_source = f"{d.dataset}:train:limit{d.train_limit}:val{d.val_size}@{d.val_seed}"
    old_calib = CalibSpec(c.batches, c.batch_size, 0, old_source, d.crop_padding, d.hflip).fingerprint()
    calib = engine.calib_spec(0).fingerprint()
    weights = engine.weights_fingerprint()
    if not (folder / STATS_FILE).exists():
        print(json.dumps({"rekeyed": 0, "dropped": 0, "note": f"{folder} has no {STATS_FILE}: nothing to re-key"}))
        return 0
    old = load_tensors(folder / STATS_FILE)
    new, kept, dropped = {}, set(), set()
    for name, v in old.items():
        key, _, tensor = name.partition("/")
        parts = key.split("|")
        if len(parts) != 5 or parts[1] != "t=-" or parts[4] != f"w={weights}":
            dropped.add(key)
            continue
        label, named_masks, _ = parts[2][2:].partition("~")
        # the oldest keys: no masks, the old calibration source; later ones: today's calibration fingerprint
        if parts[3] != (f"c={calib}" if named_masks else f"c={old_calib}") or (not named_masks and label != "-"):
            dropped.add(key)
            continue
        subtask = parse_subtask_key(parts[0])
        new[f"{engine.key(subtask, rounding=None if label == '-' else label, seed=0)}/{tensor}"] = v
        kept.add(key)
    from safetensors.torch import save_file

    tmp = folder / (STATS_FILE + ".tmp")
    save_file(new, str(tmp))
    tmp.replace(folder / STATS_FILE)
    print(json.dumps({"rekeyed": len(kept), "dropped": len(dropped)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
