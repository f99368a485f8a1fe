"""Helpers shared by the benchmarks: test rasters cut or mosaicked from the sample scenes."""

from __future__ import annotations

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
