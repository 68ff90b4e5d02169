"""hypersan.adapt without a config on v3x30 (make_folders.py): the test MobileNetV2-style net (width 16), with
adapt's default train.min_steps (1,000) or, given "0", the 10 epochs as they are. Prints the last epoch's
validation figures (the training log) and the wall time. Run from the repository root:
    PYTHONPATH=. python docs/ablation-runs/zen4-2026-12-08b/small-folders/adapt_small.py /tmp/small-folders/v3x30 [0]"""
import sys
import time

import hypersan
from tests.models import mobilenet

folder = sys.argv[1]
extra = [f"train.min_steps={sys.argv[2]}"] if len(sys.argv) > 2 else []
t0 = time.time()
hypersan.adapt(mobilenet.build, folder, f"runs/adapt-small{'-' + sys.argv[2] if extra else ''}",
               kwargs={"width": 16, "in_channels": 1}, overrides=["train.progress=false", *extra], force=True)
print(f"wall {time.time() - t0:.1f} s")
