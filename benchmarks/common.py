"""Helpers shared by the benchmarks: test rasters cut or mosaicked from the sample scenes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work"
SAMPLE = ROOT / "sample_data"


def mosaic(source: Path, out: Path, size: int) -> Path:
    """A ``size x size`` raster tiled from ``source`` (same CRS, pixel size and profile)."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(source) as src:
        profile = src.profile | {"width": size, "height": size, "bigtiff": "if_safer"}
        tmp = out.with_name(out.name + ".part")
        with rasterio.open(tmp, "w", **profile) as dst:
            step = min(src.width, src.height, 2048)
            for r in range(0, size, step):
                for c in range(0, size, step):
                    h, w = min(step, size - r), min(step, size - c)
                    sr, sc = (r // step * 733) % (src.height - h + 1), (c // step * 911) % (
                        src.width - w + 1)
                    dst.write(src.read(window=Window(sc, sr, w, h)), window=Window(c, r, w, h))
    tmp.replace(out)
    return out


def union_difference(ours, theirs) -> tuple[float, float]:
    """(relative difference of total area, area of the symmetric difference of the unions)
    of two polygon sets, in the CRS's units.

    Features are paired by their bounds and area; paired features are compared one to one
    (fast), and only those left unpaired or unequal are unioned and compared.
    """
    import numpy as np
    import shapely

    def repaired(geoms):   # gdal_polygonize's 8-connected rings touch themselves
        geoms = np.asarray(geoms).copy()
        invalid = ~shapely.is_valid(geoms)
        geoms[invalid] = shapely.make_valid(geoms[invalid], method="structure")
        return geoms

    ours, theirs = repaired(ours), repaired(theirs)
    total_ours, total_theirs = shapely.area(ours).sum(), shapely.area(theirs).sum()

    def order(geoms):
        key = np.column_stack([shapely.bounds(geoms), shapely.area(geoms)]).round(6)
        return geoms[np.lexsort(key.T[::-1])]

    a, b = order(ours), order(theirs)
    n = min(len(a), len(b))
    same = shapely.equals(a[:n], b[:n])
    rest_a = np.concatenate([a[:n][~same], a[n:]])
    rest_b = np.concatenate([b[:n][~same], b[n:]])
    sym = shapely.union_all(rest_a).symmetric_difference(shapely.union_all(rest_b)).area
    return abs(total_ours - total_theirs) / total_theirs, sym


@dataclass(frozen=True)
class Peak:
    """A command's run: peak resident memory of it and all its child processes together and
    of the largest single process (MiB), and its wall time (s)."""

    total_mib: float
    largest_mib: float
    seconds: float


def tree_peak_rss(cmd: list[str], interval: float = 0.02) -> Peak:
    """Run ``cmd`` and poll the resident memory of it and its child processes every
    ``interval`` seconds. Shared pages count once per process, so the total errs high."""
    import subprocess
    import time

    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    root, total, largest = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        now = []
        try:
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    now.append(p.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
        total, largest = max(total, sum(now)), max([largest, *now])
        time.sleep(interval)
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return Peak(total / 2**20, largest / 2**20, time.perf_counter() - start)
