"""Synthetic scenes: georeferencing, labels that match the image, determinism."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio import features
from rasterio.transform import from_origin
from scipy import ndimage

from geounet.sample_data import SCENES, generate_crack_scene, generate_road_scene


@pytest.fixture(scope="module")
def roads(tmp_path_factory):
    return generate_road_scene(tmp_path_factory.mktemp("roads"), seed=3, size=512)


@pytest.fixture(scope="module")
def cracks(tmp_path_factory):
    return generate_crack_scene(tmp_path_factory.mktemp("cracks"), seed=3, size=512)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile


@pytest.mark.parametrize("kind,pixel", [("roads", 0.5), ("cracks", 0.001)])
def test_georeferencing(kind, pixel, roads, cracks):
    files = {"roads": roads, "cracks": cracks}[kind]
    for path, count in ((files.image, 3), (files.mask, 1)):
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 32633
            assert src.transform == from_origin(500000.0, 5000000.0, pixel, pixel)
            assert (src.width, src.height, src.count, src.dtypes[0]) == (512, 512, count, "uint8")
    labels = gpd.read_file(files.labels, layer=kind)
    assert labels.crs.to_epsg() == 32633
    assert set(labels.class_id) == {1}


@pytest.mark.parametrize("kind", ["roads", "cracks"])
def test_vector_labels_rasterize_to_the_mask(kind, roads, cracks):
    files = {"roads": roads, "cracks": cracks}[kind]
    mask, profile = _read(files.mask)
    labels = gpd.read_file(files.labels, layer=kind)
    burned = features.rasterize(labels.geometry, out_shape=mask.shape[1:],
                                transform=profile["transform"], dtype="uint8")
    assert np.array_equal(burned, mask[0])


def test_same_seed_same_scene_other_seed_differs(tmp_path):
    a = generate_crack_scene(tmp_path / "a", seed=5, size=256)
    b = generate_crack_scene(tmp_path / "b", seed=5, size=256)
    c = generate_crack_scene(tmp_path / "c", seed=6, size=256)
    assert np.array_equal(_read(a.image)[0], _read(b.image)[0])
    assert np.array_equal(_read(a.mask)[0], _read(b.mask)[0])
    assert not np.array_equal(_read(a.mask)[0], _read(c.mask)[0])


def test_cracks_are_dark_thin_and_wide(cracks):
    image, _ = _read(cracks.image)
    mask = _read(cracks.mask)[0][0].astype(bool)
    gray = image.mean(axis=0)
    assert 0.003 < mask.mean() < 0.06
    assert gray[mask].mean() < gray[~mask].mean() - 30
    # Half-width from the distance transform: some pieces ~1 px wide, some >= 4 px wide.
    half_width = ndimage.distance_transform_edt(mask)
    assert half_width.max() >= 2.0
    skeleton_like = mask & (half_width <= 1.0)
    assert skeleton_like.any()


def test_roads_are_grey_and_plausible(roads):
    image, _ = _read(roads.image)
    mask = _read(roads.mask)[0][0].astype(bool)
    assert 0.03 < mask.mean() < 0.30
    rgb = image[:, mask].astype(float)
    saturation = (rgb.max(axis=0) - rgb.min(axis=0)).mean()
    assert saturation < 25
    centerlines = gpd.read_file(roads.labels, layer="centerlines")
    assert centerlines.width_m.between(6, 14).all()


def test_no_partial_files_left(roads):
    assert not [p for p in roads.image.parent.iterdir() if p.name.startswith(".")]


def test_registry_names():
    assert set(SCENES) == {"roads", "cracks", "landcover"}


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("seed", [0, 1])
def test_short_cracks_have_finite_widths(tmp_path, seed):
    # A 64 px scene is all short cracks: a few vertices each, where a width wobble scaled
    # by its own near-zero std used to overflow to infinite and NaN widths.
    files = generate_crack_scene(tmp_path, seed=seed, size=64)
    widths = gpd.read_file(files.labels, layer="centerlines").width_px
    assert len(widths) and widths.between(1, 6).all(), widths.tolist()
