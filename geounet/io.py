"""Raster input and output: validation, band selection, masked reads, atomic writes.

Reads return float32 arrays shaped ``(bands, rows, cols)`` plus a boolean ``valid`` mask
``(rows, cols)`` that is False where any selected band is nodata (the dataset's nodata value,
internal or sidecar mask, alpha) or not finite (NaN, infinity). Outputs are written under a
temporary name in the destination folder and renamed into place when complete, so a crash
never leaves a partial file at the final path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from geounet.errors import InputError, OutputError

SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
# Refuse rasters whose header claims more than this many pixels per band before allocating.
MAX_PIXELS = 2**40


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


def open_raster(path: str | Path) -> RasterInfo:
    """Open and validate a raster; raise :class:`InputError` with the cause and the fix."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a raster file")
    try:
        with rasterio.open(path) as src:
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


def check_output(path: str | Path, inputs: Sequence[str | Path], overwrite: bool) -> Path:
    """Refuse an output that exists (without overwrite), equals an input, or can't be made."""
    path = Path(path)
    for item in inputs:
        if Path(item).exists() and path.exists() and path.samefile(item):
            raise OutputError(f"{path}: output is the same file as the input; choose another")
        if path.resolve() == Path(item).resolve():
            raise OutputError(f"{path}: output is the same file as the input; choose another")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give an output file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{parent}: output folder does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{parent}: output folder is not writable")
    return path


def temporary_sibling(path: Path, suffix: str) -> Path:
    """Create an empty, uniquely named hidden file beside ``path`` with umask permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent or ".")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    tmp_path = temporary_sibling(path, ".part")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
        for sidecar in tmp_path.parent.glob(tmp_path.name + ".*"):
            sidecar.unlink(missing_ok=True)


def gtiff_profile(info: RasterInfo, count: int, dtype: str, nodata: float) -> dict:
    """A tiled, compressed GeoTIFF profile on the input's grid, CRS and transform."""
    block = 512 if min(info.width, info.height) >= 512 else 256
    return {
        "driver": "GTiff", "width": info.width, "height": info.height, "count": count,
        "dtype": dtype, "nodata": nodata, "crs": info.crs, "transform": info.transform,
        "tiled": True, "blockxsize": block, "blockysize": block, "compress": "deflate",
        # Floating-point predictor for probabilities; none for categorical class ids.
        "predictor": 3 if dtype.startswith("float") else 1, "zlevel": 6,
        "bigtiff": "if_safer", "num_threads": "all_cpus",
    }


def first_line(exc: BaseException) -> str:
    """The first line of the innermost cause of ``exc`` (GDAL's own words, when it has them)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
