"""Outputs read back by GIS clients that nobody here wrote (issue 19).

GDAL (pyogrio in-process, ``ogr2ogr``/``ogrinfo`` of the system when installed), pyshp for
Shapefiles and pyarrow for GeoParquet: a missing value is NULL in every format, and GeoJSON
(RFC 7946, WGS 84 lon/lat) keeps the raster's geometry: valid MultiPolygons with
counter-clockwise exteriors and the same area as the GeoPackage of the same features.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import rasterio
import shapely
import shapely.geometry
from pyproj import CRS, Transformer
from rasterio.transform import Affine
from rasterio.windows import Window

from geounet.export import Features, pixel_size, polygon_fields, write_layer
from geounet.vectorize import VectorizeConfig, vectorize_raster

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_data"
SHARED = ROOT.parent / "shared" / "data"
LINEAR = ("length_m", "mean_width_m", "max_width_m")
SHORT = {"mean_width_m": "mean_wid_m", "max_width_m": "max_wid_m"}


def two_class_mask(make_raster) -> Path:
    """Class 1 blobs (no centerline asked) and a class 2 band (with one)."""
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, 4:20, 5:20] = 1
    mask[0, 40:50, 40:50] = 1
    mask[0, 30:33, 3:60] = 2
    return make_raster(mask, "two.tif")


@pytest.mark.parametrize("ext", ["gpkg", "geojson", "shp", "parquet"])
def test_missing_values_read_back_as_null(make_raster, tmp_path, ext):
    out = tmp_path / f"polys.{ext}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vectorize_raster(two_class_mask(make_raster), out,
                         VectorizeConfig(centerlines=True, linear_classes=(2,)))
    # GDAL's words come as RuntimeWarnings, e.g. "NaN of Infinity value found. Skipped."
    assert not [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if ext == "parquet":
        table = pq.read_table(out)
    else:
        _, table = pyogrio.read_arrow(out)
    names = [SHORT.get(n, n) if ext == "shp" else n for n in LINEAR]
    classes = table.column("class_id").to_pylist()
    for name in names:
        values = table.column(name).to_pylist()
        assert [v is None for v in values] == [c == 1 for c in classes], name
        assert all(v > 0 for v, c in zip(values, classes) if c == 2)
    if ext == "shp":
        shapefile = pytest.importorskip("shapefile")  # pyshp: shares no code with GDAL
        with shapefile.Reader(str(out)) as reader:
            records = [r.as_dict() for r in reader.records()]
        assert sorted(r["class_id"] for r in records) == [1, 1, 2]
        for record in records:
            assert all((record[n] is None) == (record["class_id"] == 1) for n in names)
    if ext == "geojson":
        features = json.loads(out.read_text())["features"]
        assert all((f["properties"].get("length_m") is None) == (f["properties"]["class_id"] == 1)
                   for f in features)


def test_cli_geojson_with_missing_values_is_quiet(make_raster, tmp_path):
    mask = np.zeros((1, 32, 32), np.uint8)
    mask[0, 2, 2] = mask[0, 28, 28] = 1         # single pixels: no centerline, no length
    mask[0, 20:23, 5:25] = 1
    out = tmp_path / "p.geojson"
    done = subprocess.run([sys.executable, "-m", "geounet", "vectorize", str(make_raster(mask)),
                           "-o", str(out), "--centerlines", str(tmp_path / "l.gpkg"), "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lengths = [f["properties"].get("length_m") for f in json.loads(out.read_text())["features"]]
    assert sorted(lengths, key=lambda v: v is not None)[:2] == [None, None]


def real(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data: ../shared/data)")
    return path


def landsat_mask(tmp_path: Path) -> Path:
    """Bright (class 1) and dark (class 2) land of the real Landsat tile: ragged real
    outlines with holes, 300 m pixels in UTM 18N; a 320^2 window with the scene's nodata
    edge (background here) keeps the test fast."""
    window = Window(300, 100, 320, 320)
    with rasterio.open(real("landsat_rgb", "RGB.byte.tif")) as src:
        band, valid = src.read(1, window=window), src.dataset_mask(window=window) > 0
        profile = src.profile | {"width": 320, "height": 320,
                                 "transform": src.window_transform(window)}
    mask = np.zeros(band.shape, np.uint8)
    mask[valid & (band >= 40)] = 1
    mask[valid & (band < 14)] = 2
    assert (~valid).any() and (mask == 1).any() and (mask == 2).any()
    profile.update(count=1, dtype="uint8", nodata=None)
    path = tmp_path / "landsat_mask.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask, 1)
    return path


def millimetre_mask_4326(tmp_path: Path) -> Path:
    """The sample crack mask on a grid of 1e-8 degree pixels (about 1 mm) in EPSG:4326."""
    with rasterio.open(SAMPLES / "cracks_mask.tif") as src:
        mask, profile = src.read(), src.profile
    profile.update(crs="EPSG:4326", transform=Affine(1e-8, 0, 15.0, 0, -1e-8, 45.0))
    path = tmp_path / "cracks_4326.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask)
    return path


MASKS = {
    "cracks (1 mm, UTM)": lambda tmp: SAMPLES / "cracks_mask.tif",
    "roads (UTM)": lambda tmp: SAMPLES / "roads_mask.tif",
    "Landsat (300 m, UTM)": landsat_mask,
    "Vegas roads (EPSG:4326)": lambda tmp: real("spacenet_vegas_road",
                                                "sample_road_raster_mask.tif"),
    "cracks (1e-8 degree, EPSG:4326)": millimetre_mask_4326,
}


def assert_same_geometry(geojson: Path, gpkg: Path) -> None:
    """``geojson`` holds the GeoPackage's features: valid MultiPolygons with
    counter-clockwise exteriors and clockwise holes (RFC 7946), read from the text itself,
    and the same total area (transformed back to the GeoPackage's CRS) within 1e-6."""
    features = json.loads(geojson.read_text())["features"]
    reference = pyogrio.read_dataframe(gpkg)
    assert len(features) == len(reference) > 0
    assert {f["geometry"]["type"] for f in features} == {"MultiPolygon"}
    polygons = [shapely.geometry.shape(f["geometry"]) for f in features]
    assert all(shapely.is_valid(polygons)), [shapely.is_valid_reason(p) for p in polygons]
    parts = shapely.get_parts(polygons)
    assert shapely.is_ccw(shapely.get_exterior_ring(parts)).all()
    holes = [h for p in parts for h in p.interiors]
    assert not shapely.is_ccw(holes).any()
    to_source = Transformer.from_crs("EPSG:4326", reference.crs, always_xy=True)
    back = shapely.transform(np.array(polygons, dtype=object), lambda xy: np.column_stack(
        to_source.transform(xy[:, 0], xy[:, 1])))
    expected = shapely.area(reference.geometry.values).sum()
    assert shapely.area(back).sum() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", MASKS)
def test_geojson_keeps_the_geometry_of_the_geopackage(tmp_path, name):
    mask = MASKS[name](tmp_path)
    gpkg, geojson = tmp_path / "polys.gpkg", tmp_path / "polys.geojson"
    for out in (gpkg, geojson):
        vectorize_raster(mask, out)
    assert_same_geometry(geojson, gpkg)
    # The precision the pixel needs (decimals from its size), not only every digit.
    with rasterio.open(mask) as src:
        crs = CRS.from_user_input(src.crs.to_wkt())
        size = pixel_size(src.transform, src.shape, crs)
    frame = pyogrio.read_dataframe(gpkg)
    fields = polygon_fields(False, False)
    features = Features({f: frame[f].to_numpy() for f in fields}, frame.geometry.to_numpy())
    sized = tmp_path / "sized.geojson"
    write_layer([features], sized, "GeoJSON", crs, "MultiPolygon", polygon_fields(False, False),
                pixel_size=size)
    assert_same_geometry(sized, gpkg)
    if shutil.which("ogr2ogr") is None:
        pytest.skip("ogr2ogr (gdal-bin) is not installed")
    for driver, suffix in (("GPKG", ".gpkg"), ("ESRI Shapefile", ".shp")):
        copy = tmp_path / f"copy{suffix}"
        done = subprocess.run(["ogr2ogr", "-f", driver, str(copy), str(geojson)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "ERROR" not in done.stderr, done.stderr
        assert pyogrio.read_info(copy)["features"] == len(frame)
