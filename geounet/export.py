"""Writing features to the vector formats GIS tools read.

Formats come from the
output's extension: ``.gpkg`` GeoPackage, ``.geojson``/``.json`` GeoJSON (RFC 7946: WGS 84
lon/lat, right-hand winding, as many decimals as the raster's pixel needs: see
:func:`geojson_decimals`), ``.shp`` Shapefile (names of at most 10 characters:
``mean_wid_m``, ``max_wid_m``), ``.parquet`` GeoParquet. Features are streamed: batches
(one per block of the mask) go through Arrow into GDAL (pyogrio.write_arrow) or into a
Parquet writer, so memory does not grow with the number of features. Every file is written
under a temporary name beside the destination and renamed when complete; an empty result is
a valid, empty layer with the full schema.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import ProjError
from rasterio import Affine

from geounet.errors import ConfigError
from geounet.outputs import atomic_outputs, write_failed

# Attribute columns and their Arrow types.
POLYGON_FIELDS = {"feature_id": pa.int64(), "class_id": pa.int32(), "class_name": pa.string(),
                  "area_m2": pa.float64(), "perim_m": pa.float64()}
SCORE_FIELDS = {"score": pa.float64()}
LINEAR_FIELDS = {"length_m": pa.float64(), "mean_width_m": pa.float64(),
                 "max_width_m": pa.float64()}
SHAPEFILE_NAMES = {"mean_width_m": "mean_wid_m", "max_width_m": "max_wid_m"}  # <= 10 chars
CENTERLINE_FIELDS = {"feature_id": pa.int64(), "class_id": pa.int32(),
                     "class_name": pa.string(), **LINEAR_FIELDS}


# GeoJSON coordinates are decimal text. Rounded to 1/10^4 of a pixel, the total area of the
# sample and Landsat masks moves by < 1e-7 of itself (1/100 px: ~4e-7); GDAL's RFC 7946
# default of 7 decimals of a degree (~1 cm) collapses millimetre pixels into empty rings.
PIXEL_FRACTION_KEPT = 1e-4
MAX_DECIMALS = 15           # a float64 longitude holds no more decimals than this
METRES_PER_DEGREE = 111_700  # at most, on the ground (a degree of latitude at the poles)
WGS84 = CRS.from_epsg(4326)


@dataclass
class Features:
    """A batch of features: attribute arrays by column name and their geometries (a shapely
    array of the same length), in one CRS. Plain arrays, no data frame: vectorizing does
    not load pandas."""

    columns: dict[str, np.ndarray]
    geometry: np.ndarray

    def __len__(self) -> int:
        return len(self.geometry)

    def to_crs(self, source: CRS, target: CRS | str) -> Features:
        """These features with their geometries transformed from ``source`` to ``target``
        (x = easting/longitude first)."""
        transform = Transformer.from_crs(source, target, always_xy=True).transform
        geometry = shapely.transform(self.geometry,
                                     lambda xy: np.column_stack(transform(xy[:, 0], xy[:, 1])))
        return Features(self.columns, geometry)


def polygon_fields(score: bool, linear: bool) -> dict[str, pa.DataType]:
    """The polygon layer's columns: with mean probability and/or centerline measures."""
    return POLYGON_FIELDS | (SCORE_FIELDS if score else {}) | (LINEAR_FIELDS if linear else {})


def check_layer_crs(path: Path | None, driver: str | None, crs: CRS | None) -> None:
    """Refuse, before any work, a layer that ``driver`` cannot hold in ``crs``: GeoJSON
    (RFC 7946) is WGS 84 longitude/latitude, so its CRS must transform there (a local site
    grid or another planet's cannot). ``crs`` is the features' CRS (None: pixel
    coordinates, written as plain GeoJSON); accepts anything pyproj reads."""
    if path is None or driver != "GeoJSON" or crs is None:
        return
    crs = CRS.from_user_input(crs)
    try:
        Transformer.from_crs(crs, WGS84, always_xy=True)
    except ProjError:
        raise ConfigError(f"{path}: GeoJSON (RFC 7946) needs a CRS that can be transformed to "
                          f"WGS 84, and the features' CRS {crs.name!r} ({crs.type_name}) "
                          "cannot; write .gpkg, .shp or .parquet instead") from None


def check_reprojection(source: CRS, target: CRS, transform: Affine, shape: tuple[int, int],
                       option: str) -> None:
    """Refuse, before any work, a reprojection from ``source`` to ``target`` that pyproj
    cannot make, or that sends part of the raster (``transform``, ``shape`` rows, cols; its
    outline sampled 33 points a side) outside ``target``'s valid area (infinite
    coordinates). ``option`` names the setting and its value in the message."""
    rows, cols = shape
    t = np.linspace(0.0, 1.0, 33)
    outline = np.concatenate([np.column_stack([t * cols, np.zeros_like(t)]),
                              np.column_stack([t * cols, np.full_like(t, rows)]),
                              np.column_stack([np.zeros_like(t), t * rows]),
                              np.column_stack([np.full_like(t, cols), t * rows])])
    x, y = transform @ (outline[:, 0], outline[:, 1])
    try:
        tx, ty = Transformer.from_crs(source, target, always_xy=True).transform(
            x, y, errcheck=True)
        reachable = bool(np.isfinite(tx).all() and np.isfinite(ty).all())
    except ProjError:
        reachable = False
    if not reachable:
        raise ConfigError(f"{option}: the raster's area in {source.name!r} "
                          "cannot be transformed there (no transformation between the two, "
                          "or the area lies outside its valid area); choose a CRS that "
                          "covers the raster")


def _unit(crs: CRS | None) -> float:
    """Metres per map unit of a projected CRS (1 for pixel coordinates)."""
    return crs.axis_info[0].unit_conversion_factor if crs is not None and crs.axis_info else 1.0


def pixel_size(transform: Affine, shape: tuple[int, int], crs: CRS | None,
               target: CRS | None = None) -> float | None:
    """The shorter side of a pixel at the centre of a raster of ``shape`` (rows, cols) with
    ``transform`` in ``crs``, in the units of ``target`` (of ``crs`` when None); None when
    the pixel cannot be transformed there."""
    row, col = shape[0] // 2, shape[1] // 2
    corners = np.array([transform @ (col, row), transform @ (col + 1, row),
                        transform @ (col, row + 1)], dtype=np.float64)
    if target is not None and crs is not None and target != crs:
        try:
            x, y = Transformer.from_crs(crs, target, always_xy=True).transform(
                corners[:, 0], corners[:, 1], errcheck=True)
        except ProjError:
            return None
        corners = np.column_stack([x, y])
    sides = np.hypot(*(corners[1:] - corners[0]).T)
    size = float(sides.min())
    return size if math.isfinite(size) and size > 0 else None


def geojson_decimals(pixel_size: float | None, crs: CRS | None) -> int:
    """Decimals of GeoJSON coordinates that keep 1/10^4 of a pixel of ``pixel_size`` (in
    ``crs`` units): of a degree once GDAL has reprojected to WGS 84 (RFC 7946), of the
    given units without a CRS; the most a float64 holds when the size is unknown."""
    if pixel_size is None or not (math.isfinite(pixel_size) and pixel_size > 0):
        return MAX_DECIMALS
    size = pixel_size
    if crs is not None and crs.is_geographic:
        size = math.degrees(pixel_size * _unit(crs))   # the unit is given in radians
    elif crs is not None:
        size = pixel_size * _unit(crs) / METRES_PER_DEGREE
    decimals = math.ceil(-math.log10(size * PIXEL_FRACTION_KEPT))
    return min(MAX_DECIMALS, max(0, decimals))


def write_layer(frames: Iterable[Features | pa.RecordBatch], path: Path, driver: str,
                crs: CRS | None, geometry_type: str, fields: dict[str, pa.DataType],
                pixel_size: float | None = None) -> None:
    """Stream ``frames`` (:class:`Features` in ``crs`` with ``fields``, or record batches
    already of :func:`record_batch`) into one layer at ``path``, atomically (see the module
    docstring for GeoJSON's CRS).

    ``pixel_size`` is the raster's shorter pixel side in ``crs`` units (see
    :func:`pixel_size`): GeoJSON keeps the decimals it needs (:func:`geojson_decimals`);
    None keeps every digit. Binary formats store full doubles and ignore it."""
    with atomic_outputs([path]) as (tmp,):
        assert tmp is not None
        write_layer_at(tmp, frames, path, driver, crs, geometry_type, fields, pixel_size)


def write_layer_at(tmp: Path, frames: Iterable[Features | pa.RecordBatch], path: Path, driver: str,
                   crs: CRS | None, geometry_type: str, fields: dict[str, pa.DataType],
                   pixel_size: float | None = None) -> None:
    """:func:`write_layer` into ``tmp``, a temporary of ``path`` that the caller's
    :func:`~geounet.outputs.atomic_outputs` block renames (with the command's other outputs,
    so that they all appear or none do). ``path`` names the layer and the messages."""
    check_layer_crs(path, driver, crs)   # callers check first; this keeps GDAL's NULL pointer out
    schema = layer_schema(fields)
    source = _Source(frames, schema, geometry_type)
    batches = iter(source)
    try:
        if driver == "Parquet":
            _write_geoparquet(batches, tmp, schema, crs, geometry_type)
        else:
            _write_ogr(batches, tmp, schema, driver, crs, geometry_type,
                       layer_name(path, driver), pixel_size)
    except (OSError, RuntimeError) as exc:  # pyogrio's errors are RuntimeErrors
        if source.error is not None:      # the features failed, not the writer
            raise source.error from source.error.__cause__
        raise write_failed(path, exc) from exc


def layer_name(path: Path, driver: str) -> str:
    """The layer's name: the file's stem, prefixed with ``layer_`` in a GeoPackage when it
    starts with a character GDAL refuses there (``-``, ``(``, ``#``, ``@``...) or with the
    reserved ``gpkg``."""
    name = path.stem
    if driver == "GPKG" and (name.startswith("gpkg") or not (name[:1].isalnum()
                                                             or name[:1] == "_")):
        return f"layer_{name}"
    return name


def layer_schema(fields: dict[str, pa.DataType]) -> pa.Schema:
    """The Arrow schema of a layer: ``fields`` then the geometry as WKB."""
    return pa.schema([*(pa.field(k, t) for k, t in fields.items()),
                      pa.field("geometry", pa.binary())])


class _Source:
    """Record batches from frames; keeps an exception raised while producing them, which
    GDAL's stream reader would otherwise report only as a failed batch."""

    def __init__(self, frames: Iterable[Features | pa.RecordBatch], schema: pa.Schema,
                 geometry_type: str) -> None:
        self.frames, self.schema, self.geometry_type = frames, schema, geometry_type
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            for frame in self.frames:
                yield (frame if isinstance(frame, pa.RecordBatch)
                       else record_batch(frame, self.schema, self.geometry_type))
        except BaseException as exc:
            self.error = exc
            raise


def record_batch(frame: Features, schema: pa.Schema, geometry_type: str) -> pa.RecordBatch:
    """One Arrow batch of ``frame`` in ``schema`` (:func:`layer_schema`): NaN (a measure
    that does not apply, such as the length of a feature without a centerline) becomes
    null, which every format stores as missing (a Shapefile would otherwise hold the number
    NaN and GeoJSON would drop it with a warning)."""
    columns = [pa.array(np.asarray(frame.columns[f.name]), f.type, from_pandas=True)
               for f in schema if f.name != "geometry"]
    geometries = np.asarray(frame.geometry, dtype=object)
    wkb = (as_multipolygon_wkb(geometries) if geometry_type == "MultiPolygon"
           else shapely.to_wkb(geometries, byte_order=1))
    return pa.record_batch([*columns, pa.array(wkb, pa.binary())], schema=schema)


def as_multipolygon_wkb(geometries: np.ndarray) -> np.ndarray:
    """Little-endian WKB of each polygon as a one-part MultiPolygon (one layer type for all
    formats; cheaper than building MultiPolygon objects)."""
    wkb = shapely.to_wkb(geometries, byte_order=1)
    single = shapely.get_type_id(geometries) == shapely.GeometryType.POLYGON
    wkb[single] = [_MULTI_OF_ONE + w for w in wkb[single]]
    return wkb


_MULTI_OF_ONE = b"\x01\x06\x00\x00\x00\x01\x00\x00\x00"   # LE, MultiPolygon, 1 part


def _write_ogr(batches: Iterator[pa.RecordBatch], path: Path, schema: pa.Schema, driver: str,
               crs: CRS | None, geometry_type: str, layer: str,
               pixel_size: float | None) -> None:
    options = None
    if driver == "GeoJSON":
        # RFC 7946: GDAL reprojects to WGS 84; pixel coordinates (no CRS): plain GeoJSON.
        options = {"RFC7946": "YES" if crs is not None else "NO",
                   "COORDINATE_PRECISION": str(geojson_decimals(pixel_size, crs))}
    # GeoPackage 1.2: what GIS tools on GDAL < 3.7 open without a warning.
    dataset_options = {"VERSION": "1.2"} if driver == "GPKG" else None
    if driver == "ESRI Shapefile":
        short = pa.schema([f.with_name(SHAPEFILE_NAMES.get(f.name, f.name)) for f in schema])
        batches = (pa.record_batch(b.columns, schema=short) for b in batches)
        schema = short
    reader = pa.RecordBatchReader.from_batches(schema, batches)
    with warnings.catch_warnings():   # no CRS is the user's explicit choice (pixel coordinates)
        warnings.filterwarnings("ignore", "'crs' was not provided")
        pyogrio.write_arrow(reader, path, driver=driver, layer=layer, geometry_name="geometry",
                            geometry_type=geometry_type, crs=crs.to_wkt() if crs else None,
                            dataset_options=dataset_options, layer_options=options)


def _write_geoparquet(batches: Iterator[pa.RecordBatch], path: Path, schema: pa.Schema,
                      crs: CRS | None, geometry_type: str) -> None:
    """GeoParquet 1.1 (WKB geometry column), one row group per batch."""
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": [geometry_type],
                                    "crs": crs.to_json_dict() if crs else None}}}
    schema = schema.with_metadata({b"geo": json.dumps(geo).encode()})
    with pq.ParquetWriter(path, schema) as writer:
        writer.write_table(pa.Table.from_batches([], schema))
        for batch in batches:
            writer.write_batch(batch)
