"""Raster input: validation, band selection, masked reads, memory checks.

Reads return float32 arrays shaped ``(bands, rows, cols)`` plus a boolean ``valid`` mask
``(rows, cols)`` that is False where any selected band is nodata (the dataset's nodata value,
internal or sidecar mask, alpha) or not finite (NaN, infinity). Outputs are written by
:mod:`geounet.outputs` (checks, atomic renames) and :mod:`geounet.geotiff` (the GeoTIFF
contract between stages).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from geounet.errors import InputError
from geounet.inputs import require_regular_file
from geounet.outputs import first_line

SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
# Refuse rasters whose header claims more than this many pixels per band before allocating.
MAX_PIXELS = 2**40
# Share of the available memory a whole-raster reader may take before it is refused.
MEMORY_SHARE = 0.8


@dataclass(frozen=True)
class RasterInfo:
    """What geounet needs to know of an input raster (CRS and transform as in the file)."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: rasterio.crs.CRS | None
    transform: rasterio.Affine
    nodata: float | None
    gcps: tuple = ((), None)   # (ground control points, their CRS) when georeferenced so


def fraction_in(values: np.ndarray) -> float | None:
    """A value of ``values`` (finite numbers) that is not a whole number, so not a class
    id; None when there is none."""
    fractional = values[values != np.round(values)]
    return float(fractional[0]) if fractional.size else None


GCP_TOLERANCE_PX = 0.1   # how far an affine fit may miss a ground control point


def gcp_transform(points: Sequence) -> tuple[rasterio.Affine, float]:
    """The affine transform that fits ground control points best (least squares,
    :func:`rasterio.transform.from_gcps`) and how far it misses the worst of them (pixels)."""
    from rasterio.transform import from_gcps

    transform = from_gcps(points)
    inverse = ~transform
    miss = max((float(np.hypot(*np.subtract(inverse @ (p.x, p.y), (p.col, p.row))))
                for p in points), default=0.0)
    return transform, miss


def georeferenced(info: RasterInfo) -> RasterInfo:
    """``info`` placed by its ground control points when it has no CRS of its own but GCPs
    (as ``predict`` carries them over to its outputs): their CRS and the affine transform
    fitted to them. GCPs that no affine transform fits within :data:`GCP_TOLERANCE_PX`
    (a warped or sensor-geometry image) are refused with the warp that fixes it."""
    points, crs = info.gcps
    if info.crs is not None or not points or crs is None:
        return info
    transform, miss = (gcp_transform(points) if len(points) >= 3
                       else (rasterio.Affine.identity(), math.inf))
    if miss > GCP_TOLERANCE_PX:
        raise InputError(f"{info.path}: is placed by {len(points)} ground control points that "
                         f"no affine transform fits (off by {miss:.2g} px); warp it onto a "
                         f"grid first: gdalwarp -r near -t_srs {crs} {info.path} warped.tif")
    return replace(info, transform=transform, crs=crs)


def open_raster(path: str | Path) -> RasterInfo:
    """Open and validate a raster; raise :class:`InputError` with the cause and the fix."""
    path = require_regular_file(path, "raster")  # a FIFO or device would wait forever
    try:
        with rasterio.open(path) as src:
            if src.count == 0:  # e.g. a GeoPackage of several rasters, a NetCDF of variables
                found = src.subdatasets
                hint = "give a raster file" if not found else (
                    f"it holds {len(found)} subdatasets: {', '.join(found[:5])}"
                    f"{', ...' if len(found) > 5 else ''}; extract the one to use, e.g. "
                    f"gdal_translate {found[0]} one.tif")
                raise InputError(f"{path}: has no raster bands; {hint}")
            dtypes = set(src.dtypes)
            info = RasterInfo(
                path=path, width=src.width, height=src.height, count=src.count,
                dtype=src.dtypes[0], crs=src.crs, transform=src.transform, nodata=src.nodata,
                gcps=(tuple(src.gcps[0]), src.gcps[1]),
            )
    except RasterioIOError as exc:
        raise InputError(f"{path}: not a readable raster ({first_line(exc)})") from exc
    if len(dtypes) > 1:
        raise InputError(f"{path}: bands have different data types {sorted(dtypes)}")
    if info.dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"{path}: data type {info.dtype} is not supported; convert to one of "
            f"{', '.join(SUPPORTED_DTYPES)} (e.g. gdal_translate -ot Float32)"
        )
    if info.width * info.height > MAX_PIXELS:
        raise InputError(f"{path}: claims {info.width}x{info.height} pixels, beyond what "
                         "geounet will process; check the file")
    return info


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping, or None when unknown.

    The kernel's ``MemAvailable`` estimate, capped by a cgroup (container) limit when there
    is one; ``os.sysconf`` free pages where ``/proc`` is missing.
    """
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return available


def require_in_memory(info: RasterInfo, bytes_per_pixel: float, purpose: str) -> None:
    """Refuse, before allocating, to hold the whole of ``info`` in memory when it can't fit.

    ``bytes_per_pixel`` is what ``purpose`` (e.g. "evaluate") keeps per pixel at its peak.
    """
    needed = info.width * info.height * bytes_per_pixel
    available = available_memory()
    if available is not None and needed > MEMORY_SHARE * available:
        raise InputError(
            f"{info.path}: {purpose} holds the whole {info.width}x{info.height} px raster in "
            f"memory (~{needed / 2**30:.1f} GiB) but only {available / 2**30:.1f} GiB is "
            "available; crop or split it first (e.g. gdal_translate -srcwin) or check the file"
        )


def select_bands(info: RasterInfo, model_bands: Sequence[int], bands: Sequence[int] | None,
                 ) -> tuple[int, ...]:
    """The 1-based bands of ``info`` to feed the model, in model order.

    ``model_bands`` are the bands the model was trained on; ``bands`` is the user's choice.
    Without a choice, the raster must have exactly the model's band count.
    """
    needed = len(model_bands)
    trained = ",".join(map(str, model_bands))
    if bands is None:
        if info.count != needed or max(model_bands) > info.count:
            example = [min(b, info.count) for b in range(1, needed + 1)]
            raise InputError(
                f"{info.path}: raster has {info.count} band(s) but the model expects {needed} "
                f"(trained on bands {trained}); choose {needed} with --bands, "
                f"e.g. --bands {','.join(map(str, example))}"
            )
        return tuple(model_bands)
    chosen = tuple(bands)
    if len(chosen) != needed:
        raise InputError(f"--bands lists {len(chosen)} band(s) but the model expects {needed} "
                         f"(trained on bands {trained})")
    bad = [b for b in chosen if not 1 <= b <= info.count]
    if bad:
        raise InputError(f"--bands {bad} not in {info.path}, which has bands 1..{info.count}")
    return chosen


def read_masked(src: rasterio.DatasetReader, bands: Sequence[int], window: Window,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` of ``bands`` as float32 ``(bands, rows, cols)`` and its valid mask."""
    data = src.read(list(bands), window=window, out_dtype="float32")
    if np.issubdtype(np.dtype(src.dtypes[bands[0] - 1]), np.floating):
        valid = np.isfinite(data).all(axis=0)
    else:  # integers are always finite: skip a pass over the block
        valid = np.ones(data.shape[1:], dtype=bool)
    flags = [src.mask_flag_enums[b - 1] for b in bands]
    if any(MaskFlags.all_valid not in f for f in flags):
        valid &= (src.read_masks(list(bands), window=window) > 0).all(axis=0)
    return data, valid


def normalize(data: np.ndarray, valid: np.ndarray, mean: Sequence[float],
              std: Sequence[float]) -> np.ndarray:
    """(x - mean) / std per band, in place; invalid pixels become 0 (the band mean)."""
    for band, (m, s) in enumerate(zip(mean, std)):
        np.subtract(data[band], np.float32(m), out=data[band])
        np.multiply(data[band], np.float32(1.0 / s), out=data[band])
    if not valid.all():
        data[:, ~valid] = 0.0
    return data
