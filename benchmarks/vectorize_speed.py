"""Vectorizing: ``geounet vectorize`` against ``gdal_polygonize.py`` on the same mask.

Masks (deterministic, 0.5 m pixels in EPSG:32633): ``blobs``, blobs with holes (about as dense
as a crack or building mask); ``network``, the same blobs as class 1 under 300 straight bands
3-9 px wide crossing the whole raster as class 2, one network of roads spanning the raster;
``lines``, many separate thin segments (see :func:`lines_mask`).
Both tools write GeoPackage, alternately, each in its own process. Prints per pair the wall
time and the peak resident memory of each command with all its child processes (summed,
polled every 20 ms), their ratios geounet / gdal_polygonize and the medians, then checks
that both gave the same features: count, total area, and a zero-area symmetric difference of
their unions. Needs GDAL's command-line tools (Debian: gdal-bin). Usage:
``python -m benchmarks.vectorize_speed [--mask blobs|network|lines] [--size 8192] [--pairs 3]
[--connectivity 4]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.transform import Affine, from_origin
from scipy import ndimage

from benchmarks.common import WORK, tree_peak_rss, union_difference

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


def network_mask(path: Path, size: int, seed: int = 0, bands: int = 300) -> Path:
    """Blobs with holes as class 1 (as :func:`blob_mask`) and, as class 2 over them, ``bands``
    straight bands 3-9 px wide, each crossing the whole raster at a random angle: one network
    of roads that spans the raster (EPSG:32633, 0.5 m)."""
    if path.exists():
        return path
    blobs = blob_mask(path.with_name(f"blobs_{size}.tif"), size, seed)
    rng = np.random.default_rng(seed + 1)
    roads = []
    for _ in range(bands):
        angle = rng.uniform(0, np.pi)
        centre = rng.uniform(0, size, 2)
        step = np.array([np.cos(angle), np.sin(angle)]) * size * 1.5
        line = shapely.LineString([centre - step, centre + step])
        roads.append(line.buffer(rng.uniform(1.5, 4.5), cap_style="flat"))
    with rasterio.open(blobs) as src:
        profile = src.profile
    with rasterio.open(blobs) as src, rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 2048):
            window = ((row, min(size, row + 2048)), (0, size))
            mask = src.read(1, window=window)
            road = features.rasterize(roads, out_shape=mask.shape,
                                      transform=Affine.translation(0, row))
            mask[road > 0] = 2
            dst.write(mask, 1, window=window)
    return path


def lines_mask(path: Path, size: int, seed: int = 0) -> Path:
    """Many separate thin lines (cracks): in every 256 x 256 cell, 6 straight segments
    20-120 px long and 1-3 px wide at random angles, written in 2048-row strips
    (EPSG:32633, 0.5 m). The same density at every size."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 0.5, 0.5),
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    cell = 256
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 2048):
            h = min(2048, size - row)
            lines = []
            for r in range(row, row + h, cell):
                for c in range(0, size, cell):
                    for _ in range(6):
                        start = rng.uniform((c, r), (c + cell, r + cell))
                        angle, length = rng.uniform(0, np.pi), rng.uniform(20, 120)
                        end = start + length * np.array([np.cos(angle), np.sin(angle)])
                        lines.append(shapely.LineString([start, end]).buffer(
                            rng.uniform(0.5, 1.5), cap_style="flat"))
            mask = features.rasterize(lines, out_shape=(h, size),
                                      transform=Affine.translation(0, row), dtype="uint8")
            dst.write(mask, 1, window=((row, row + h), (0, size)))
    return path


MASKS = {"blobs": blob_mask, "network": network_mask, "lines": lines_mask}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", choices=sorted(MASKS), default="blobs")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--connectivity", type=int, choices=(4, 8), default=4)
    args = parser.parse_args()
    polygonize = shutil.which("gdal_polygonize.py") or shutil.which("gdal_polygonize")
    if polygonize is None:
        raise SystemExit("gdal_polygonize.py not found: install GDAL's tools (gdal-bin)")
    WORK.mkdir(parents=True, exist_ok=True)
    mask = MASKS[args.mask](WORK / f"{args.mask}_{args.size}.tif", args.size)
    ours, theirs = WORK / "vec_geounet.gpkg", WORK / "vec_gdal.gpkg"
    conn = ["-8"] if args.connectivity == 8 else []
    geounet_cmd = [str(GEOUNET), "vectorize", str(mask), "-o", str(ours), "--overwrite",
                   "-q", "--connectivity", str(args.connectivity)]
    gdal_cmd = [polygonize, "-q", *conn, "-mask", str(mask), str(mask), "-f", "GPKG",
                str(theirs)]
    print(f"{args.mask} mask {args.size}x{args.size}, connectivity {args.connectivity}")
    print(f"{'pair':<6}{'geounet s':>11}{'gdal s':>9}{'ratio':>8}"
          f"{'geounet MiB':>13}{'gdal MiB':>10}{'ratio':>8}")
    times, memories = [], []
    for pair in range(1, args.pairs + 1):
        theirs.unlink(missing_ok=True)
        ours_run, gdal_run = tree_peak_rss(geounet_cmd), tree_peak_rss(gdal_cmd)
        a, b, a_mib, b_mib = (ours_run.seconds, gdal_run.seconds, ours_run.total_mib,
                              gdal_run.total_mib)
        times.append(a / b)
        memories.append(a_mib / b_mib)
        print(f"{pair:<6}{a:>11.2f}{b:>9.2f}{a / b:>8.3f}{a_mib:>13.0f}{b_mib:>10.0f}"
              f"{a_mib / b_mib:>8.3f}", flush=True)
    print(f"median ratio geounet/gdal_polygonize: time {float(np.median(times)):.3f}, "
          f"peak memory of all processes {float(np.median(memories)):.3f}")
    a, b = gpd.read_file(ours), gpd.read_file(theirs)
    rel, sym = union_difference(a.geometry.values, b.geometry.values)
    print(f"features: geounet {len(a)}, gdal {len(b)}; area: geounet {a.area.sum():.2f}, "
          f"gdal {b.area.sum():.2f} m2; relative difference {rel:.2e}; union symmetric "
          f"difference {sym:.6f} m2")


if __name__ == "__main__":
    main()
