"""Memory: peak RSS of ``geounet vectorize`` on a 16384^2 mask versus a 4096^2 one.

Masks of the same density at every size (:mod:`benchmarks.vectorize_speed`): ``blobs`` (blobs
with holes, polygons only) or ``lines`` (many separate thin segments, polygons and
``--centerlines``). Each run is its own process; prints the peak resident memory of it and
its worker processes together and of the largest of them
(:func:`benchmarks.common.tree_peak_rss`), the feature and line counts, and the ratios. Usage:
``python -m benchmarks.vectorize_memory [--mask blobs|lines] [--sizes 4096 16384]
[--workers N]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyogrio

from benchmarks.common import WORK, tree_peak_rss
from benchmarks.vectorize_speed import MASKS

GEOUNET = Path(sys.executable).with_name("geounet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", choices=("blobs", "lines"), default="blobs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--workers", type=int, help="geounet's --workers (default: its own)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    peaks = {}
    for size in args.sizes:
        mask = MASKS[args.mask](WORK / f"{args.mask}_{size}.tif", size)
        out, lines = WORK / f"{args.mask}_{size}.gpkg", WORK / f"{args.mask}_{size}_lines.gpkg"
        cmd = [str(GEOUNET), "vectorize", str(mask), "-o", str(out), "--overwrite", "-q"]
        if args.mask == "lines":
            cmd += ["--centerlines", str(lines)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        peaks[size] = run = tree_peak_rss(cmd)
        counts = f"{pyogrio.read_info(out)['features']} features"
        if args.mask == "lines":
            counts += f", {pyogrio.read_info(lines)['features']} centerlines"
        print(f"{size}x{size}: {counts}, peak RSS {run.total_mib:.0f} MiB all processes, "
              f"{run.largest_mib:.0f} MiB the largest, {run.seconds:.1f} s", flush=True)
    small, large = peaks[min(peaks)], peaks[max(peaks)]
    print(f"peak RSS ratio {max(peaks)}^2 / {min(peaks)}^2: all processes "
          f"{large.total_mib / small.total_mib:.3f}, the largest "
          f"{large.largest_mib / small.largest_mib:.3f}")


if __name__ == "__main__":
    main()
