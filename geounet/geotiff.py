"""The GeoTIFF contract between stages: how masks and probabilities are written and read back.

``predict`` (and the Dask assembly of split rasters) write, and ``vectorize``, ``preview``,
``evaluate`` and the workflow summaries read:

- **Grid**: the input's size, CRS and geotransform; ground control points are carried over
  for GCP-georeferenced inputs (:func:`open_output`).
- **Layout** (:func:`profile`): tiled 512 x 512 (256 for rasters smaller than 512),
  DEFLATE, the floating-point predictor for probabilities, BigTIFF when needed. Masks are
  uint8 class ids with nodata 255; probabilities float32 with nodata NaN.
- **Tags**: ``GEOUNET_CLASS_NAMES``, the class names as a JSON list (any text, commas
  included), which :func:`read_class_names` reads; ``GEOUNET_CLASSES``, the names joined by
  commas, for scripts and geounet versions that read that tag (files written before the JSON
  tag only have this one; read it only when the JSON tag is absent);
  ``GEOUNET_CLASS_COLORS``, one ``'#rrggbb'`` per class name as a JSON list (the model's
  ``class_colors``), which :func:`read_class_colors` reads and ``preview`` paints with; a
  single-band uint8 class mask also gets them as its GDAL colour table (nodata 255
  transparent), so QGIS and ``gdalinfo`` show each class in its colour (files without the
  tag keep the default palette, :func:`geounet.palette.class_colour`);
  ``GEOUNET_MODEL_SOURCE``, the checkpoint's name.
- **Bytes**: streaming writes may store a block twice (a block finished in two windows is
  flushed, then rewritten at the end of the file), so :func:`finish` rewrites each output
  once, block by block in order (``gdal_translate`` with the same options, or a COG): equal
  pixels give byte-identical files, no larger than needed, however they were computed.

It also holds :func:`metres_per_unit`, the one conversion from CRS units to metres.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rasterio
from rasterio.io import DatasetReader, DatasetWriter

from geounet.io import RasterInfo
from geounet.outputs import check_tiff_complete, raise_write_errors, temporary_sibling
from geounet.palette import colors_problem, to_rgb

CLASS_NAMES_TAG = "GEOUNET_CLASS_NAMES"
CLASS_COLORS_TAG = "GEOUNET_CLASS_COLORS"
LEGACY_CLASSES_TAG = "GEOUNET_CLASSES"
MODEL_SOURCE_TAG = "GEOUNET_MODEL_SOURCE"
MASK_NODATA = 255
STREAM_ZLEVEL = 1     # while streaming: fast; the final rewrite compresses at ZLEVEL
ZLEVEL = 6


def profile(info: RasterInfo, count: int, dtype: str, nodata: float) -> dict[str, Any]:
    """The creation profile of an output on ``info``'s grid, CRS and transform.

    Compression uses GDAL_NUM_THREADS threads where that is set (Dask workers set it to
    their share of the cores), else all CPUs."""
    block = 512 if min(info.width, info.height) >= 512 else 256
    return {
        "driver": "GTiff", "width": info.width, "height": info.height, "count": count,
        "dtype": dtype, "nodata": nodata, "crs": info.crs, "transform": info.transform,
        "tiled": True, "blockxsize": block, "blockysize": block, "compress": "deflate",
        # Floating-point predictor for probabilities; none for categorical class ids.
        "predictor": 3 if dtype.startswith("float") else 1, "zlevel": ZLEVEL,
        "bigtiff": "if_safer",
        "num_threads": rasterio.env.get_gdal_config("GDAL_NUM_THREADS") or "all_cpus",
    }


def open_output(stack: contextlib.ExitStack, path: Path, info: RasterInfo, count: int,
                dtype: str, nodata: float) -> DatasetWriter:
    """Open ``path`` for streaming writes on ``info``'s grid (GCPs carried over); closed
    with ``stack``. Pass the file to :func:`finish` once every pixel is written."""
    options = profile(info, count, dtype, nodata) | {"zlevel": STREAM_ZLEVEL}
    dst = stack.enter_context(rasterio.open(path, "w", **options))
    if info.gcps[0]:  # georeferenced by ground control points: carry them over
        dst.gcps = (list(info.gcps[0]), info.gcps[1])
    return dst


def describe(dst: DatasetWriter, class_names: Sequence[str], model_source: str,
             band_names: Sequence[str], class_colors: Sequence[str] = ()) -> None:
    """Write the class-names, class-colours and model tags and one description per band.

    ``class_colors``: one ``'#rrggbb'`` per class name (empty: no colour tag); on a
    single-band uint8 raster (a class mask) they also become its GDAL colour table."""
    tags = {LEGACY_CLASSES_TAG: ",".join(class_names),
            CLASS_NAMES_TAG: json.dumps(list(class_names)), MODEL_SOURCE_TAG: model_source}
    if class_colors:
        problem = colors_problem(list(class_colors), len(class_names))
        if problem:
            raise ValueError(f"class colours {problem}")
        tags[CLASS_COLORS_TAG] = json.dumps(list(class_colors))
        if dst.count == 1 and dst.dtypes[0] == "uint8":
            table = {i: (*to_rgb(c), 255) for i, c in enumerate(class_colors)}
            dst.write_colormap(1, table | {MASK_NODATA: (0, 0, 0, 0)})
    dst.update_tags(**tags)
    for band, name in enumerate(band_names, start=1):
        dst.set_band_description(band, name)


def read_class_names(src: DatasetReader) -> list[str]:
    """Class names of a mask or probabilities raster written by geounet (empty if none)."""
    tags = src.tags()
    if CLASS_NAMES_TAG in tags:
        with contextlib.suppress(ValueError):
            names = json.loads(tags[CLASS_NAMES_TAG])
            if isinstance(names, list):
                return [str(n) for n in names]
    return [n for n in tags.get(LEGACY_CLASSES_TAG, "").split(",") if n]


def read_class_colors(src: DatasetReader) -> list[str]:
    """``'#rrggbb'`` per class id of a raster written by geounet, from its
    ``GEOUNET_CLASS_COLORS`` tag; empty when the tag is absent or not such a list."""
    text = src.tags().get(CLASS_COLORS_TAG)
    if text is None:
        return []
    try:
        colors = json.loads(text)
    except ValueError:
        return []
    if not isinstance(colors, list) or colors_problem(colors, len(colors)):
        return []
    return [str(c) for c in colors]


def finish(path: Path, kind: str, cog: bool = False) -> None:
    """Rewrite ``path`` (a temporary name) in place compactly: every block once, in order,
    with the final compression; as a Cloud-Optimized GeoTIFF with overviews when ``cog``.
    ``kind``: ``mask`` (nearest-neighbour overviews) or ``prob`` (averaged)."""
    from rasterio.shutil import copy as rio_copy

    raise_write_errors()   # the streamed blocks must all be there before they are copied
    check_tiff_complete(path)
    with rasterio.open(path) as src:
        float_data = src.dtypes[0].startswith("float")
        block = src.block_shapes[0][0]
        threads = rasterio.env.get_gdal_config("GDAL_NUM_THREADS") or "ALL_CPUS"
    if cog:
        options = {"driver": "COG", "compress": "DEFLATE", "blocksize": 512,
                   "bigtiff": "IF_SAFER", "predictor": "YES", "num_threads": threads,
                   "overview_resampling": "nearest" if kind == "mask" else "average"}
    else:
        options = {"driver": "GTiff", "tiled": "YES", "blockxsize": block,
                   "blockysize": block, "compress": "DEFLATE", "zlevel": ZLEVEL,
                   "predictor": 3 if float_data else 1, "bigtiff": "IF_SAFER",
                   "num_threads": threads}
    compact = temporary_sibling(path, create=False)
    try:
        rio_copy(path, compact, **options)
        compact.replace(path)
    finally:
        compact.unlink(missing_ok=True)
        Path(str(compact) + ".aux.xml").unlink(missing_ok=True)


def metres_per_unit(crs: Any) -> float | None:
    """Metres per linear unit of a projected CRS (rasterio or pyproj CRS, or anything
    pyproj reads); ``None`` for a geographic CRS or no CRS."""
    if crs is None:
        return None
    from pyproj import CRS

    crs = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if crs.is_geographic or not crs.axis_info:
        return None
    return float(crs.axis_info[0].unit_conversion_factor or 1.0)


def silence_libtiff_stderr() -> int:
    """Stop libtiff printing errors straight to stderr; return in how many libtiffs.

    GDAL reports a failed TIFF write through its own error handler (which rasterio turns into
    an exception and :func:`geounet.outputs.gdal_write_errors` hears), but some of libtiff's
    messages, such as ``_tiffWriteProc: No space left on device.`` on a full disk, reach
    libtiff's global
    handler, which prints them raw, once per block. Unsetting that handler in every libtiff
    this process loaded (GDAL's, and Pillow's beside it; Linux only) leaves GDAL's report as
    the only one.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = set(re.findall(r"(/\S*/libtiff[^/\s]*\.so[.\d]*)$", maps.read(),
                                   re.MULTILINE))
    except OSError:
        return 0
    done = 0
    for path in sorted(paths):
        try:
            set_handler = ctypes.CDLL(path).TIFFSetErrorHandler
        except (OSError, AttributeError):
            continue
        set_handler.restype = ctypes.c_void_p
        set_handler.argtypes = [ctypes.c_void_p]
        set_handler(None)
        done += 1
    return done
