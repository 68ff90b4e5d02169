"""Re-key the BN-statistics cache of a checkpoint written before statistics keys named their settings.

Older checkpoints filed statistics under the subtask alone ("dense", "7-8"). This rewrites each entry under a
full `hypersan.prune.stats.StatsKey`, *assuming* what older hypersan always did unless told otherwise: calibration
with seed 0 on the whole training split, with the config's [calib] batches. Entries under other keys (text
or rounding variants) are dropped; they are recalibrated when needed. The folder's config.json gets
`data.val_size = 0` unless --val-size says otherwise (older runs trained on the whole training split).

    python tools/migrate_bn_cache.py CHECKPOINT_DIR [--val-size 0]

The folder is rewritten in place, atomically; tests/test_shipped.py recomputes several migrated entries
from the training images and compares.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hypersan.nn.checkpoint import parse_subtask_key  # noqa: E402
from hypersan.io import load_tensors, read_json, write_json  # noqa: E402
from hypersan.prune.stats import STATS_FILE, CalibSpec, StatsKey, weights_fingerprint  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--val-size", type=int, default=0)
    args = p.parse_args(argv)
    folder = Path(args.checkpoint)
    cfg = read_json(folder / "config.json")
    cfg["data"].setdefault("val_size", args.val_size)
    cfg["data"].setdefault("val_seed", 0)
    write_json(folder / "config.json", cfg)

    from hypersan.nn.model import SubtaskAdaptiveNet

    model = SubtaskAdaptiveNet.from_pretrained(folder)
    d, c = model.config.data, model.config.calib
    source = f"{d.dataset}:train:limit{d.train_limit}:val{d.val_size}@{d.val_seed}"
    spec = CalibSpec(c.batches, c.batch_size, 0, source, d.crop_padding, d.hflip)
    weights = weights_fingerprint(model)
    old = load_tensors(folder / STATS_FILE)
    new, kept, dropped = {}, set(), set()
    for name, v in old.items():
        key, _, tensor = name.partition("/")
        try:
            subtask = parse_subtask_key(key)
        except ValueError:
            dropped.add(key)
            continue
        new[f"{StatsKey(subtask, None, None, spec.fingerprint(), weights)}/{tensor}"] = v
        kept.add(key)
    from safetensors.torch import save_file

    tmp = folder / (STATS_FILE + ".tmp")
    save_file(new, str(tmp))
    tmp.replace(folder / STATS_FILE)
    print(json.dumps({"migrated": len(kept), "dropped": sorted(dropped), "weights": weights,
                      "calib": spec.fingerprint(), "source": source}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
