"""Write docs/CONFIG.md, the config reference, from the dataclasses in hypersan/config.py.

    python tools/config_reference.py [--check]

--check exits 1 if the file is not current (tests/test_config.py runs the same check).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from hypersan.config import reference_markdown  # noqa: E402


def main() -> int:
    path = ROOT / "docs" / "CONFIG.md"
    text = reference_markdown()
    if "--check" in sys.argv[1:]:
        current = path.is_file() and path.read_text() == text
        print("docs/CONFIG.md is current" if current else "docs/CONFIG.md is out of date: run "
              "python tools/config_reference.py")
        return 0 if current else 1
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
