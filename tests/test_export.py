"""Writing layers: GeoJSON decimals from the pixel size, CRSs GeoJSON cannot hold, write
failures named for what they are."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from pyproj import CRS
from rasterio.transform import Affine
from test_hostile import disk_full_after

from geounet.errors import ConfigError, OutputError
from geounet.export import (
    MAX_DECIMALS,
    PIXEL_FRACTION_KEPT,
    Features,
    check_layer_crs,
    geojson_decimals,
    pixel_size,
    polygon_fields,
    write_layer,
)
from geounet.features import measure, measure_lines
from geounet.outputs import write_failed

UTM = CRS.from_epsg(32633)
WGS84 = CRS.from_epsg(4326)


def keeps(decimals: int, size: float) -> bool:
    """Whether ``decimals`` is the fewest that resolve PIXEL_FRACTION_KEPT of ``size``."""
    step = size * PIXEL_FRACTION_KEPT
    return 10.0**-decimals <= step * (1 + 1e-9) and 10.0 ** -(decimals - 1) > step


@pytest.mark.parametrize("metres", [0.001, 0.3, 30.0, 300.0])
def test_decimals_of_a_degree_for_a_projected_pixel(metres):
    # A degree is at most ~111.7 km on the ground: the pixel's smallest size in degrees.
    assert keeps(geojson_decimals(metres, UTM), metres / 111_700)
    feet = CRS.from_epsg(2263)                                # NAD83 / New York (US feet)
    assert keeps(geojson_decimals(metres / 0.3048006096, feet), metres / 111_700)


def test_decimals_for_degrees_pixel_units_and_unknown():
    assert keeps(geojson_decimals(2.7e-6, WGS84), 2.7e-6)
    assert keeps(geojson_decimals(1.0, None), 1.0)            # pixel coordinates
    assert geojson_decimals(1e-12, WGS84) == MAX_DECIMALS     # never past a float64's digits
    for unknown in (None, 0.0, math.nan, math.inf):
        assert geojson_decimals(unknown, UTM) == MAX_DECIMALS


def test_pixel_size_in_the_layer_crs():
    transform = Affine(0.5, 0, 500000.0, 0, -0.25, 5000000.0)
    assert pixel_size(transform, (100, 100), UTM) == pytest.approx(0.25)
    rotated = Affine(0.3, -0.4, 500000.0, 0.4, 0.3, 5000000.0)   # 0.5 m sides
    assert pixel_size(rotated, (10, 10), UTM) == pytest.approx(0.5)
    # 0.25 m at 45 N, 15 E in degrees: of latitude (the shorter here)
    degrees = pixel_size(transform, (100, 100), UTM, WGS84)
    assert degrees == pytest.approx(0.25 / 111_132, rel=0.01)


def test_geojson_is_written_with_the_decimals_of_the_pixel(tmp_path):
    frame = Features(
        {"feature_id": [0], "class_id": [1], "class_name": ["a"], "area_m2": [1e-6],
         "perim_m": [4e-3]},
        shapely.box([500000.001], 4999999.998, 500000.002, 4999999.999))
    out = tmp_path / "mm.geojson"
    write_layer([frame], out, "GeoJSON", UTM, "MultiPolygon", polygon_fields(False, False),
                pixel_size=0.001)
    text = out.read_text()
    decimals = max(len(d) for d in re.findall(r"\d\.(\d+)", text.split('"geometry"')[1]))
    assert decimals == geojson_decimals(0.001, UTM)
    ring = json.loads(text)["features"][0]["geometry"]["coordinates"][0][0]
    assert shapely.Polygon(ring).area > 0 and shapely.LinearRing(ring).is_ccw


LOCAL = ('LOCAL_CS["site grid",LOCAL_DATUM["local",0],UNIT["metre",1],'
         'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')


def _square() -> Features:
    return Features({"feature_id": [0], "class_id": [1], "class_name": ["a"],
                     "area_m2": [1.0], "perim_m": [4.0]}, shapely.box([10], 10, 11, 11))


@pytest.mark.parametrize("crs", [LOCAL, "IAU_2015:30100"])   # a site grid; the Moon
def test_geojson_of_a_crs_without_a_way_to_wgs84_is_refused_before_any_work(tmp_path, crs):
    crs = CRS.from_user_input(crs)
    out = tmp_path / "site.geojson"
    started = []

    def frames():
        started.append(True)
        yield _square()

    with pytest.raises(ConfigError) as refused:
        write_layer(frames(), out, "GeoJSON", crs, "MultiPolygon", polygon_fields(False, False))
    message = str(refused.value)
    assert message.startswith(f"{out}: GeoJSON (RFC 7946)") and "WGS 84" in message
    assert ".gpkg" in message and "\n" not in message and "disk" not in message
    assert not started and list(tmp_path.iterdir()) == []
    check_layer_crs(out, "GPKG", crs)           # other formats keep any CRS
    check_layer_crs(out, "GeoJSON", None)       # pixel coordinates: plain GeoJSON
    check_layer_crs(out, "GeoJSON", UTM)
    write_layer([_square()], tmp_path / "site.gpkg", "GPKG", crs, "MultiPolygon",
                polygon_fields(False, False))
    assert list(tmp_path.iterdir()) == [tmp_path / "site.gpkg"]


def test_cli_geojson_from_a_site_grid_is_one_line(make_raster, tmp_path):
    from click.testing import CliRunner

    from geounet.cli import main

    mask = np.zeros((1, 16, 16), np.uint8)
    mask[0, 4:8, 4:10] = 1
    path = make_raster(mask, crs=rasterio.crs.CRS.from_wkt(LOCAL))
    out = tmp_path / "site.geojson"
    result = CliRunner().invoke(main, ["vectorize", str(path), "-o", str(out)])
    assert result.exit_code != 0
    assert result.stderr.count("\n") == 1 and "GeoJSON (RFC 7946)" in result.stderr
    assert "NULL pointer" not in result.stderr and "disk" not in result.stderr
    assert not out.exists()


def _many_squares(n: int) -> Features:
    return Features(
        {"feature_id": np.arange(n), "class_id": [1] * n, "class_name": ["a"] * n,
         "area_m2": [1.0] * n, "perim_m": [4.0] * n},
        shapely.box(np.arange(n), 0, np.arange(n) + 0.5, 0.5))


def test_geopackage_on_a_full_disk_says_so_not_sqlite(tmp_path):
    out = tmp_path / "full.gpkg"
    with disk_full_after(4096), pytest.raises(OutputError) as failed:
        write_layer([_many_squares(2000)], out, "GPKG", UTM, "MultiPolygon",
                    polygon_fields(False, False))
    message = str(failed.value)
    assert message.startswith(f"{out}: could not be written:") and "\n" not in message
    assert "sqlite3_exec" not in message and "INSERT" not in message
    assert "free some space" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("gdal", [
    "Error while writing batch to OGR layer: sqlite3_exec(COMMIT) failed: database or disk "
    "is full",
    # SQLite rolls back by itself after a failed write; GDAL's own ROLLBACK then fails.
    "Error while writing batch to OGR layer: sqlite3_exec(ROLLBACK) failed: cannot rollback "
    "- no transaction is active"])
def test_sqlite_write_failures_read_as_a_full_disk(tmp_path, gdal):
    message = str(write_failed(tmp_path / "x.gpkg", RuntimeError(gdal)))
    assert "sqlite3_exec" not in message and "free some space" in message
    if "disk is full" in gdal:
        assert "the disk is full" in message


def test_measures_on_the_ellipsoid_match_a_local_projection_holes_and_parts_included():
    """In lon/lat, areas and perimeters are on the ellipsoid: the same as in the local UTM
    zone (within its scale error), holes subtracted whatever their orientation, every ring
    of every part in the perimeter, as the planar measures count them; a box between two
    parallels has the area of that zone of the ellipsoid."""
    utm = CRS.from_epsg(32611)
    to_utm = pyproj.Transformer.from_crs(WGS84, utm, always_xy=True).transform
    outline = shapely.box(-115.2, 36.1, -115.199, 36.101)
    hole = shapely.box(-115.1998, 36.1002, -115.1995, 36.1005)
    with_hole = shapely.Polygon(outline.exterior.coords, [hole.exterior.coords])   # both cw/ccw
    same_turn = shapely.Polygon(outline.exterior.coords, [hole.exterior.coords[::-1]])
    two_parts = shapely.MultiPolygon([with_hole, shapely.box(-115.198, 36.1, -115.1975, 36.1005)])
    geometries = np.array([with_hole, same_turn, two_parts], dtype=object)
    areas, perimeters = measure(geometries, WGS84)
    projected = shapely.transform(geometries, lambda xy: np.column_stack(to_utm(*xy.T)))
    scale = 0.9996 * 1.0006   # UTM's scale at this distance from the central meridian, bound
    np.testing.assert_allclose(areas, shapely.area(projected), rtol=2 * (scale**2 - 1))
    np.testing.assert_allclose(perimeters, shapely.length(projected), rtol=2 * (scale - 1))
    assert areas[0] == pytest.approx(areas[1], rel=1e-12)
    both = shapely.MultiLineString([hole.exterior, outline.exterior])
    lines = np.array([with_hole.exterior, both, shapely.LineString()], dtype=object)
    lengths = measure_lines(lines, WGS84)
    assert lengths[1] == pytest.approx(perimeters[0], rel=1e-12) and lengths[2] == 0
    assert measure(np.array([], dtype=object), WGS84)[0].dtype == np.float64
    # between latitudes 40 and 43 N, 3 degrees of longitude: 2 pi b^2 (q(43) - q(40)) / 120
    geod = pyproj.Geod(ellps="WGS84")
    e = math.sqrt(geod.es)

    def q(lat: float) -> float:
        s = math.sin(math.radians(lat))
        return (1 - e * e) * (s / (1 - e * e * s * s)
                              - math.log((1 - e * s) / (1 + e * s)) / (2 * e))

    zone = 2 * math.pi * geod.a**2 * (q(43) - q(40)) / 2 * 3 / 360
    assert measure(np.array([shapely.box(10, 40, 13, 43)]), WGS84)[0][0] == pytest.approx(
        zone, rel=1e-9)
