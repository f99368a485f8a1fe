"""Vector labels and the equivalent raster mask give the same targets, pixel for pixel."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import LineString, Polygon

from geounet.errors import InputError
from geounet.labels import (
    IGNORE,
    LabelConfig,
    image_info,
    load_target,
    pair_folders,
    rasterize_vector,
    read_split,
)

CRS = "EPSG:32633"                        # as the make_raster fixture writes
TRANSFORM = from_origin(500000.0, 5000000.0, 0.5, 0.5)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ATLANTA = DATA / "spacenet_atlanta"
X0, Y0, PX = TRANSFORM.c, TRANSFORM.f, TRANSFORM.a   # 0.5 m pixels in UTM 33N


def _map(col: float, row: float) -> tuple[float, float]:
    """Map coordinates of a pixel-grid position (col, row) of the conftest transform."""
    return X0 + col * PX, Y0 - row * PX


@pytest.fixture
def scene(make_raster, tmp_path):
    """A 60x80 image, the vector labels of a holed square and a road, and the hand mask.

    The square's edges lie on pixel edges (rows 10..30, cols 10..30, hole 15..25), so its
    pixels are unambiguous. The road runs along the centres of row 45 from the edge of col
    20 to the edge of col 60; buffered to 2.5 px it covers rows 44..46 and, with its round
    caps, cols 19..60 (pixel centres within 1.25 px of the line).
    """
    image = make_raster(np.full((1, 60, 80), 7, np.uint8), name="image.tif")
    expected = np.zeros((60, 80), np.uint8)
    expected[10:30, 10:30] = 1
    expected[15:25, 15:25] = 0
    expected[44:47, 19:61] = 1
    square = Polygon([_map(10, 10), _map(30, 10), _map(30, 30), _map(10, 30)],
                     [[_map(15, 15), _map(25, 15), _map(25, 25), _map(15, 25)]])
    road = LineString([_map(20, 45.5), _map(60, 45.5)])
    vectors = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"kind": ["building", "road"]}, geometry=[square, road],
                     crs=CRS).to_file(vectors)
    mask = make_raster(expected[None] * 255, name="mask.tif")
    return image, vectors, mask, expected


def test_vector_labels_equal_the_raster_mask_on_a_scene_with_holes_and_lines(scene):
    image, vectors, mask, expected = scene
    info = image_info(image)
    from_vector = load_target(vectors, info, LabelConfig(line_width=2.5))
    from_raster = load_target(mask, info)
    np.testing.assert_array_equal(from_vector, expected)
    np.testing.assert_array_equal(from_raster, expected)
    assert from_vector[20, 20] == 0  # the hole stays background
    # The same width in map units (metres here) gives the same target.
    metres = LabelConfig(line_width=2.5 * PX, line_width_units="map")
    np.testing.assert_array_equal(load_target(vectors, info, metres), expected)
    # A wider road covers more rows: the width is honoured, not ignored.
    wide = load_target(vectors, info, LabelConfig(line_width=4.6))
    assert wide[43:48, 30].all() and not wide[42, 30] and not wide[48, 30]


def test_vector_labels_are_reprojected_to_the_image_crs(scene, tmp_path):
    image, vectors, _, expected = scene
    geographic = tmp_path / "labels_4326.geojson"
    gpd.read_file(vectors).to_crs("EPSG:4326").to_file(geographic)
    target = load_target(geographic, image_info(image), LabelConfig(line_width=2.5))
    np.testing.assert_array_equal(target, expected)


def test_vector_label_errors_name_the_file_and_the_fix(scene, tmp_path):
    image, vectors, _, _ = scene
    info = image_info(image)
    with pytest.raises(InputError, match="line width > 0"):
        rasterize_vector(vectors, info, LabelConfig(line_width=0))
    with pytest.raises(InputError, match="no attribute 'class'.*kind"):
        rasterize_vector(vectors, info, LabelConfig(class_field="class"))
    unprojected = gpd.read_file(vectors).set_crs(None, allow_override=True)
    unprojected.to_file(tmp_path / "no_crs.gpkg")
    with pytest.raises(InputError, match="no CRS"):
        rasterize_vector(tmp_path / "no_crs.gpkg", info)
    # GeoJSON without a CRS means EPSG:4326: metres read as degrees are refused, not burned.
    unprojected.to_file(tmp_path / "metres.geojson")
    with pytest.raises(InputError, match="metres.geojson: coordinates .* not longitudes"):
        rasterize_vector(tmp_path / "metres.geojson", info)
    broken = tmp_path / "broken.geojson"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="broken.geojson: not a readable vector file"):
        rasterize_vector(broken, info)


def test_raster_masks_keep_class_ids_and_nodata(make_raster, scene):
    image, _, _, _ = scene
    info = image_info(image)
    classes = np.zeros((1, 60, 80), np.uint8)
    classes[0, :10] = 2
    classes[0, 50:] = 9   # the mask's nodata
    target = load_target(make_raster(classes, name="classes.tif", nodata=9), info)
    assert set(np.unique(target[:10])) == {2} and (target[50:] == IGNORE).all()
    with pytest.raises(InputError, match="does not match image"):
        load_target(make_raster(classes[:, :30], name="small.tif"), info)


def test_folder_pairs_and_split_files(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("001", "002"):
        (images / f"{name}.jpg").write_bytes(b"")
        (labels / f"{name}.png").write_bytes(b"")
    pairs = pair_folders(images, labels)
    assert [(i.name, m.name) for i, m in pairs] == [("001.jpg", "001.png"),
                                                    ("002.jpg", "002.png")]
    (images / "003.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="no label for image.*003"):
        pair_folders(images, labels)
    split = tmp_path / "split.txt"
    split.write_text("001 train\n002 test\n")
    assert read_split(split) == {"001": "train", "002": "test"}
    split.write_text("001 train extra\n")
    with pytest.raises(InputError, match="split.txt:1: expected 'NAME SPLIT'"):
        read_split(split)


@pytest.mark.skipif(not ATLANTA.is_dir(), reason=f"real data not found at {ATLANTA}")
@pytest.mark.skipif(shutil.which("gdal_rasterize") is None, reason="gdal_rasterize not found")
def test_atlanta_buildings_vector_equals_gdal_rasterized_mask(tmp_path):
    """43 real building footprints: our targets equal GDAL's own rasterization of them."""
    image = ATLANTA / "sample_geotiff.tif"
    labels = ATLANTA / "geotiff_labels.geojson"
    mask = tmp_path / "buildings_mask.tif"
    with rasterio.open(image) as src:
        profile = {**src.profile, "dtype": "uint8", "count": 1, "nodata": None}
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(np.zeros((1, profile["height"], profile["width"]), np.uint8))
    subprocess.run(["gdal_rasterize", "-q", "-burn", "255", str(labels), str(mask)],
                   check=True, timeout=60)
    info = image_info(image)
    from_vector = load_target(labels, info)
    from_raster = load_target(mask, info)
    assert 0.01 < (from_vector == 1).mean() < 0.5   # the buildings are there
    np.testing.assert_array_equal(from_vector, from_raster)
    # Through a reprojection to EPSG:4326 and back the targets stay the same.
    geographic = tmp_path / "buildings_4326.geojson"
    gpd.read_file(labels).to_crs("EPSG:4326").to_file(geographic)
    np.testing.assert_array_equal(load_target(geographic, info), from_raster)


@pytest.mark.skipif(not ATLANTA.is_dir(), reason=f"real data not found at {ATLANTA}")
@pytest.mark.skipif(shutil.which("gdal_rasterize") is None, reason="gdal_rasterize not found")
def test_atlanta_buildings_by_class_field_equal_gdal_rasterize_by_attribute(tmp_path):
    """Real footprints with a class column (small / large buildings, by area): the target
    read with ``class_field`` equals ``gdal_rasterize -a`` of that column pixel for pixel,
    by id and by name."""
    image = ATLANTA / "sample_geotiff.tif"
    frame = gpd.read_file(ATLANTA / "geotiff_labels.geojson")[["geometry"]]
    frame["kind"] = np.where(frame.area < frame.area.median(), 1, 2).astype("int32")
    frame["kind_name"] = np.where(frame.kind == 1, "small", "large")
    labels = tmp_path / "buildings.gpkg"
    frame.to_file(labels)
    reference = tmp_path / "reference.tif"
    with rasterio.open(image) as src:
        bounds, res = src.bounds, src.res
    subprocess.run(["gdal_rasterize", "-q", "-a", "kind", "-init", "0", "-ot", "Byte",
                    "-te", *map(str, bounds), "-tr", *map(str, res), str(labels),
                    str(reference)], check=True, timeout=60)
    with rasterio.open(reference) as src:
        expected = src.read(1)
    names = ("background", "small", "large")
    info = image_info(image)
    by_id = load_target(labels, info, LabelConfig(class_field="kind", class_names=names))
    by_name = load_target(labels, info, LabelConfig(class_field="kind_name", class_names=names))
    assert set(np.unique(expected)) == {0, 1, 2}
    np.testing.assert_array_equal(by_id, expected)
    np.testing.assert_array_equal(by_name, expected)


VEGAS = DATA / "spacenet_vegas_road"


@pytest.mark.skipif(not VEGAS.is_dir(), reason=f"real data not found at {VEGAS}")
def test_vegas_centrelines_buffered_in_metres_give_the_tile_raster_mask():
    """Road centrelines in EPSG:4326 buffered to 4 m on the ground = the tile's road mask.

    The mask was drawn from these 9 centrelines with a 2 m buffer in UTM; 1 pixel of 1.69
    million differs (a pixel centre on the buffer's edge). In pixel or degree units the
    buffer would be round in degrees, not on the ground, and thousands of pixels differ.
    """
    info = image_info(VEGAS / "road_mask_input.tif")
    raster = load_target(VEGAS / "sample_road_raster_mask.tif", info)
    vector = load_target(VEGAS / "sample_roads_for_masking.geojson", info,
                         LabelConfig(line_width=4, line_width_units="metres"))
    assert (raster == 1).sum() == 56416
    assert (raster != vector).sum() <= 1
    in_pixels = load_target(VEGAS / "sample_roads_for_masking.geojson", info,
                            LabelConfig(line_width=4 / 0.3))
    assert (raster != in_pixels).sum() > 1000
