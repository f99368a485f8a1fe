"""Class masks to polygons (and centerlines) in a GIS format, with their measurements.

Polygonizing happens in raster pixel coordinates, block by block and merged exactly across
blocks (:mod:`geounet.polygonize`); each batch of complete features is finished in map space
(:mod:`geounet.features`: filtered, mapped through the raster's transform into its CRS,
measured) and streamed to the output (:mod:`geounet.export`), so only one block of pixels and
the features still open across block edges are ever in memory. This module is the API: the
settings, the checks of the outputs before any work, and :func:`vectorize_raster`.

Per feature: class id and name, area and perimeter (m^2 / m, on the ellipsoid in a geographic CRS),
the mean probability when a probability raster is given (the exact pixel-weighted mean, from
the pixels), and, with centerlines, the length, mean width (area / length) and maximum width
(m) of its skeleton (see :mod:`geounet.centerline`), computed from the complete feature's
pixels, so it is joined across blocks by construction. The centerline branches are spooled
to a temporary Arrow stream as they come and written after the polygons: memory does not grow
with the number of lines, and the polygon and centerline files appear together or not at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pyproj
import rasterio

from geounet.errors import ConfigError, InputError
from geounet.export import (
    CENTERLINE_FIELDS,
    check_layer_crs,
    check_reprojection,
    pixel_size,
    polygon_fields,
    write_layer,
    write_layer_at,
)
from geounet.features import FeatureLayers, LineSpool
from geounet.geotiff import read_class_names
from geounet.io import RasterInfo, georeferenced, open_raster
from geounet.outputs import (
    atomic_outputs,
    check_outputs,
    first_line,
    temporary_sibling,
    vector_format,
)
from geounet.polygonize import (
    GDAL_CACHE_MB,
    PixelSettings,
    check_same_grid,
    pixel_settings,
    polygonize,
)
from geounet.settings import CallSettings, VectorizeSettings


class VectorizeConfig(VectorizeSettings, CallSettings):
    """Polygonization settings (:class:`geounet.settings.VectorizeSettings`)."""

    def pixel_settings(self, transform: rasterio.Affine) -> PixelSettings:
        """The polygonizing settings, in pixel units of a raster with ``transform``."""
        return pixel_settings(self, transform)


@dataclass(frozen=True)
class VectorOutputs:
    """Checked vector outputs of one command: names, formats, and the CRSs of the features:
    ``raster_crs`` where they are measured (the raster's, or the one declared for a raster
    without; None: the transform's own units), ``layer_crs`` where they are written;
    ``reproject``: whether the two differ by request."""

    polygons: Path
    polygons_format: str
    centerlines: Path | None
    centerlines_format: str | None
    raster_crs: pyproj.CRS | None
    layer_crs: pyproj.CRS | None
    reproject: bool


def check_vector_outputs(output: str | Path, centerlines: str | Path | None,
                         driver: str | None, crs: str | None,
                         inputs: list[str | Path], overwrite: bool, raster: RasterInfo,
                         pixel_coordinates: bool = False) -> VectorOutputs:
    """Check the vector outputs of a command before any work: formats that agree with the
    names, every file (and Shapefile part) free to write, distinct from each other and
    from the inputs, a CRS that pyproj knows, and that the features of ``raster`` (the mask,
    or the image whose mask it will be: same grid) can be placed and written in it."""
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
    source = pyproj.CRS.from_user_input(raster.crs.to_wkt()) if raster.crs else None
    reproject = requested is not None and source is not None
    if source is None:
        if requested is not None:   # declared
            source = requested
        elif not pixel_coordinates:
            raise InputError(f"{raster.path}: raster has no CRS; declare it with --crs "
                             "EPSG:XXXX (in a workflow: vectorize: {crs: EPSG:XXXX}) or accept "
                             "pixel coordinates with --pixel-coordinates")
    target = requested if reproject else source
    if reproject:
        assert source is not None and requested is not None
        check_reprojection(source, requested, raster.transform, (raster.height, raster.width),
                           f"--crs {crs}")
    check_layer_crs(output, fmt, target)
    check_layer_crs(lines, lines_fmt, target)
    return VectorOutputs(output, fmt, lines, lines_fmt, source, target, reproject)


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
        pixel_coordinates: accept a raster without a CRS; coordinates in its own units (pixels,
            or its transform's units when it has one).
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
    if info.count != 1:
        raise InputError(f"{mask_path}: has {info.count} bands; a class mask has one (class "
                         "ids, 0 for background): give the mask that predict writes, or "
                         "extract the band that holds the classes (gdal_translate -b N)")
    inputs = [mask_path] + ([probabilities] if probabilities is not None else [])
    if probabilities is not None:
        check_same_grid(info, open_raster(probabilities))
    info = georeferenced(info)
    plan = check_vector_outputs(output, centerlines_output, driver, crs, inputs, overwrite,
                                info, pixel_coordinates)
    fmt, lines_path, lines_fmt = plan.polygons_format, plan.centerlines, plan.centerlines_format
    with rasterio.open(mask_path) as src:
        class_names = dict(enumerate(read_class_names(src)))
    target = plan.layer_crs
    size = pixel_size(info.transform, (info.height, info.width), plan.raster_crs, target)
    outputs = FeatureLayers(info.transform, plan.raster_crs, class_names, config,
                            probabilities is not None, target if plan.reproject else None)
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
            outputs.spool = LineSpool(temporary_sibling(lines_path, ".arrows"))
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
