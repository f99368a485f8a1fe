"""Rings on the pixel grid: touching rings repaired and block pieces stitched, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from rasterio import features
from rasterio.transform import Affine
from scipy import ndimage
from shapely.geometry import shape

from geounet import rings


def random_mask(seed: int, n: int = 60) -> np.ndarray:
    """Two classes of blobs with holes, thin necks and many diagonal-only contacts."""
    rng = np.random.default_rng(seed)
    mask = (ndimage.gaussian_filter(rng.standard_normal((n, n)), 1.5) > 0).astype(np.int32)
    mask[rng.random((n, n)) < 0.08] = 2
    mask[ndimage.gaussian_filter(rng.standard_normal((n, n)), 1) > 0.3] = 0
    return mask


def touching_corners(component: np.ndarray) -> np.ndarray:
    """Pixel corners where two diagonal pixels of ``component`` meet and the other two are
    not of it (where its rings touch)."""
    a, b, c, d = component[:-1, :-1], component[:-1, 1:], component[1:, :-1], component[1:, 1:]
    found = (a & d & ~b & ~c) | (b & c & ~a & ~d)
    rows, cols = np.nonzero(found)
    return np.column_stack([cols + 1, rows + 1])


def whole(mask: np.ndarray, connectivity: int) -> list[tuple[shapely.Geometry, int]]:
    return [(shape(g), int(v)) for g, v in features.shapes(mask, mask=mask > 0,
                                                         connectivity=connectivity)]


def assert_oriented(geometry: shapely.Geometry) -> None:
    """Exteriors clockwise and holes counter-clockwise in x/y, as GDAL writes them (a
    geodesic area adds the rings' signed areas)."""
    for part in shapely.get_parts(geometry):
        assert not shapely.is_ccw(part.exterior)
        assert all(shapely.is_ccw(r) for r in part.interiors)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("seed", range(6))
def test_repair_gives_valid_polygons_of_the_same_area(seed, connectivity):
    mask = random_mask(seed)
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    repaired = 0
    for polygon, value in whole(mask, connectivity):
        labels, _ = ndimage.label(mask == value, structure)
        x, y = (int(v) for v in min(polygon.exterior.coords, key=lambda p: (p[1], p[0])))
        corners = touching_corners(labels == labels[y, x])
        if not len(corners):
            continue
        fixed = rings.repair(polygon, corners)
        repaired += 1
        assert fixed.is_valid, shapely.is_valid_reason(fixed)
        assert fixed.area == polygon.area
        assert fixed.symmetric_difference(shapely.make_valid(polygon)).area == 0
        assert_oriented(fixed)
    assert repaired > 0


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("seed,block", [(0, 7), (1, 13), (2, 16), (3, 25)])
def test_stitched_pieces_equal_the_whole_feature(seed, block, connectivity):
    mask = random_mask(seed)
    n = len(mask)
    pieces = []
    for row in range(0, n, block):
        for col in range(0, n, block):
            part = mask[row:row + block, col:col + block]
            for g, v in features.shapes(part, mask=part > 0, connectivity=connectivity,
                                        transform=Affine.translation(col, row)):
                pieces.append((shapely.make_valid(shape(g)), int(v)))
    stitched = 0
    for feature, value in whole(mask, connectivity):
        feature = shapely.make_valid(feature)
        members = np.array([p for p, v in pieces if v == value
                            and p.intersection(feature).area > 0])
        if len(members) < 2:
            continue
        joined = rings.stitch(members, block, n, n)
        stitched += 1
        assert joined.is_valid, shapely.is_valid_reason(joined)
        assert joined.area == feature.area
        assert joined.symmetric_difference(feature).area == 0
        assert_oriented(joined)
    assert stitched > 3


def test_stitch_finds_holes_made_by_several_blocks():
    """A ring of pixels cut by four blocks: the hole exists only once joined."""
    mask = np.zeros((20, 20), np.uint8)
    mask[4:16, 4:16] = 1
    mask[7:13, 7:13] = 0
    pieces = [shape(g) for r in (0, 10) for c in (0, 10) for g, _ in features.shapes(
        mask[r:r + 10, c:c + 10], mask=mask[r:r + 10, c:c + 10] > 0,
        transform=Affine.translation(c, r))]
    joined = rings.stitch(np.array(pieces), 10, 20, 20)
    assert joined.geom_type == "Polygon" and len(joined.interiors) == 1
    assert joined.area == 144 - 36
    assert shapely.get_num_coordinates(joined) == 10   # no vertices left on block edges
