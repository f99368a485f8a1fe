"""Block-wise polygonization equals whole-mask polygonization; exports open in GIS formats."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio import features
from rasterio.transform import Affine, from_origin
from scipy import ndimage
from shapely.geometry import shape

from geounet.errors import ConfigError, InputError, OutputError
from geounet.polygonize import PixelSettings, polygonize
from geounet.vectorize import VectorizeConfig, vectorize_raster

TRANSFORM = from_origin(500000.0, 5000000.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def random_mask():
    rng = np.random.default_rng(0)
    n = 300
    mask = (ndimage.gaussian_filter(rng.standard_normal((n, n)), 3) > 0.05).astype(np.uint8)
    mask[rng.random((n, n)) < 0.05] = 2            # many corner-only contacts
    mask[ndimage.gaussian_filter(rng.standard_normal((n, n)), 2) > 0.3] = 0   # holes
    return mask


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("block_size", [37, 64, 1000])
def test_blocks_equal_whole_mask(make_raster, random_mask, connectivity, block_size):
    path = make_raster(random_mask[None], transform=TRANSFORM)
    whole = [(shape(g), int(v)) for g, v in features.shapes(
        random_mask, mask=random_mask > 0, connectivity=connectivity)]
    got = [(g, int(c)) for pieces in polygonize(
        path, PixelSettings(connectivity, block_size))
        for c, g in zip(pieces.ids, pieces.polygons)]
    for class_id in (1, 2):
        a = [g for g, v in whole if v == class_id]
        b = [g for g, v in got if v == class_id]
        assert len(a) == len(b)
        total = sum(g.area for g in a)
        assert abs(total - sum(g.area for g in b)) <= 1e-9 * total
        assert shapely.union_all(a).symmetric_difference(shapely.union_all(b)).area == 0


@pytest.mark.parametrize("connectivity,workers", [
    (4, 1), pytest.param(8, 2, marks=pytest.mark.slow)])   # slow: starts worker processes
def test_written_features_are_valid_and_complete(make_raster, random_mask, tmp_path,
                                                 connectivity, workers):
    path = make_raster(random_mask[None], transform=TRANSFORM)
    whole = [shape(g) for g, _ in features.shapes(
        random_mask, mask=random_mask > 0, transform=TRANSFORM, connectivity=connectivity)]
    out = tmp_path / "v.gpkg"
    config = VectorizeConfig(connectivity, block_size=50, workers=workers)
    result = vectorize_raster(path, out, config)
    frame = gpd.read_file(out)
    assert result.features == len(frame) == len(whole)
    assert frame.geometry.is_valid.all()
    assert frame.feature_id.tolist() == list(range(len(frame)))
    assert frame.area_m2.sum() == pytest.approx(sum(g.area for g in whole), rel=1e-12)


@pytest.mark.parametrize("ext,epsg", [("gpkg", 32633), ("geojson", 4326), ("shp", 32633),
                                      ("parquet", 32633)])
def test_formats_open_with_crs_count_and_measurements(make_raster, tmp_path, ext, epsg):
    mask = np.zeros((1, 60, 80), np.uint8)
    mask[0, 10:20, 10:30] = 1                       # 200 px = 50 m^2, perimeter 30 m
    mask[0, 40:50, 50:52] = 1                       # 20 px = 5 m^2, perimeter 12 m
    path = make_raster(mask, transform=TRANSFORM)
    out = tmp_path / f"out.{ext}"
    result = vectorize_raster(path, out, VectorizeConfig(block_size=16))
    frame = gpd.read_parquet(out) if ext == "parquet" else gpd.read_file(out)
    assert result.features == len(frame) == 2
    assert frame.crs.to_epsg() == epsg
    assert sorted(frame.area_m2.round(6)) == [5.0, 50.0]
    assert sorted(frame.perim_m.round(6)) == [12.0, 30.0]
    if ext == "geojson":
        x0, y0, x1, y1 = frame.total_bounds
        assert 14.9 < x0 < x1 < 15.1 and 45.1 < y0 < y1 < 45.2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_min_area_and_empty_mask_gives_empty_layer_with_schema(make_raster, tmp_path):
    mask = np.zeros((1, 30, 30), np.uint8)
    mask[0, 2:4, 2:4] = 1                           # 1 m^2
    path = make_raster(mask, transform=TRANSFORM)
    out = tmp_path / "empty.gpkg"
    result = vectorize_raster(path, out, VectorizeConfig(min_area=2.0))
    assert result.features == 0
    info = pyogrio.read_info(out)
    assert info["features"] == 0
    assert list(info["fields"]) == ["feature_id", "class_id", "class_name", "area_m2",
                                    "perim_m"]
    assert info["crs"] == "EPSG:32633"


def test_geographic_crs_gets_geodesic_areas(make_raster, tmp_path):
    mask = np.ones((1, 10, 10), np.uint8)
    transform = Affine(1e-4, 0, 15.0, 0, -1e-4, 45.001)    # ~7.9 m x 11.1 m pixels
    path = make_raster(mask, crs="EPSG:4326", transform=transform)
    out = tmp_path / "geo.gpkg"
    vectorize_raster(path, out)
    area = gpd.read_file(out).area_m2.iloc[0]
    assert area == pytest.approx(0.001 * 0.001 * 111_132 * 78_850, rel=0.01)


def test_no_crs_is_refused_unless_declared(make_raster, tmp_path):
    mask = np.ones((1, 8, 8), np.uint8)
    path = make_raster(mask, crs=None, transform=Affine.identity())
    with pytest.raises(InputError, match="--crs"):
        vectorize_raster(path, tmp_path / "a.gpkg")
    assert not (tmp_path / "a.gpkg").exists()
    vectorize_raster(path, tmp_path / "b.gpkg", pixel_coordinates=True)
    assert pyogrio.read_info(tmp_path / "b.gpkg")["features"] == 1
    vectorize_raster(path, tmp_path / "c.gpkg", crs="EPSG:32633")
    assert pyogrio.read_info(tmp_path / "c.gpkg")["crs"] == "EPSG:32633"


def test_existing_output_is_kept(make_raster, tmp_path):
    path = make_raster(np.ones((1, 8, 8), np.uint8), transform=TRANSFORM)
    out = tmp_path / "x.gpkg"
    out.write_bytes(b"keep")
    with pytest.raises(OutputError, match="--overwrite"):
        vectorize_raster(path, out)
    assert out.read_bytes() == b"keep"


@pytest.mark.slow   # the installed command, in its own process
def test_cli_predict_to_polygons_in_one_command(rgb, tiny_model, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "polys.geojson"
    done = subprocess.run([sys.executable, "-m", "geounet", "predict", str(rgb), "-m",
                           str(tiny_model()), "--vector", str(out), "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert pyogrio.read_info(out)["crs"] == "EPSG:4326"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".safetensors") == [
        "in.tif", "polys.geojson"]
    done = subprocess.run([sys.executable, "-m", "geounet", "predict", str(rgb), "-m",
                           str(tiny_model()), "-o", str(tmp_path / "m.tif"), "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "geounet", "vectorize", str(tmp_path / "m.tif"),
                           "-o", str(tmp_path / "v.gpkg"), "--json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["format"] == "GPKG"


def test_rasters_that_are_not_class_masks_are_refused(make_raster, tmp_path):
    """Probabilities (fractional values) and a multi-band image were vectorized silently
    (fractions truncated, band 1 taken as classes): refused in one line, nothing written;
    a float mask of whole class ids is still a mask."""
    prob = np.full((1, 20, 20), 0.05, np.float32)
    prob[0, 5:10, 5:10] = 0.93
    cases = {"prob.tif": (prob, "holds the value 0.05, not a class id"),
             "rgb.tif": (np.ones((3, 20, 20), np.uint8), "has 3 bands; a class mask has one")}
    for name, (array, said) in cases.items():
        with pytest.raises(InputError, match=said):
            vectorize_raster(make_raster(array, name, transform=TRANSFORM), tmp_path / "o.gpkg")
    assert not (tmp_path / "o.gpkg").exists()
    whole = np.where(prob > 0.5, 2.0, 0.0).astype(np.float32)
    vectorize_raster(make_raster(whole, "whole.tif", transform=TRANSFORM), tmp_path / "o.gpkg")
    frame = gpd.read_file(tmp_path / "o.gpkg")
    assert list(frame.class_id) == [2] and frame.area_m2[0] == pytest.approx(25 * 0.25)


def component_means(mask: np.ndarray, prob: np.ndarray, connectivity: int) -> np.ndarray:
    """Per pixel, the mean of ``prob`` (bands: per class, class id + 1) over its class's
    connected component (NaN on background)."""
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    out = np.full(mask.shape, np.nan)
    for class_id in np.unique(mask[mask > 0]):
        labels, count = ndimage.label(mask == class_id, structure)
        band = prob[0] if len(prob) == 1 else prob[class_id]
        means = ndimage.mean(band, labels, np.arange(1, count + 1))
        out[labels > 0] = means[labels[labels > 0] - 1]
    return out


@pytest.mark.parametrize("connectivity,bands", [(4, 1), (8, 3)])
def test_scores_are_the_exact_pixel_means_of_features_across_blocks(
        make_raster, random_mask, tmp_path, connectivity, bands):
    rng = np.random.default_rng(1)
    prob = rng.random((bands, *random_mask.shape)).astype(np.float32)
    path = make_raster(random_mask[None], transform=TRANSFORM)
    prob_path = make_raster(prob, transform=TRANSFORM, name="prob.tif")
    out = tmp_path / "scored.gpkg"
    vectorize_raster(path, out, VectorizeConfig(connectivity, block_size=37),
                     probabilities=prob_path)
    frame = gpd.read_file(out)
    expected = component_means(random_mask, prob.astype(np.float64), connectivity)
    inverse = ~TRANSFORM
    spans = 0
    for geometry, score in zip(frame.geometry, frame.score):
        # a pixel of the feature: the one right of the first edge of its exterior
        (x0, y0), (x1, y1) = (inverse @ xy for xy in geometry.geoms[0].exterior.coords[:2])
        dx, dy = np.sign(x1 - x0), np.sign(y1 - y0)
        col, row = int(np.floor(x0 + 0.5 * dx + 0.5 * dy)), int(np.floor(y0 + 0.5 * dy - 0.5 * dx))
        assert score == pytest.approx(expected[row, col], rel=1e-9, abs=1e-12)
        x_min, y_min, x_max, y_max = geometry.bounds
        spans += (x_max - x_min) > 37 * 0.5 or (y_max - y_min) > 37 * 0.5
    assert spans > 5   # features joined across blocks were checked


@pytest.mark.parametrize("nodata", [float("nan"), -1.0])
def test_scores_leave_out_probability_nodata(make_raster, tmp_path, nodata):
    """Nodata probabilities (NaN, or the raster's nodata value) counted as 0 or as the
    value itself (a score of -0.1): the score is the mean of the valid ones, across blocks,
    and missing (NULL) for a feature that has none."""
    mask = np.zeros((1, 20, 20), np.uint8)
    mask[0, 2:10, 2:10] = 1     # half its probabilities are nodata
    mask[0, 14:18, 3:7] = 1     # all of them are
    prob = np.where(mask > 0, 0.8, 0.1).astype(np.float32)
    prob[0, 2:6, 2:10] = nodata
    prob[0, 14:18, 3:7] = nodata
    path = make_raster(mask, "mask.tif", transform=TRANSFORM)
    prob_path = make_raster(prob, "prob.tif", transform=TRANSFORM, nodata=nodata)
    for block in (5, 64):
        out = tmp_path / f"s{block}.gpkg"
        vectorize_raster(path, out, VectorizeConfig(block_size=block), probabilities=prob_path)
        frame = gpd.read_file(out).sort_values("area_m2", ascending=False)
        assert frame.score.iloc[0] == pytest.approx(0.8)
        assert frame.score.isna().tolist() == [False, True]


def test_features_are_measured_from_their_pixels_never_drawn_back(make_raster, tmp_path,
                                                                   monkeypatch):
    """Scores and centerlines come from the labelled pixels: a polygon with thousands of
    holes costs no more than its pixels (drawing it back took minutes)."""
    mask = np.ones((1, 200, 200), np.uint8)
    mask[0, 2:-2:4, 2:-2:4] = 0                      # 2,401 holes in one feature
    path = make_raster(mask, transform=TRANSFORM)
    prob_path = make_raster(np.full((1, 200, 200), 0.25, np.float32), transform=TRANSFORM,
                            name="prob.tif")

    def refuse(*args, **kwargs):
        raise AssertionError("a feature was rasterized back")

    monkeypatch.setattr("rasterio.features.rasterize", refuse)
    out, lines = tmp_path / "holes.gpkg", tmp_path / "lines.gpkg"
    vectorize_raster(path, out, VectorizeConfig(block_size=64), probabilities=prob_path,
                     centerlines_output=lines)
    frame = gpd.read_file(out)
    assert len(frame) == 1 and len(frame.geometry.iloc[0].geoms[0].interiors) == 2401
    assert frame.score.iloc[0] == pytest.approx(0.25)
    assert frame.length_m.iloc[0] > 0 and pyogrio.read_info(lines)["features"] > 0


def test_class_ids_beyond_the_vector_field_are_refused(make_raster, tmp_path):
    mask = np.zeros((1, 20, 20), np.uint32)
    mask[0, 5:10, 5:10] = 3_000_000_000
    path = make_raster(mask, transform=TRANSFORM)
    out = tmp_path / "x.gpkg"
    with pytest.raises(InputError, match=r"3000000000.*class mask") as caught:
        vectorize_raster(path, out)
    assert "\n" not in str(caught.value)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    mask[0, 5:10, 5:10] = 2_000_000_000                    # within range: kept as it is
    path = make_raster(mask, transform=TRANSFORM, name="ok.tif")
    vectorize_raster(path, out)
    assert gpd.read_file(out).class_id.tolist() == [2_000_000_000]


def test_polygons_and_centerlines_appear_together_or_not_at_all(make_raster, tmp_path,
                                                               monkeypatch):
    """A disk that fills while the lines are written: neither layer is left (the polygons
    were complete), what was there before stays, and no temporary remains."""
    import errno

    import geounet.export

    mask = np.zeros((40, 60), np.uint8)
    mask[10:14, 5:55] = 1                                    # one thin road
    path = make_raster(mask[None], name="roads.tif")
    polygons, lines = tmp_path / "poly.gpkg", tmp_path / "lines.gpkg"
    polygons.write_bytes(b"the user's earlier polygons")
    write_ogr = geounet.export._write_ogr

    def lines_fail(batches, tmp, schema, driver, crs, geometry_type, *args):
        if geometry_type == "LineString":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_ogr(batches, tmp, schema, driver, crs, geometry_type, *args)

    monkeypatch.setattr(geounet.export, "_write_ogr", lines_fail)
    with pytest.raises(OutputError, match="lines.gpkg: could not be written: the disk is full"):
        vectorize_raster(path, polygons, VectorizeConfig(), overwrite=True,
                         centerlines_output=lines)
    assert polygons.read_bytes() == b"the user's earlier polygons" and not lines.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poly.gpkg",
                                                          "roads.tif"]
    monkeypatch.undo()
    vectorize_raster(path, polygons, VectorizeConfig(), overwrite=True, centerlines_output=lines)
    assert len(gpd.read_file(polygons)) == 1 and len(gpd.read_file(lines)) >= 1


def test_unreachable_crs_is_refused_before_any_work(make_raster, tmp_path):
    """--crs that pyproj cannot reach from the raster's CRS (a local site grid to WGS 84), or
    that puts the raster outside its valid area (the far side of an orthographic view): one
    line before polygonizing, nothing written; a reachable one is written where it belongs."""
    mask = np.zeros((1, 10, 10), np.uint8)
    mask[0, 2:6, 2:6] = 1
    local = ('LOCAL_CS["site grid",LOCAL_DATUM["site",0],UNIT["metre",1],'
             'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
    site = make_raster(mask, "site.tif", crs=local, transform=TRANSFORM)
    utm = make_raster(mask, "utm.tif", transform=TRANSFORM)
    for path, crs in ((site, "EPSG:4326"), (utm, "+proj=ortho +lat_0=-60 +lon_0=-165")):
        with pytest.raises(ConfigError, match="cannot be transformed there"):
            vectorize_raster(path, tmp_path / "out.gpkg", crs=crs)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["site.tif", "utm.tif"]
    vectorize_raster(utm, tmp_path / "ok.gpkg", crs="EPSG:4326")
    bounds = gpd.read_file(tmp_path / "ok.gpkg").total_bounds
    assert 14.99 < bounds[0] < bounds[2] < 15.01 and 45.1 < bounds[1] < bounds[3] < 45.2


def test_probabilities_on_another_grid_say_what_differs(make_raster, tmp_path):
    mask = make_raster(np.ones((1, 10, 10), np.uint8), "mask.tif", transform=TRANSFORM)
    prob = np.full((1, 10, 10), 0.9, np.float32)
    cases = {"other_crs.tif": ({"crs": "EPSG:32634"}, "CRS 'EPSG:32634' vs 'EPSG:32633'"),
             "shifted.tif": ({"transform": TRANSFORM @ Affine.translation(1, 0)},
                             "transform (0.5, 0.0, 500000.5"),
             "smaller.tif": ({}, "size 9x10 vs 10x10")}
    for name, (options, said) in cases.items():
        array = prob[:, :, :9] if name == "smaller.tif" else prob
        path = make_raster(array, name, **({"transform": TRANSFORM} | options))
        with pytest.raises(InputError) as caught:
            vectorize_raster(mask, tmp_path / "out.gpkg", probabilities=path)
        assert said in str(caught.value)
        assert "transform" not in str(caught.value) or name == "shifted.tif"
    assert not (tmp_path / "out.gpkg").exists()


@pytest.mark.parametrize("name,layer", [("OUT.SHP", "OUT"),
                                        ("-v.gpkg", "layer_-v"), ("(a).gpkg", "layer_(a)"),
                                        ("gpkgroads.gpkg", "layer_gpkgroads"),
                                        ("#1.gpkg", "layer_#1"), ("a b-c.gpkg", "a b-c")])
def test_names_gdal_is_particular_about_are_written(make_raster, tmp_path, name, layer):
    """An upper-case .SHP and GeoPackage names whose stem GDAL refuses as a layer name (a
    leading '-', '(', '#', the reserved 'gpkg') failed after all the work, leaving
    temporaries; now they are written, with nothing else beside them. A mixed-case '.Shp',
    which GDAL cannot open, is refused before any work."""
    mask = np.zeros((1, 12, 12), np.uint8)
    mask[0, 2:6, 3:9] = 1
    path = make_raster(mask, "mask.tif", transform=TRANSFORM)
    out = tmp_path / name
    vectorize_raster(path, out)
    assert pyogrio.list_layers(out)[0][0] == layer
    frame = gpd.read_file(out)
    assert len(frame) == 1 and frame.area_m2[0] == pytest.approx(24 * 0.25)
    left = {p.name for p in tmp_path.iterdir()} - {"mask.tif"}
    stem = out.stem
    expected = ({f"{stem}{e}" for e in (".SHP", ".SHX", ".DBF", ".PRJ", ".CPG")}
                if out.suffix == ".SHP" else {name})
    assert left == expected
    with pytest.raises(ConfigError, match="name it out.shp"):
        vectorize_raster(path, tmp_path / "out.Shp")
    assert {p.name for p in tmp_path.iterdir()} - {"mask.tif"} == expected


def test_a_mask_placed_by_ground_control_points(tmp_path, checkpoint):
    """A raster georeferenced only by GCPs (predict carries them over to its mask) was
    refused as having no CRS, and declaring one wrote pixel coordinates under it. Affine
    GCPs place the polygons; GCPs no affine transform fits are refused with the warp."""
    from click.testing import CliRunner
    from rasterio.control import GroundControlPoint as Gcp

    from geounet.cli import main

    def write(path, array, points):
        profile = {"driver": "GTiff", "width": array.shape[2], "height": array.shape[1],
                   "count": array.shape[0], "dtype": array.dtype.name}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
            dst.gcps = (points, rasterio.crs.CRS.from_epsg(32633))
        return path

    affine = [Gcp(0, 0, 500000, 4000000), Gcp(0, 10, 500005, 4000000),
              Gcp(10, 0, 500000, 3999995), Gcp(10, 10, 500005, 3999995)]
    mask = np.zeros((1, 10, 10), np.uint8)
    mask[0, 2:5, 2:5] = 1
    path = write(tmp_path / "gcp.tif", mask, affine)
    vectorize_raster(path, tmp_path / "a.gpkg")
    frame = gpd.read_file(tmp_path / "a.gpkg")
    assert frame.crs.to_epsg() == 32633
    assert tuple(frame.total_bounds) == pytest.approx((500001, 3999997.5, 500002.5, 3999999))
    assert frame.area_m2[0] == pytest.approx(2.25)
    warped = [*affine[:3], Gcp(10, 10, 500009, 3999995)]
    with pytest.raises(InputError, match="no affine transform fits .* gdalwarp"):
        vectorize_raster(write(tmp_path / "warped.tif", mask, warped), tmp_path / "b.gpkg")
    assert not (tmp_path / "b.gpkg").exists()
    image = np.random.default_rng(0).integers(0, 255, (3, 10, 10), dtype=np.uint8)
    write(tmp_path / "image.tif", image, affine)
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "image.tif"), "-m",
                                       str(checkpoint), "--vector", str(tmp_path / "p.gpkg"),
                                       "-q", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert pyogrio.read_info(tmp_path / "p.gpkg")["crs"] == "EPSG:32633"
