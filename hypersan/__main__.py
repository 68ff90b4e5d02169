"""`python -m hypersan ...`: the hypersan command, as `torchrun -m hypersan train ...` starts it on every process."""
import sys

from .cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
