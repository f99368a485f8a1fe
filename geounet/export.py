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
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from pyproj import CRS

from geounet.errors import ConfigError
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


def measure(geometries: np.ndarray, crs: CRS | None) -> tuple[np.ndarray, np.ndarray]:
    """(areas in m^2, perimeters in m) of polygons in ``crs``; pixel units when it is None."""
    if crs is not None and crs.is_geographic:
        geod = crs.get_geod()
        pairs = np.array([geod.geometry_area_perimeter(g) for g in geometries]).reshape(-1, 2)
        return np.abs(pairs[:, 0]), pairs[:, 1]
    unit = crs.axis_info[0].unit_conversion_factor if crs is not None and crs.axis_info else 1.0
    return shapely.area(geometries) * unit**2, shapely.length(geometries) * unit


def to_frame(class_ids: np.ndarray, geometries: np.ndarray, crs: CRS | None,
             class_names: dict[int, str]) -> gpd.GeoDataFrame:
    """A GeoDataFrame with the standard columns, measured in ``crs``."""
    areas, perimeters = measure(geometries, crs)
    names = np.array([class_names.get(int(c), str(c)) for c in class_ids], dtype=object)
    columns = dict(zip(COLUMNS, (class_ids.astype(np.int32), names,
                                 areas.astype(np.float64), perimeters.astype(np.float64))))
    return gpd.GeoDataFrame(columns, geometry=geometries, crs=crs)


def write_frame(frame: gpd.GeoDataFrame, path: Path, driver: str) -> None:
    """Write ``frame`` atomically as ``driver`` (see module docstring for GeoJSON's CRS)."""
    if driver == "GeoJSON" and frame.crs is not None:
        frame = frame.to_crs("EPSG:4326")
    if driver == "Parquet":
        tmp = temporary_sibling(path, ".parquet")
        try:
            frame.to_parquet(tmp)
            os.replace(tmp, path)
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
