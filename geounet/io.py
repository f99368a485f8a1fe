"""Raster input and output: validation, band selection, masked reads, atomic writes.

Reads return float32 arrays shaped ``(bands, rows, cols)`` plus a boolean ``valid`` mask
``(rows, cols)`` that is False where any selected band is nodata (the dataset's nodata value,
internal or sidecar mask, alpha) or not finite (NaN, infinity). Outputs are written under a
temporary name in the destination folder and renamed into place when complete, so a crash
never leaves a partial file at the final path.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from geounet.errors import GeoUNetError, InputError, OutputError

SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
# Refuse rasters whose header claims more than this many pixels per band before allocating.
MAX_PIXELS = 2**40
# Share of the available memory a whole-raster reader may take before it is refused.
MEMORY_SHARE = 0.8
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


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
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A failed write to the temporary file (disk full, I/O error) becomes an
    :class:`OutputError` naming ``path``; whatever was at ``path`` before is left untouched.
    """
    tmp_path = temporary_sibling(path, ".part")
    try:
        try:
            with _gdal_write_errors() as errors:
                yield tmp_path
            if errors:  # e.g. the final flush on close failed: GDAL only logs it
                raise OSError(errors[0])
            _check_tiff_complete(tmp_path)
            os.replace(tmp_path, path)
        except (OSError, RasterioError) as exc:
            if isinstance(exc, GeoUNetError) or not _is_write_error(exc, tmp_path):
                raise
            raise write_failed(path, exc) from exc
    finally:
        tmp_path.unlink(missing_ok=True)
        for sidecar in tmp_path.parent.glob(tmp_path.name + ".*"):
            sidecar.unlink(missing_ok=True)


class _WriteErrors(logging.Handler):
    """Collects the write errors GDAL signals without rasterio raising them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"GDAL signalled an error: .*msg='(.*)'", record.getMessage())
        if found and _says_write_failed(found.group(1)):
            self.messages.append(found.group(1))


@contextlib.contextmanager
def _gdal_write_errors() -> Iterator[list[str]]:
    """Within a rasterio environment, yield the list of GDAL write errors signalled in it.

    rasterio raises on failed block writes but only logs (at INFO) what fails when a dataset
    is closed, such as flushing its last blocks to a full disk.
    """
    logger = logging.getLogger("rasterio._env")
    saved = logger.level, logger.propagate
    if not logger.isEnabledFor(logging.INFO):  # hear INFO records without showing them
        logger.setLevel(logging.INFO)
        logger.propagate = False
    handler = _WriteErrors()
    logger.addHandler(handler)
    try:
        with rasterio.Env():
            yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _check_tiff_complete(path: Path) -> None:
    """Raise OSError if the GeoTIFF at ``path`` misses a block (a write that failed silently,
    as GDAL's short writes on a full disk can be): every block must lie inside the file."""
    with open(path, "rb") as file:
        if file.read(4) not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return
    size = path.stat().st_size
    with rasterio.open(path) as src:
        for band in src.indexes:
            for (row, col), _ in src.block_windows(band):
                offset, length = (src.get_tag_item(f"BLOCK_{what}_{col}_{row}", "TIFF", band)
                                  for what in ("OFFSET", "SIZE"))
                if not offset or not length or int(offset) + int(length) > size:
                    raise OSError(f"the write of block ({col}, {row}) of band {band} failed")


def _says_write_failed(text: str) -> bool:
    return "write" in text.lower() or any(os.strerror(n) in text for n in DISK_FULL)


def _is_write_error(exc: BaseException, tmp_path: Path) -> bool:
    """True when ``exc`` comes from writing ``tmp_path`` (and not, say, from reading inputs)."""
    return any((isinstance(e, OSError) and e.errno in DISK_FULL) or tmp_path.name in str(e)
               or _says_write_failed(str(e)) for e in exception_chain(exc))


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions behind it, outermost first (as a traceback shows them)."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def write_failed(path: Path, exc: BaseException) -> OutputError:
    """The one-line error for a write to (a temporary sibling of) ``path`` that failed."""
    full = any((isinstance(e, OSError) and e.errno in DISK_FULL)
               or any(os.strerror(n) in str(e) for n in DISK_FULL) for e in exception_chain(exc))
    with contextlib.suppress(OSError):
        full = full or os.statvfs(path.parent).f_bavail == 0
    cause = "the disk is full" if full else f"the write failed ({first_line(exc)})"
    return OutputError(f"{path}: could not be written: {cause}; nothing was changed there, "
                       "free some space or choose another folder")


def gtiff_profile(info: RasterInfo, count: int, dtype: str, nodata: float) -> dict:
    """A tiled, compressed GeoTIFF profile on the input's grid, CRS and transform.

    Compression uses GDAL_NUM_THREADS threads where that is set (Dask workers set it to
    their share of the cores), else all CPUs."""
    block = 512 if min(info.width, info.height) >= 512 else 256
    return {
        "driver": "GTiff", "width": info.width, "height": info.height, "count": count,
        "dtype": dtype, "nodata": nodata, "crs": info.crs, "transform": info.transform,
        "tiled": True, "blockxsize": block, "blockysize": block, "compress": "deflate",
        # Floating-point predictor for probabilities; none for categorical class ids.
        "predictor": 3 if dtype.startswith("float") else 1, "zlevel": 6,
        "bigtiff": "if_safer",
        "num_threads": rasterio.env.get_gdal_config("GDAL_NUM_THREADS") or "all_cpus",
    }


def first_line(exc: BaseException) -> str:
    """The first line of the innermost cause of ``exc`` (GDAL's own words, when it has them)."""
    *_, exc = exception_chain(exc)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
