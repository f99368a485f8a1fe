"""Centerlines: length and width of known shapes, joined across blocks; feature scores."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from rasterio import features
from rasterio.transform import from_origin

from geounet.centerline import centerlines, skeleton_branches
from geounet.vectorize import VectorizeConfig, vectorize_raster

PIXEL = 0.001   # 1 mm pixels, as in crack inspection
TRANSFORM = from_origin(500000.0, 5000000.0, PIXEL, PIXEL)


def band(size: int, length: float, width: float, angle: float) -> np.ndarray:
    """A straight band (crack) of ``length`` x ``width`` pixels at ``angle`` degrees, centred."""
    t = math.radians(angle)
    d, n = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])
    c = np.array([size / 2, size / 2])
    corners = [c - d * length / 2 - n * width / 2, c + d * length / 2 - n * width / 2,
               c + d * length / 2 + n * width / 2, c - d * length / 2 + n * width / 2]
    return features.rasterize([shapely.Polygon(corners)], out_shape=(size, size)).astype(bool)


@pytest.mark.parametrize("length,width,angle", [(400, 3, 0), (400, 4, 90), (500, 5, 30),
                                                (300, 2, 45), (450, 6, 17), (400, 1.5, 8),
                                                (350, 9, 63)])
def test_straight_crack_length_and_width(length, width, angle):
    shape = band(600, length, width, angle)
    branches = centerlines(shape)
    assert len(branches) == 1
    assert branches.length_px.sum() == pytest.approx(length, rel=0.02)
    true_width = shape.sum() / length          # the rasterized band's own mean width
    assert abs(branches.mean_width_px[0] - true_width) <= 0.5
    assert abs(branches.max_width_px[0] - width) <= 1.5


def pixels_polygon(mask: np.ndarray) -> shapely.Geometry:
    """The union of a mask's pixels as unit squares (x = column, y = row)."""
    rows, cols = np.nonzero(mask)
    return shapely.union_all(shapely.box(cols, rows, cols + 1, rows + 1))


@pytest.mark.parametrize("legs", [(50, 50), (50, 20), (30, 30)])
def test_lines_of_thin_cracks_keep_to_their_corners(legs):
    """Smoothing let the line of a 1 px crack cut its corner: an L of 1 px legs had 24 of
    98 px of its line outside the crack. Now the line turns with the crack and stays on it;
    the length is the pixel-centre path's within 1 px."""
    down, across = legs
    mask = np.zeros((down + 10, across + 10), bool)
    mask[5:5 + down, 5] = True
    mask[4 + down, 5:5 + across] = True
    branches = centerlines(mask)
    assert len(branches) == 1
    line = branches.lines[0]
    assert line.difference(pixels_polygon(mask).buffer(1e-9)).length == 0.0
    # the path through the pixel centres, each free end extended by half a pixel
    assert line.length == pytest.approx(down + across - 2 + 1, abs=1.0)


def road_network(size: int = 900, width: float = 12.0) -> tuple[np.ndarray, float]:
    """A grid of roads with a diagonal and a dead end; (mask, true centerline length px)."""
    lines = [shapely.LineString([(0, 150), (size, 150)]),
             shapely.LineString([(0, 600), (size, 600)]),
             shapely.LineString([(300, 0), (300, size)]),
             shapely.LineString([(700, 150), (700, 600)]),
             shapely.LineString([(300, 600), (650, 880)]),       # diagonal
             shapely.LineString([(450, 150), (450, 380)])]       # dead end
    union = shapely.union_all(lines)
    shape = features.rasterize([union.buffer(width / 2, cap_style="flat")],
                               out_shape=(size, size)).astype(bool)
    return shape, union.length


def test_road_network_total_length_within_3_percent():
    shape, true_length = road_network()
    total = centerlines(shape).length_px.sum()
    assert total == pytest.approx(true_length, rel=0.03)


def write_mask(make_raster, mask: np.ndarray, **kwargs):
    return make_raster(mask.astype(np.uint8)[None], transform=TRANSFORM, **kwargs)


def test_centerlines_joined_across_blocks(make_raster, tmp_path):
    shape, true_length = road_network()
    path = write_mask(make_raster, shape)
    results = {}
    for block in (128, 4096):
        lines = tmp_path / f"lines_{block}.gpkg"
        result = vectorize_raster(path, tmp_path / f"roads_{block}.gpkg",
                                  VectorizeConfig(block_size=block), centerlines_output=lines)
        frame = gpd.read_file(lines)
        assert result.centerline_features == len(frame)
        results[block] = frame
    small, whole = results[128], results[4096]
    assert len(small) == len(whole)
    assert small.length_m.sum() == pytest.approx(whole.length_m.sum(), rel=1e-9)
    assert small.length_m.sum() == pytest.approx(true_length * PIXEL, rel=0.03)
    assert shapely.union_all(small.geometry.values).equals(shapely.union_all(whole.geometry))


def test_polygon_attributes_of_a_crack(make_raster, tmp_path):
    shape = band(600, 500, 5, 20)
    path = write_mask(make_raster, shape)
    out, lines = tmp_path / "cracks.geojson", tmp_path / "lines.geojson"
    vectorize_raster(path, out, VectorizeConfig(block_size=256), centerlines_output=lines)
    polygon = gpd.read_file(out).iloc[0]
    assert polygon.length_m == pytest.approx(0.5, rel=0.02)
    assert polygon.mean_width_m == pytest.approx(shape.sum() / 500 * PIXEL, abs=0.5 * PIXEL)
    assert polygon.area_m2 == pytest.approx(shape.sum() * PIXEL**2, rel=1e-6)
    line = gpd.read_file(lines)
    assert line.crs.to_epsg() == 4326                       # RFC 7946: lon/lat
    x0, y0, x1, y1 = line.total_bounds
    assert 14.9 < x0 < x1 < 15.1 and 45.1 < y0 < y1 < 45.2
    assert line.feature_id.tolist() == [polygon.feature_id]


def test_mean_probability_score(make_raster, tmp_path):
    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 5:25] = 1
    mask[25:35, 30:50] = 1
    prob = np.where(mask > 0, 0.9, 0.1).astype(np.float32)
    prob[25:35, 30:40] = 0.6                               # second feature: mean 0.75
    path = write_mask(make_raster, mask)
    prob_path = make_raster(prob[None], transform=TRANSFORM, name="prob.tif")
    out = tmp_path / "scored.gpkg"
    vectorize_raster(path, out, VectorizeConfig(block_size=16), probabilities=prob_path)
    frame = gpd.read_file(out).sort_values("area_m2")
    assert sorted(frame.score.round(6)) == [0.75, 0.9]


def test_probabilities_on_another_grid_are_refused(make_raster, tmp_path):
    path = write_mask(make_raster, np.ones((20, 20), bool))
    prob_path = make_raster(np.ones((1, 10, 10), np.float32), transform=TRANSFORM,
                            name="prob.tif")
    with pytest.raises(ValueError, match="grid"):
        vectorize_raster(path, tmp_path / "x.gpkg", probabilities=prob_path)
    assert not (tmp_path / "x.gpkg").exists()


def test_fill_holes_and_min_pixels(make_raster, tmp_path):
    mask = np.zeros((60, 60), np.uint8)
    mask[5:45, 5:45] = 1
    mask[10:12, 10:12] = 0                                  # small hole: 4 px
    mask[20:30, 20:30] = 0                                  # large hole: 100 px
    mask[50:52, 50:53] = 1                                  # speck: 6 px
    path = write_mask(make_raster, mask)
    out = tmp_path / "filled.gpkg"
    config = VectorizeConfig(block_size=32, fill_holes=10 * PIXEL**2, min_pixels=10)
    vectorize_raster(path, out, config)
    frame = gpd.read_file(out)
    assert len(frame) == 1
    assert frame.area_m2.iloc[0] == pytest.approx((1600 - 100) * PIXEL**2)
    assert shapely.get_num_interior_rings(frame.geometry.iloc[0].geoms[0]) == 1


def test_empty_mask_with_centerlines_writes_full_schemas(make_raster, tmp_path):
    path = write_mask(make_raster, np.zeros((30, 30), bool))
    out, lines = tmp_path / "p.shp", tmp_path / "l.shp"
    result = vectorize_raster(path, out, centerlines_output=lines)
    assert result.features == result.centerline_features == 0
    assert list(pyogrio.read_info(out)["fields"]) == [
        "feature_id", "class_id", "class_name", "area_m2", "perim_m", "length_m",
        "mean_wid_m", "max_wid_m"]   # Shapefile names have at most 10 characters
    assert pyogrio.read_info(lines)["geometry_type"] == "LineString"
    assert pyogrio.read_info(lines)["crs"] == "EPSG:32633"


def test_closed_loop_is_one_branch_around():
    rows, cols = np.mgrid[:200, :200]
    radius = np.hypot(rows - 99.5, cols - 99.5)
    ring = (radius > 60) & (radius < 70)
    branches = centerlines(ring)
    assert len(branches) == 1 and branches.lines[0].is_closed
    assert branches.length_px[0] == pytest.approx(2 * math.pi * 65, rel=0.02)
    assert branches.area_px[0] == ring.sum()


def test_shapes_computed_together_equal_each_alone():
    shape, _ = road_network(300, 8)
    shapes = [shape, band(200, 150, 4, 30), np.ones((1, 1), bool), np.ones((2, 3), bool),
              shape[:120, :200]]
    corners = np.array([[10.0, 20.0], [0.0, 0.0], [5.0, 5.0], [7.0, 1.0], [1e5, 2e5]])
    together = skeleton_branches(shapes, None, corners)
    for i, one in enumerate(shapes):
        alone = skeleton_branches([one], None, corners[i:i + 1])
        mine = together.take(together.shape == i)
        assert len(mine) == len(alone)
        assert shapely.equals_exact(mine.lines, alone.lines, 0).all()
        assert np.array_equal(mine.area_px, alone.area_px)
        assert np.array_equal(mine.max_width_px, alone.max_width_px)


def test_centerline_layer_is_streamed_batch_by_batch(make_raster, tmp_path, monkeypatch):
    """Centerline frames go to a temporary spool file as each batch of polygons is finished
    (memory does not grow with the number of lines); the spool goes once the layer is
    written."""
    import geounet.features

    shape = np.zeros((512, 512), bool)
    for row in (40, 170, 300, 430):                       # one crack per row of blocks
        shape[row:row + 3, 100:400] = True
    path = write_mask(make_raster, shape)
    added = []
    real_add = geounet.features.LineSpool.add

    def add(self, frame):
        added.append(len(frame))
        real_add(self, frame)

    monkeypatch.setattr(geounet.features.LineSpool, "add", add)
    out, lines = tmp_path / "cracks.gpkg", tmp_path / "lines.gpkg"
    result = vectorize_raster(path, out, VectorizeConfig(block_size=128), centerlines_output=lines)
    assert len(added) == 4 and sum(added) == result.centerline_features
    assert pyogrio.read_info(lines)["features"] == result.centerline_features
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cracks.gpkg", "in.tif", "lines.gpkg"]
