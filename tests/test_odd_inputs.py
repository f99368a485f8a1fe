"""Odd but valid rasters give correct outputs; broken ones give one clear error."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from geounet.errors import GeoUNetError, InputError, OutputError
from geounet.predict import PredictConfig, predict_raster

QUIET = PredictConfig(progress=False)


def _noise(shape, dtype="uint8", seed=0):
    return np.random.default_rng(seed).integers(1, 250, shape).astype(dtype)


@pytest.mark.parametrize("layout", [{"tiled": False}, {"tiled": True, "blockxsize": 64,
                                                        "blockysize": 64}])
@pytest.mark.parametrize("compress", ["lzw", "deflate", "jpeg", None])
def test_layouts_and_compressions(make_raster, tiny_model, tmp_path, layout, compress):
    options = dict(layout)
    if compress:
        options["compress"] = compress
    raster = make_raster(_noise((3, 130, 170)), **options)
    out = tmp_path / "m.tif"
    predict_raster(raster, tiny_model(), out, None, QUIET)
    with rasterio.open(out) as dst, rasterio.open(raster) as src:
        assert (dst.transform, dst.crs, dst.shape) == (src.transform, src.crs, src.shape)
        assert (dst.read(1) != 255).all()


def test_internal_mask_is_nodata(make_raster, tiny_model, tmp_path):
    raster = make_raster(_noise((3, 80, 90)), name="masked.tif")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(raster, "r+") as dst:
        mask = np.full((80, 90), 255, np.uint8)
        mask[:, :30] = 0
        dst.write_mask(mask)
    out = tmp_path / "m.tif"
    predict_raster(raster, tiny_model(), out, None, QUIET)
    with rasterio.open(out) as dst:
        result = dst.read(1)
    assert (result[:, :30] == 255).all() and (result[:, 30:] != 255).all()


def test_nan_as_nodata(make_raster, tiny_model, tmp_path):
    data = _noise((3, 50, 60), "float32")
    data[:, 5:9, 7:11] = np.nan
    raster = make_raster(data, nodata=float("nan"))
    out = tmp_path / "m.tif"
    predict_raster(raster, tiny_model(), out, None, QUIET)
    with rasterio.open(out) as dst:
        assert np.array_equal(dst.read(1) == 255, np.isnan(data[0]))


def test_very_wide_raster(make_raster, tiny_model, tmp_path):
    raster = make_raster(_noise((3, 64, 100_000)), compress="deflate", tiled=True)
    out = tmp_path / "m.tif"
    result = predict_raster(raster, tiny_model(tile=256, overlap=32), out, None, QUIET)
    assert result.tiles == -(-(100_000 - 32) // (256 - 32)) == 447
    with rasterio.open(out) as dst, rasterio.open(raster) as src:
        assert dst.shape == (64, 100_000) and dst.transform == src.transform


def test_no_crs_and_no_geotransform_pass_through(make_raster, tiny_model, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        raster = make_raster(_noise((3, 40, 50)), crs=None, transform=Affine.identity())
        out = tmp_path / "m.tif"
        predict_raster(raster, tiny_model(), out, None, QUIET)
        with rasterio.open(out) as dst:
            assert dst.crs is None and dst.transform == Affine.identity()


@pytest.mark.parametrize("content", [b"", b"II*\x00" + b"\x00" * 20, b"not a tiff at all"])
def test_empty_and_corrupt_files(tmp_path, tiny_model, content):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(content)
    with pytest.raises(InputError, match="bad.tif"):
        predict_raster(bad, tiny_model(), tmp_path / "m.tif", None, QUIET)
    assert not (tmp_path / "m.tif").exists()


def test_truncated_geotiff_fails_cleanly(make_raster, tiny_model, tmp_path):
    raster = make_raster(_noise((3, 300, 300)), tiled=True, blockxsize=64, blockysize=64,
                         compress="deflate")
    data = raster.read_bytes()
    raster.write_bytes(data[: len(data) // 2])
    out = tmp_path / "m.tif"
    with pytest.raises(GeoUNetError, match="in.tif"):
        predict_raster(raster, tiny_model(), out, None, QUIET)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_or_unwritable_output_folder(rgb, tiny_model, tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        predict_raster(rgb, tiny_model(), tmp_path / "nope" / "m.tif", None, QUIET)
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere; the permission case needs a normal user")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="not writable"):
        predict_raster(rgb, tiny_model(), locked / "m.tif", None, QUIET)
