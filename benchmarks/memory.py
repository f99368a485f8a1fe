"""Memory: peak RSS of ``geounet predict`` on a 16384^2 raster versus a 2048^2 raster.

Both rasters are mosaics of the road scene (RGB, JPEG-compressed GeoTIFF); both runs use the
same model and settings, each in its own process; peak RSS is the kernel's ``ru_maxrss`` of
that process. Prints both peaks and their ratio. Usage:
``python benchmarks/memory.py [--sizes 2048 16384]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import SAMPLE, WORK, mosaic

GEOUNET = Path(sys.executable).with_name("geounet")


# Started by a bare interpreter: Linux carries the peak RSS of the process that spawns a
# command into the command's ru_maxrss when it is spawned by vfork (as subprocess does), so
# a benchmark that has just built a large raster would be charged for it.
_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_mib(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (peak RSS in MiB of it or of the largest of its child processes,
    wall seconds)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], stdout=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return int(done.stdout.split()[-1]) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SAMPLE / "models" / "roads.safetensors")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 16384])
    args = parser.parse_args()
    peaks = {}
    for size in args.sizes:
        raster = mosaic(SAMPLE / "roads_image.tif", WORK / f"roads_{size}.tif", size)
        out = WORK / f"roads_{size}_mask.tif"
        cmd = [str(GEOUNET), "predict", str(raster), "-m", str(args.model), "-o", str(out),
               "--overwrite", "-q"]
        peaks[size], seconds = peak_rss_mib(cmd)
        print(f"{size}x{size}: peak RSS {peaks[size]:.0f} MiB, {seconds:.1f} s")
    small, large = min(peaks), max(peaks)
    print(f"peak RSS ratio {large}^2 / {small}^2: {peaks[large] / peaks[small]:.3f}")


if __name__ == "__main__":
    main()
