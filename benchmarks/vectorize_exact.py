"""Exactness: ``geounet vectorize`` (blocks smaller than the raster) against
``gdal_polygonize.py`` on the whole mask, for both connectivities.

Masks: the bundled road and crack label masks, a blob mask (default 8192 x 8192, see
:func:`benchmarks.vectorize_speed.blob_mask`) and a network mask whose roads span the raster
(default 4096 x 4096, :func:`benchmarks.vectorize_speed.network_mask`: one feature joined
from every block, with thousands of holes). For each mask and connectivity prints the
feature counts, the relative difference of total areas and the area of the symmetric
difference of the two unions (all should be equal / 0). Needs GDAL's command-line tools
(Debian: gdal-bin). Usage:
``python -m benchmarks.vectorize_exact [--size 8192] [--network-size 4096]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd

from benchmarks.common import SAMPLE, WORK, union_difference
from benchmarks.vectorize_speed import blob_mask, network_mask

GEOUNET = Path(sys.executable).with_name("geounet")


def compare(mask: Path, connectivity: int, block_size: int, polygonize: str) -> str:
    ours, theirs = WORK / "exact_geounet.gpkg", WORK / "exact_gdal.gpkg"
    theirs.unlink(missing_ok=True)
    subprocess.run([str(GEOUNET), "vectorize", str(mask), "-o", str(ours), "--overwrite", "-q",
                    "--connectivity", str(connectivity), "--block-size", str(block_size)],
                   check=True)
    subprocess.run([polygonize, "-q", *(["-8"] if connectivity == 8 else []), "-mask",
                    str(mask), str(mask), "-f", "GPKG", str(theirs)], check=True)
    a, b = gpd.read_file(ours), gpd.read_file(theirs)
    rel, sym = union_difference(a.geometry.values, b.geometry.values)
    return (f"{mask.name:<18}{connectivity:>5}{block_size:>7}{len(a):>10}{len(b):>10}"
            f"{rel:>12.1e}{sym:>12.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--network-size", type=int, default=4096)
    args = parser.parse_args()
    polygonize = shutil.which("gdal_polygonize.py") or shutil.which("gdal_polygonize")
    if polygonize is None:
        raise SystemExit("gdal_polygonize.py not found: install GDAL's tools (gdal-bin)")
    WORK.mkdir(parents=True, exist_ok=True)
    masks = [(SAMPLE / "roads_mask.tif", 1000), (SAMPLE / "cracks_mask.tif", 500),
             (blob_mask(WORK / f"blobs_{args.size}.tif", args.size), 2048),
             (network_mask(WORK / f"network_{args.network_size}.tif", args.network_size), 1024)]
    print(f"{'mask':<18}{'conn':>5}{'block':>7}{'geounet':>10}{'gdal':>10}"
          f"{'area rel':>12}{'sym diff':>12}")
    for mask, block in masks:
        for connectivity in (4, 8):
            print(compare(mask, connectivity, block, polygonize), flush=True)


if __name__ == "__main__":
    main()
