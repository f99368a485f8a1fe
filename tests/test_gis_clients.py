"""Outputs read back by GIS clients that nobody here wrote (issue 19).

GDAL (pyogrio in-process, ``ogr2ogr``/``ogrinfo`` of the system when installed), pyshp for
Shapefiles and pyarrow for GeoParquet: a missing value is NULL in every format, and GeoJSON
(RFC 7946, WGS 84 lon/lat) keeps the raster's geometry: valid MultiPolygons with
counter-clockwise exteriors and the same area as the GeoPackage of the same features.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest

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
    assert not [str(w.message) for w in caught]   # e.g. GDAL's "NaN of Infinity value found"
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
