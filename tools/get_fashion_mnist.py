"""Download Fashion-MNIST from its official source, for machines without Debian's `dataset-fashion-mnist`.

    python tools/get_fashion_mnist.py [--dest data/fashion-mnist]

Then point hypersan at it: `export HYPERSAN_DATA=$PWD/data/fashion-mnist` (`make demo` and `make test` do so
when they used this script). Only the standard library is used. Each file comes from the dataset's GitHub
repository (zalandoresearch/fashion-mnist), or its S3 website if that fails; it is accepted only when the
SHA-256 of its decompressed IDX content matches the one below (the same content as Debian's package), and is
written under a temporary name, then renamed. Files already present and verified are not fetched again.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

SOURCES = ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
           "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
# SHA-256 and size of the decompressed IDX files
FILES = {
    "train-images-idx3-ubyte.gz": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    "train-labels-idx1-ubyte.gz": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    "t10k-images-idx3-ubyte.gz": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    "t10k-labels-idx1-ubyte.gz": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}
MAX_DOWNLOAD = 64 << 20  # bytes: the largest file is about 26 MB compressed


def verified(data: bytes, name: str) -> bool:
    """Whether gzip bytes decompress to the expected IDX content."""
    want, size = FILES[name]
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError):
        return False
    return len(raw) == size and hashlib.sha256(raw).hexdigest() == want


def fetch(name: str, timeout: float = 60.0) -> bytes:
    errors = []
    for base in SOURCES:
        try:
            with urllib.request.urlopen(base + name, timeout=timeout) as r:
                data = r.read(MAX_DOWNLOAD + 1)
        except OSError as e:
            errors.append(f"{base}: {e}")
            continue
        if len(data) <= MAX_DOWNLOAD and verified(data, name):
            return data
        errors.append(f"{base}: the file does not match its checksum")
    raise RuntimeError(f"could not download {name}: " + "; ".join(errors))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", default="data/fashion-mnist")
    args = p.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        path = dest / name
        if path.is_file() and verified(path.read_bytes(), name):
            print(f"{name}: present and verified")
            continue
        if path.exists():
            print(f"error: {path} exists but does not match its checksum; move it away and run again",
                  file=sys.stderr)
            return 1
        print(f"{name}: downloading", flush=True)
        try:
            data = fetch(name)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        print(f"{name}: verified ({len(data):,} bytes)")
    print(f"Fashion-MNIST is in {dest}; export HYPERSAN_DATA={dest.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
