"""hypersan.adapt of mynets.build on a folder: free widths (keep_multiple 1) or blocks of 16, at a sparsity weight.

    PYTHONPATH=. python adapt_run.py FOLDER OUT KEEP_MULTIPLE [GAMMA]
"""
import sys
import time

import hypersan
from mynets import build

folder, out, km = sys.argv[1], sys.argv[2], sys.argv[3]
over = ["train.progress=false", f"generator.keep_multiple={km}"] + ([f"loss.gamma={sys.argv[4]}"] if len(sys.argv) > 4 else [])
t = time.time()
hypersan.adapt(build, folder, out, overrides=over, log=lambda m: None)
print("seconds", round(time.time() - t, 1))
