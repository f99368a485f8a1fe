"""Class masks to polygons (and centerlines) in a GIS format, with their measurements.

Polygonizing happens in raster pixel coordinates, block by block and merged exactly across
blocks (:mod:`geounet.polygonize`); this module finishes each batch of complete features in
map space and streams it to the output: filtered, mapped through the raster's transform into
its CRS, measured and written (:mod:`geounet.export`), so only one block of pixels and the
features still open across block edges are ever in memory.

Per feature: class id and name, area and perimeter (m^2 / m, geodesic in a geographic CRS),
the mean probability when a probability raster is given (the exact pixel-weighted mean, from
the pixels), and, with centerlines, the length, mean width (area / length) and maximum width
(m) of its skeleton (see :mod:`geounet.centerline`), computed from the complete feature's
pixels, so it is joined across blocks by construction. The centerline branches are spooled
to a temporary Arrow stream as they come and written after the polygons: memory does not grow
with the number of lines, and the polygon and centerline files appear together or not at all.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyproj
import rasterio
import shapely

from geounet.centerline import Branches
from geounet.errors import ConfigError, InputError
from geounet.export import (
    CENTERLINE_FIELDS,
    Features,
    check_layer_crs,
    layer_schema,
    measure,
    measure_lines,
    pixel_size,
    polygon_fields,
    record_batch,
    write_layer,
    write_layer_at,
)
from geounet.geotiff import read_class_names
from geounet.io import open_raster
from geounet.outputs import (
    atomic_outputs,
    check_outputs,
    first_line,
    temporary_sibling,
    vector_format,
)
from geounet.polygonize import (
    GDAL_CACHE_MB,
    Pieces,
    PixelSettings,
    check_same_grid,
    polygonize,
)
from geounet.settings import CallSettings, VectorizeSettings


class VectorizeConfig(VectorizeSettings, CallSettings):
    """Polygonization settings (:class:`geounet.settings.VectorizeSettings`)."""

    def pixel_settings(self, transform: rasterio.Affine) -> PixelSettings:
        """The polygonizing settings, in pixel units of a raster with ``transform``."""
        skeleton: tuple[int, ...] | None = ()
        if self.centerlines:
            skeleton = self.linear_classes
        spur_px = None
        if self.spur_length is not None:
            spur_px = self.spur_length / math.sqrt(abs(transform.determinant))
        return PixelSettings(self.connectivity, self.block_size, self.classes, skeleton,
                             spur_px, self.workers)


@dataclass
class _Outputs:
    """Feature frames of the polygon and centerline layers, built batch by batch."""

    transform: rasterio.Affine
    crs: pyproj.CRS | None
    class_names: dict[int, str]
    config: VectorizeConfig
    scores: bool
    target_crs: str | None
    spool: _Spool | None = None
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
        geometries = _to_map(geometries, self.transform)
        if config.fill_holes > 0:
            geometries = _fill_holes(geometries, config.fill_holes)
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
                columns["score"] = pieces.score_sum / pieces.pixels
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
        have = [i for i in range(n) if pieces.branches[i] is not None and len(pieces.branches[i])]
        found = Branches.concat([pieces.branches[i] for i in have], shapes=have)
        if len(found):
            owner = found.shape
            lines = _to_map(found.lines, self.transform)
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


class _Spool:
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


def _to_map(geometries: np.ndarray, transform: rasterio.Affine) -> np.ndarray:
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


def _fill_holes(geometries: np.ndarray, max_area: float) -> np.ndarray:
    """Remove interior rings enclosing less than ``max_area`` (square map units)."""
    out = geometries.copy()
    for i in np.flatnonzero(shapely.get_num_interior_rings(geometries) > 0):
        parts = []
        for polygon in shapely.get_parts(geometries[i]):
            holes = [r for r in polygon.interiors if shapely.Polygon(r).area >= max_area]
            parts.append(shapely.Polygon(polygon.exterior, holes))
        out[i] = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    return out


@dataclass(frozen=True)
class VectorOutputs:
    """Checked vector outputs of one command: names, formats and the CRS asked for."""

    polygons: Path
    polygons_format: str
    centerlines: Path | None
    centerlines_format: str | None
    crs: pyproj.CRS | None


def check_vector_outputs(output: str | Path, centerlines: str | Path | None,
                         driver: str | None, crs: str | None,
                         inputs: list[str | Path], overwrite: bool) -> VectorOutputs:
    """Check the vector outputs of a command before any work: formats that agree with the
    names, every file (and Shapefile part) free to write, distinct from each other and
    from the inputs, and a CRS that pyproj knows."""
    output = Path(output)
    lines = Path(centerlines) if centerlines is not None else None
    check_outputs([output, lines], inputs, overwrite)
    fmt = vector_format(output, driver)
    lines_fmt = vector_format(lines, driver) if lines is not None else None
    requested = None
    if crs is not None:
        try:
            requested = pyproj.CRS.from_user_input(crs)
        except pyproj.exceptions.CRSError as exc:
            raise ConfigError(f"--crs {crs!r} is not a CRS pyproj knows ({first_line(exc)}); "
                              "give one like EPSG:32633") from None
    return VectorOutputs(output, fmt, lines, lines_fmt, requested)


@dataclass
class VectorizeResult:
    """What a vectorization run wrote."""

    output: Path
    features: int
    area_m2: float
    driver: str
    centerlines: Path | None = None
    centerline_features: int = 0
    centerline_length_m: float = 0.0
    seconds: float = 0.0


def vectorize_raster(mask_path: str | Path, output: str | Path,
                     config: VectorizeConfig | None = None, driver: str | None = None,
                     crs: str | None = None, pixel_coordinates: bool = False,
                     overwrite: bool = False, probabilities: str | Path | None = None,
                     centerlines_output: str | Path | None = None, progress: bool = False,
                     ) -> VectorizeResult:
    """Polygonize a class mask and write the features with their measurements.

    Args:
        mask_path: class mask raster (band 1; 0 is background, nodata is skipped).
        output: vector file; its format comes from ``driver`` or the extension.
        config: polygonization settings (``centerlines`` adds length and widths).
        driver: format name (gpkg, geojson, shapefile, parquet) overriding the extension.
        crs: reproject features to this CRS; for a raster without a CRS, declares its CRS.
        pixel_coordinates: accept a raster without a CRS and write pixel coordinates.
        overwrite: replace existing outputs.
        probabilities: probability raster on the mask's grid: adds each feature's mean
            probability (``score``).
        centerlines_output: also write the centerline branches (LineStrings) here; implies
            centerlines in ``config``.
        progress: show a progress bar on stderr.
    """
    started = time.perf_counter()
    config = config or VectorizeConfig()
    if centerlines_output is not None and not config.centerlines:
        config = config.model_copy(update={"centerlines": True})
    output = Path(output)
    info = open_raster(mask_path)
    inputs = [mask_path] + ([probabilities] if probabilities is not None else [])
    if probabilities is not None:
        check_same_grid(info, open_raster(probabilities))
    plan = check_vector_outputs(output, centerlines_output, driver, crs, inputs, overwrite)
    fmt, lines_path, lines_fmt = plan.polygons_format, plan.centerlines, plan.centerlines_format
    source_crs = info.crs
    if source_crs is None:
        if plan.crs is not None:   # declared
            source_crs, crs = rasterio.crs.CRS.from_user_input(plan.crs.to_wkt()), None
        elif not pixel_coordinates:
            raise InputError(f"{mask_path}: raster has no CRS; declare it with --crs EPSG:XXXX "
                             "or accept pixel coordinates with --pixel-coordinates")
    with rasterio.open(mask_path) as src:
        class_names = dict(enumerate(read_class_names(src)))
    pyproj_crs = pyproj.CRS.from_user_input(source_crs.to_wkt()) if source_crs else None
    target = plan.crs if crs else pyproj_crs
    check_layer_crs(output, fmt, target)
    check_layer_crs(lines_path, lines_fmt, target)
    size = pixel_size(info.transform, (info.height, info.width), pyproj_crs, target)
    outputs = _Outputs(info.transform, pyproj_crs, class_names, config,
                       probabilities is not None, crs)
    frames = (outputs.polygons(pieces) for pieces in polygonize(
        mask_path, config.pixel_settings(info.transform), probabilities, progress)
        if len(pieces))
    fields = polygon_fields(probabilities is not None, config.centerlines)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        if lines_path is None or lines_fmt is None:
            write_layer(frames, output, fmt, target, "MultiPolygon", fields, size)
        else:
            # Both layers appear together or neither does (a full disk while the lines are
            # written leaves no polygons behind).
            outputs.spool = _Spool(temporary_sibling(lines_path, ".arrows"))
            try:
                with atomic_outputs([output, lines_path]) as (polygons_tmp, lines_tmp):
                    assert polygons_tmp is not None and lines_tmp is not None
                    write_layer_at(polygons_tmp, frames, output, fmt, target, "MultiPolygon",
                                   fields, size)
                    write_layer_at(lines_tmp, outputs.spool.frames(), lines_path, lines_fmt,
                                   target, "LineString", CENTERLINE_FIELDS, size)
            finally:
                outputs.spool.close()
    return VectorizeResult(output, outputs.features, outputs.area_m2, fmt, lines_path,
                           outputs.centerline_features, outputs.centerline_length_m,
                           time.perf_counter() - started)
