"""Vectorizing: ``geounet vectorize`` against ``gdal_polygonize.py`` on the same mask.

A deterministic 8192 x 8192 mask of blobs with holes (about as dense as a crack or building
mask) is polygonized by both tools to GeoPackage, alternately, in separate processes. Prints
the time of each pair and the ratio geounet / gdal_polygonize, then checks that both gave the
same features: count, total area, and a zero-area symmetric difference of their unions.
Needs GDAL's command-line tools (Debian: gdal-bin). Usage:
``python -m benchmarks.vectorize_speed [--size 8192] [--pairs 3] [--connectivity 4]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.transform import from_origin
from scipy import ndimage

from benchmarks.common import WORK, union_difference

GEOUNET = Path(sys.executable).with_name("geounet")


def blob_mask(path: Path, size: int, seed: int = 0) -> Path:
    """Blobs with holes, written in 2048-row strips (EPSG:32633, 0.5 m)."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 0.5, 0.5),
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 2048):
            h = min(2048, size - row)
            noise = ndimage.gaussian_filter(rng.standard_normal((h, size)), 6, mode="wrap")
            blobs = (noise > 0.02).astype(np.uint8)
            holes = ndimage.gaussian_filter(rng.standard_normal((h, size)), 2) > 0.12
            blobs[holes] = 0
            dst.write(blobs, 1, window=((row, row + h), (0, size)))
    return path


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--connectivity", type=int, choices=(4, 8), default=4)
    args = parser.parse_args()
    polygonize = shutil.which("gdal_polygonize.py") or shutil.which("gdal_polygonize")
    if polygonize is None:
        raise SystemExit("gdal_polygonize.py not found: install GDAL's tools (gdal-bin)")
    WORK.mkdir(parents=True, exist_ok=True)
    mask = blob_mask(WORK / f"blobs_{args.size}.tif", args.size)
    ours, theirs = WORK / "vec_geounet.gpkg", WORK / "vec_gdal.gpkg"
    conn = ["-8"] if args.connectivity == 8 else []
    geounet_cmd = [str(GEOUNET), "vectorize", str(mask), "-o", str(ours), "--overwrite",
                   "-q", "--connectivity", str(args.connectivity)]
    gdal_cmd = [polygonize, "-q", *conn, "-mask", str(mask), str(mask), "-f", "GPKG",
                str(theirs)]
    print(f"mask {args.size}x{args.size}, connectivity {args.connectivity}")
    print(f"{'pair':<6}{'geounet s':>11}{'gdal s':>9}{'geounet/gdal':>14}")
    ratios = []
    for pair in range(1, args.pairs + 1):
        theirs.unlink(missing_ok=True)
        a, b = timed(geounet_cmd), timed(gdal_cmd)
        ratios.append(a / b)
        print(f"{pair:<6}{a:>11.2f}{b:>9.2f}{a / b:>14.3f}")
    print(f"median ratio geounet/gdal_polygonize: {float(np.median(ratios)):.3f}")
    a, b = gpd.read_file(ours), gpd.read_file(theirs)
    rel, sym = union_difference(a.geometry.values, b.geometry.values)
    print(f"features: geounet {len(a)}, gdal {len(b)}; area: geounet {a.area.sum():.2f}, "
          f"gdal {b.area.sum():.2f} m2; relative difference {rel:.2e}; union symmetric "
          f"difference {sym:.6f} m2")


if __name__ == "__main__":
    main()
