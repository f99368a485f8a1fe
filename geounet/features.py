"""Features in map space: complete pieces filtered, mapped into the raster's CRS, measured.

:mod:`geounet.polygonize` yields complete features in raster pixel coordinates; here each
batch is mapped through the raster's transform into its CRS (:func:`to_map`), holes are
filled and shapes simplified as asked, and the features are measured: areas in square metres
and lengths in metres, planar in a projected CRS (scaled by the CRS's unit; pixel units
without a CRS), on the CRS's ellipsoid in a geographic CRS (areas with edges along parallels
and meridians, as pixel edges are; lengths geodesic). Centerline branches (computed in pixel
space by :mod:`geounet.centerline`) give linear features their length and widths, and go to
a spool file (:class:`LineSpool`) so that the centerline layer is streamed like the polygons.
Batches are :class:`geounet.export.Features`, written by :mod:`geounet.export`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyproj
import rasterio
import shapely
from pyproj import CRS, Geod, Transformer

from geounet.errors import InputError
from geounet.export import CENTERLINE_FIELDS, Features, layer_schema, record_batch
from geounet.geotiff import metres_per_unit
from geounet.polygonize import Pieces
from geounet.settings import VectorizeSettings


# -- measuring ----------------------------------------------------------------------------
def measure(geometries: np.ndarray, crs: CRS | None) -> tuple[np.ndarray, np.ndarray]:
    """(areas in m^2, perimeters in m) of polygons in ``crs``; pixel units when it is None."""
    geod = _geod(crs)
    if geod is not None and crs is not None:
        return _ellipsoid_area_perimeter(geod, crs, np.asarray(geometries))
    unit = metres_per_unit(crs) or 1.0
    return shapely.area(geometries) * unit**2, shapely.length(geometries) * unit


def measure_lines(lines: np.ndarray, crs: CRS | None) -> np.ndarray:
    """Lengths in metres of lines in ``crs`` (geodesic in a geographic CRS)."""
    geod = _geod(crs)
    if geod is not None:
        lines = np.asarray(lines)
        if (shapely.get_type_id(lines) == shapely.GeometryType.LINESTRING).all():
            return _geodesic_lengths(geod, lines)   # one part each (centerline branches)
        parts, owner = shapely.get_parts(lines, return_index=True)
        return _sums(owner, _geodesic_lengths(geod, parts), len(lines))
    return shapely.length(lines) * (metres_per_unit(crs) or 1.0)


def _geodesic_lengths(geod: Geod, paths: np.ndarray) -> np.ndarray:
    """Geodesic length (m) of each LineString or LinearRing of ``paths`` (lon/lat degrees),
    all segments in one call."""
    coords, path = shapely.get_coordinates(paths, return_index=True)
    if len(coords) < 2:
        return np.zeros(len(paths), dtype=np.float64)
    segments = segment_lengths(geod, coords[:, 0], coords[:, 1])
    within = path[1:] == path[:-1]
    return _sums(path[:-1][within], segments[within], len(paths))


SHORT_SEGMENT_DEG = 0.01   # about 1.1 km: see segment_lengths


def segment_lengths(geod: Geod, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Geodesic lengths (m) of the segments between consecutive points (degrees) on the
    ellipsoid ``geod``. Segments spanning under :data:`SHORT_SEGMENT_DEG` in longitude and
    latitude (a raster's pixel edges, centerline steps) are measured on the ellipsoid's
    local radii of curvature at their middle latitude (within 5e-6 m of the geodesic up to
    1.1 km, at any latitude; ten times faster), longer ones by pyproj's geodesic."""
    lat1, lat2 = np.radians(lat[:-1]), np.radians(lat[1:])
    dlon = np.radians((lon[1:] - lon[:-1] + 180.0) % 360.0 - 180.0)
    middle = 0.5 * (lat1 + lat2)
    w2 = 1.0 - geod.es * np.sin(middle) ** 2
    meridional = geod.a * (1.0 - geod.es) / (w2 * np.sqrt(w2))
    normal = geod.a / np.sqrt(w2)
    lengths = np.hypot(meridional * (lat2 - lat1), normal * np.cos(middle) * dlon)
    long_ = np.flatnonzero((np.abs(lat[1:] - lat[:-1]) > SHORT_SEGMENT_DEG)
                           | (np.abs(dlon) > np.radians(SHORT_SEGMENT_DEG)))
    if len(long_):
        _, _, lengths[long_] = geod.inv(lon[long_], lat[long_], lon[long_ + 1], lat[long_ + 1])
    return lengths


def _ellipsoid_area_perimeter(geod: Geod, crs: CRS, polygons: np.ndarray,
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(areas, perimeters) of (Multi)Polygons in the geographic ``crs`` on its ellipsoid
    ``geod``. Areas are exact on the ellipsoid for edges along parallels and meridians, as
    a raster's pixel edges are: planar in the ellipsoid's cylindrical equal-area projection
    (a geodesic edge bulges from a parallel: a 3 x 3 degree box differs by 7e-5 of its
    area; 30 cm pixels by < 1e-6). Perimeters: geodesic lengths of every ring, holes too
    (as the planar :func:`shapely.length`)."""
    ellipsoid = crs.ellipsoid
    assert ellipsoid is not None   # _geod found one
    equal_area = CRS.from_proj4(f"+proj=cea +a={ellipsoid.semi_major_metre!r} "
                                f"+b={ellipsoid.semi_minor_metre!r} +over +no_defs")
    transform = Transformer.from_crs(crs, equal_area, always_xy=True).transform
    areas = shapely.area(shapely.transform(
        polygons, lambda xy: np.column_stack(transform(xy[:, 0], xy[:, 1]))))
    parts, part_owner = shapely.get_parts(polygons, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    perimeters = _sums(part_owner[ring_part], _geodesic_lengths(geod, rings), len(polygons))
    return np.asarray(areas, dtype=np.float64), perimeters


def _sums(index: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    """Float64 sums of ``values`` grouped by ``index`` (0 .. count - 1)."""
    return np.bincount(index, values, minlength=count).astype(np.float64, copy=False)


def _geod(crs: CRS | None) -> Geod | None:
    """The ellipsoid to measure on in a geographic CRS; None: measure in map units."""
    if crs is None or not crs.is_geographic:
        return None
    geod = crs.get_geod()
    if geod is None:
        raise InputError(f"the geographic CRS {crs.name!r} has no ellipsoid, so lengths and "
                         "areas cannot be given in metres; assign a CRS with a datum")
    return geod



# -- batches of the two layers --------------------------------------------------------------
@dataclass
class FeatureLayers:
    """The polygon layer's batches, built from complete pieces, and the centerline layer's,
    spooled as they come (see the module docstring)."""

    transform: rasterio.Affine
    crs: pyproj.CRS | None
    class_names: dict[int, str]
    config: VectorizeSettings
    scores: bool
    target_crs: CRS | None
    spool: LineSpool | None = None
    features: int = 0
    area_m2: float = 0.0
    centerline_features: int = 0
    centerline_length_m: float = 0.0

    def polygons(self, pieces: Pieces) -> Features:
        """Finish complete features: filter, map to the CRS, measure. ``pieces`` gives up
        its pixel-space polygons (the largest feature is held once, not twice)."""
        config = self.config
        keep = pieces.pixels >= max(config.min_pixels, 1)
        geometries = pieces.polygons[keep]
        pieces.polygons[:] = None
        pieces = pieces.take(keep)
        geometries = to_map(geometries, self.transform)
        if config.fill_holes > 0:
            geometries = fill_holes(geometries, config.fill_holes)
        if config.simplify > 0:
            geometries = shapely.simplify(geometries, config.simplify, preserve_topology=True)
        keep = shapely.area(geometries) >= config.min_area
        pieces, geometries = pieces.take(keep), geometries[keep]
        areas, perimeters = measure(geometries, self.crs)
        columns = {
            "feature_id": np.arange(self.features, self.features + len(geometries)),
            "class_id": pieces.ids,
            "class_name": self._names(pieces.ids),
            "area_m2": areas, "perim_m": perimeters,
        }
        if self.scores:
            with np.errstate(invalid="ignore", divide="ignore"):
                columns["score"] = pieces.score_sum / pieces.scored   # none valid: null
        if config.centerlines:
            columns.update(self._centerlines(pieces, columns["feature_id"], areas))
        self.features += len(geometries)
        self.area_m2 += float(areas.sum())
        return self._in_target_crs(Features(columns, geometries))

    def _in_target_crs(self, features: Features) -> Features:
        """``features`` (in the raster's CRS) in the CRS asked for."""
        if self.target_crs is None or self.crs is None:
            return features
        return features.to_crs(self.crs, self.target_crs)

    def _names(self, class_ids: np.ndarray) -> np.ndarray:
        """Class names of ``class_ids`` (the id as text when the mask names none)."""
        unique, index = np.unique(class_ids, return_inverse=True)
        names = np.array([self.class_names.get(int(c), str(c)) for c in unique], dtype=object)
        return names[index.reshape(-1)]

    def _centerlines(self, pieces: Pieces, feature_ids: np.ndarray, areas: np.ndarray,
                     ) -> dict[str, np.ndarray]:
        """Skeleton branches of the linear features (to the spool) and the per-feature
        length (m), mean width (area / length, m) and maximum width (m)."""
        n = len(pieces)
        length, max_width = np.full(n, np.nan), np.full(n, np.nan)
        found = pieces.centerlines()
        have = np.unique(found.shape)
        if len(found):
            owner = found.shape
            lines = to_map(found.lines, self.transform)
            metres = measure_lines(lines, self.crs)
            scale = metres / found.length_px   # metres per pixel, per branch
            widest = found.max_width_px * scale
            length[have] = np.bincount(owner, metres, n)[have]
            max_width[have] = 0.0
            np.maximum.at(max_width, owner, widest)
            ids = pieces.ids[owner]
            rows = {"feature_id": feature_ids[owner], "class_id": ids,
                    "class_name": self._names(ids), "length_m": metres,
                    "mean_width_m": found.mean_width_px * scale, "max_width_m": widest}
            self.centerline_features += len(found)
            if self.spool is not None:
                self.spool.add(self._in_target_crs(Features(rows, lines)))
        self.centerline_length_m += float(np.nansum(length))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_width = np.where(length > 0, areas / length, np.nan)
        return {"length_m": length, "mean_width_m": mean_width, "max_width_m": max_width}


class LineSpool:
    """Centerline batches kept in a temporary Arrow stream file as they come (already the
    layer's record batches), read back one by one (so a second layer is streamed while the
    first is written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.schema = layer_schema(CENTERLINE_FIELDS)
        self.writer: pa.ipc.RecordBatchStreamWriter | None = None

    def add(self, lines: Features) -> None:
        if self.writer is None:
            self.writer = pa.ipc.new_stream(str(self.path), self.schema)
        self.writer.write_batch(record_batch(lines, self.schema, "LineString"))

    def frames(self) -> Iterator[pa.RecordBatch]:
        if self.writer is None:
            return
        self.writer.close()
        with pa.memory_map(str(self.path)) as source:
            yield from pa.ipc.open_stream(source)

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(pa.ArrowException, OSError):
                self.writer.close()
        self.path.unlink(missing_ok=True)


def to_map(geometries: np.ndarray, transform: rasterio.Affine) -> np.ndarray:
    """Pixel coordinates (x = column, y = row) to the raster's CRS. The items of
    ``geometries`` are replaced one by one (each old geometry goes as its new one comes)."""
    a, b, c, d, e, f = transform[:6]
    xy = shapely.get_coordinates(geometries)
    if b == 0 and d == 0:   # north-up: scale and shift, in place
        xy *= (a, e)
        xy += (c, f)
    else:
        x = xy[:, 0].copy()
        xy[:, 0] = a * x + b * xy[:, 1] + c
        xy[:, 1] = d * x + e * xy[:, 1] + f
    return shapely.set_coordinates(geometries, xy)


def fill_holes(geometries: np.ndarray, max_area: float) -> np.ndarray:
    """Remove interior rings enclosing less than ``max_area`` (square map units)."""
    out = geometries.copy()
    for i in np.flatnonzero(shapely.get_num_interior_rings(geometries) > 0):
        parts = []
        for polygon in shapely.get_parts(geometries[i]):
            holes = [r for r in polygon.interiors if shapely.Polygon(r).area >= max_area]
            parts.append(shapely.Polygon(polygon.exterior, holes))
        out[i] = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    return out
