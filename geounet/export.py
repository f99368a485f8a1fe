"""Measuring features and writing them to the vector formats GIS tools read.

Areas are in square metres and perimeters in metres: planar in a projected CRS (scaled by
the CRS's unit), geodesic on the CRS's ellipsoid in a geographic CRS. Formats come from the
output's extension: ``.gpkg`` GeoPackage, ``.geojson``/``.json`` GeoJSON (RFC 7946: WGS 84
lon/lat, right-hand winding), ``.shp`` Shapefile, ``.parquet`` GeoParquet. Every file is
written under a temporary name beside the destination and renamed when complete; an empty
result is a valid, empty layer with the full schema.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import geopandas as gpd
import pyogrio
from pyproj import CRS
from shapely.geometry.base import BaseGeometry

from geounet.errors import ConfigError, InputError
from geounet.io import temporary_sibling

FORMATS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON",
           ".shp": "ESRI Shapefile", ".parquet": "Parquet"}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")
COLUMNS = ("class_id", "class_name", "area_m2", "perim_m")  # <= 10 chars for Shapefile


def vector_format(path: Path, name: str | None = None) -> str:
    """The driver for ``path`` from ``name`` (a --format value) or the extension."""
    if name:
        by_name = {v.lower(): v for v in FORMATS.values()} | {"shapefile": "ESRI Shapefile",
                                                               "geoparquet": "Parquet"}
        if name.lower() not in by_name:
            raise ConfigError(f"unknown vector format {name!r}; choose gpkg, geojson, "
                              "shapefile or parquet")
        return by_name[name.lower()]
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ConfigError(f"{path}: cannot tell the format from {path.suffix!r}; use one of "
                          f"{', '.join(FORMATS)} or --format") from None


def measure(geometry: BaseGeometry, crs: CRS | None) -> tuple[float, float]:
    """(area in m^2, perimeter in m) of a polygon in ``crs``; pixel units when ``crs`` is None."""
    if crs is None:
        return geometry.area, geometry.length
    if crs.is_geographic:
        area, perimeter = crs.get_geod().geometry_area_perimeter(geometry)
        return abs(area), perimeter
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return geometry.area * unit**2, geometry.length * unit


def to_frame(features: Iterable[tuple[int, BaseGeometry]], crs: CRS | None,
             class_names: dict[int, str]) -> gpd.GeoDataFrame:
    """A GeoDataFrame with the standard columns, measured in ``crs``."""
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    geometries = []
    for class_id, geometry in features:
        area, perimeter = measure(geometry, crs)
        rows["class_id"].append(class_id)
        rows["class_name"].append(class_names.get(class_id, str(class_id)))
        rows["area_m2"].append(area)
        rows["perim_m"].append(perimeter)
        geometries.append(geometry)
    frame = gpd.GeoDataFrame(rows, geometry=geometries, crs=crs)
    return frame.astype({"class_id": "int32", "area_m2": "float64", "perim_m": "float64"})


def write_frame(frame: gpd.GeoDataFrame, path: Path, driver: str) -> None:
    """Write ``frame`` atomically as ``driver`` (see module docstring for GeoJSON's CRS)."""
    if driver == "GeoJSON" and frame.crs is not None:
        frame = frame.to_crs("EPSG:4326")
    if driver == "Parquet":
        tmp = temporary_sibling(path, ".parquet")
        try:
            frame.to_parquet(tmp)
            os.replace(tmp, path)
        except ImportError as exc:
            raise InputError("GeoParquet output needs pyarrow: pip install pyarrow") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return
    options = {"RFC7946": "YES"} if driver == "GeoJSON" else {}
    suffix = ".shp" if driver == "ESRI Shapefile" else path.suffix
    tmp = temporary_sibling(path, suffix)
    tmp.unlink()
    parts = [tmp.with_suffix(ext) for ext in SHAPEFILE_PARTS] if suffix == ".shp" else [tmp]
    try:
        pyogrio.write_dataframe(frame, tmp, driver=driver, layer=path.stem,
                                promote_to_multi=True, geometry_type="MultiPolygon",
                                layer_options=options)
        if suffix == ".shp":   # sidecars first, the .shp last: it is what readers open
            for part in parts[1:] + parts[:1]:
                if part.exists():
                    os.replace(part, path.with_suffix(part.suffix))
        else:
            os.replace(tmp, path)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
