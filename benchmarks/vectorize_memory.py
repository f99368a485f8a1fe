"""Memory: peak RSS of ``geounet vectorize`` on a 16384^2 blob mask versus a 4096^2 one.

Both masks are made by :func:`benchmarks.vectorize_speed.blob_mask` (same density of blobs with
holes); each run is its own process and its peak RSS is the kernel's ``ru_maxrss``. Prints
both peaks, the feature counts and the ratio. Usage:
``python -m benchmarks.vectorize_memory [--sizes 4096 16384]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyogrio

from benchmarks.common import WORK
from benchmarks.memory import peak_rss_mib
from benchmarks.vectorize_speed import blob_mask

GEOUNET = Path(sys.executable).with_name("geounet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    peaks = {}
    for size in args.sizes:
        mask = blob_mask(WORK / f"blobs_{size}.tif", size)
        out = WORK / f"blobs_{size}.gpkg"
        cmd = [str(GEOUNET), "vectorize", str(mask), "-o", str(out), "--overwrite", "-q"]
        peaks[size], seconds = peak_rss_mib(cmd)
        features = pyogrio.read_info(out)["features"]
        print(f"{size}x{size}: {features} features, peak RSS {peaks[size]:.0f} MiB, "
              f"{seconds:.1f} s")
    small, large = min(peaks), max(peaks)
    print(f"peak RSS ratio {large}^2 / {small}^2: {peaks[large] / peaks[small]:.3f}")


if __name__ == "__main__":
    main()
