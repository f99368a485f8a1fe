"""Streaming prediction: values, georeferencing, nodata, edges, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from geounet.checkpoint import load_checkpoint
from geounet.errors import InputError, OutputError
from geounet.io import normalize, read_masked
from geounet.predict import PredictConfig, predict_raster

QUIET = {"progress": False}


def _read(path, band=1):
    with rasterio.open(path) as src:
        return src.read(band), src.profile


def _whole_image(model_path, raster):
    model, meta = load_checkpoint(model_path)
    with rasterio.open(raster) as src:
        data, valid = read_masked(src, meta.bands, src.window(*src.bounds))
    with torch.inference_mode():
        logits = model(torch.from_numpy(normalize(data, valid, meta.mean, meta.std))[None])
    return torch.sigmoid(logits)[0, 0].numpy()


@pytest.mark.parametrize("window", ["hann", "average"])
@pytest.mark.parametrize("block_tiles", [1, 2, 50])
def test_constant_prediction_blends_to_the_same_constant(rgb, tmp_path, window, block_tiles):
    model, meta = load_checkpoint_const(tmp_path)
    out = tmp_path / "p.tif"
    predict_raster(rgb, (model, meta), None, out,
                   PredictConfig(window=window, block_tiles=block_tiles, **QUIET))
    prob, _ = _read(out)
    assert np.allclose(prob, 1 / (1 + np.exp(-0.7)), atol=1e-6)


def load_checkpoint_const(tmp_path):
    from geounet.checkpoint import ModelMetadata
    from geounet.model import UNet, UNetConfig

    arch = UNetConfig(3, 1, 4, 2)
    model = UNet(arch).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.outc.bias.fill_(0.7)
    meta = ModelMetadata(arch, (1, 2, 3), (0.0,) * 3, (1.0,) * 3, ("bg", "fg"),
                         tile_size=64, overlap=16)
    return model, meta


def test_block_size_does_not_change_the_result(rgb, tiny_model, tmp_path):
    model = tiny_model()
    results = []
    for block_tiles in (1, 2, 100):
        out = tmp_path / f"p{block_tiles}.tif"
        predict_raster(rgb, model, None, out, PredictConfig(block_tiles=block_tiles, **QUIET))
        results.append(_read(out)[0])
    for other in results[:-1]:
        assert np.abs(other - results[-1]).max() < 1e-6


def test_tiled_matches_whole_image_pass(rgb, tiny_model, tmp_path):
    model = tiny_model(tile=64, overlap=16)
    out = tmp_path / "p.tif"
    predict_raster(rgb, model, None, out, PredictConfig(**QUIET))
    tiled, whole = _read(out)[0], _whole_image(model, rgb)
    assert np.abs(tiled - whole).mean() < 1e-3


def test_georeferencing_is_kept_including_rotation(make_raster, tiny_model, tmp_path):
    rotated = Affine(0.4, 0.3, 500000.0, 0.3, -0.4, 5000000.0)
    data = np.random.default_rng(1).integers(0, 255, (3, 70, 90), dtype=np.uint8)
    for crs, transform in (("EPSG:32633", rotated), ("EPSG:4326", Affine(1e-5, 0, 10, 0,
                                                                          -1e-5, 50))):
        raster = make_raster(data, name=f"{crs[-4:]}.tif", crs=crs, transform=transform)
        out = tmp_path / f"{crs[-4:]}_mask.tif"
        predict_raster(raster, tiny_model(), out, None, PredictConfig(**QUIET))
        _, profile = _read(out)
        assert profile["crs"].to_string() == crs
        assert profile["transform"] == transform
        assert (profile["width"], profile["height"]) == (90, 70)
        assert profile["nodata"] == 255


def test_nodata_and_nan_stay_nodata(make_raster, tiny_model, tmp_path):
    data = np.random.default_rng(2).uniform(0, 200, (3, 80, 100)).astype("float32")
    data[:, 10:20, 30:50] = -9999.0
    data[1, 50, 60] = np.nan
    data[0, 70, 5] = np.inf
    raster = make_raster(data, nodata=-9999.0)
    mask_out, prob_out = tmp_path / "m.tif", tmp_path / "p.tif"
    predict_raster(raster, tiny_model(), mask_out, prob_out, PredictConfig(**QUIET))
    mask, prob = _read(mask_out)[0], _read(prob_out)[0]
    expected = np.zeros((80, 100), bool)
    expected[10:20, 30:50] = True
    expected[50, 60] = expected[70, 5] = True
    assert np.array_equal(mask == 255, expected)
    assert np.array_equal(np.isnan(prob), expected)


def test_all_nodata_skips_every_tile(make_raster, tiny_model, tmp_path):
    raster = make_raster(np.zeros((3, 100, 130), np.uint8), nodata=0)
    out = tmp_path / "m.tif"
    result = predict_raster(raster, tiny_model(), out, None, PredictConfig(**QUIET))
    assert result.tiles_skipped == result.tiles > 1
    assert (_read(out)[0] == 255).all()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_dtypes(make_raster, tiny_model, tmp_path, dtype):
    data = np.random.default_rng(3).integers(0, 200, (3, 40, 70)).astype(dtype)
    out = tmp_path / "m.tif"
    predict_raster(make_raster(data), tiny_model(), out, None, PredictConfig(**QUIET))
    assert _read(out)[0].shape == (40, 70)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (37, 21), (65, 64)])
def test_small_and_thin_rasters(make_raster, tiny_model, tmp_path, shape):
    data = np.full((3, *shape), 120, np.uint8)
    out = tmp_path / "m.tif"
    predict_raster(make_raster(data), tiny_model(), out, None, PredictConfig(**QUIET))
    assert _read(out)[0].shape == shape


def test_band_mismatch_names_both_counts_and_the_fix(make_raster, tiny_model, tmp_path):
    raster = make_raster(np.zeros((4, 30, 30), np.uint8))
    with pytest.raises(InputError, match=r"4 band.*expects 3.*--bands 1,2,3"):
        predict_raster(raster, tiny_model(), tmp_path / "m.tif", None, PredictConfig(**QUIET))
    predict_raster(raster, tiny_model(), tmp_path / "m.tif", None,
                   PredictConfig(bands=(4, 2, 1), **QUIET))
    assert (tmp_path / "m.tif").exists()


def test_existing_output_and_input_as_output_are_refused(rgb, tiny_model, tmp_path):
    out = tmp_path / "m.tif"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="--overwrite"):
        predict_raster(rgb, tiny_model(), out, None, PredictConfig(**QUIET))
    assert out.read_bytes() == b"keep me"
    with pytest.raises(OutputError, match="same file"):
        predict_raster(rgb, tiny_model(), rgb, None, PredictConfig(overwrite=True, **QUIET))


def test_failure_midway_leaves_nothing_behind(rgb, tmp_path, monkeypatch):
    model, meta = load_checkpoint_const(tmp_path)
    calls = {"n": 0}
    forward = model.forward

    def failing(x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return forward(x)

    monkeypatch.setattr(model, "forward", failing)
    out = tmp_path / "out" / "m.tif"
    out.parent.mkdir()
    with pytest.raises(RuntimeError, match="simulated"):
        predict_raster(rgb, (model, meta), out, None, PredictConfig(batch_size=1, **QUIET))
    assert list(out.parent.iterdir()) == []


def test_cog_output_has_overviews(make_raster, tiny_model, tmp_path):
    data = np.random.default_rng(4).integers(0, 255, (3, 600, 700), dtype=np.uint8)
    out = tmp_path / "m.tif"
    predict_raster(make_raster(data), tiny_model(tile=128, overlap=16), out, None,
                   PredictConfig(cog=True, **QUIET))
    with rasterio.open(out) as src:
        assert src.overviews(1)
        assert src.profile["tiled"]
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_not_a_raster_is_refused(tmp_path, tiny_model):
    bad = tmp_path / "bad.tif"
    bad.write_text("hello")
    with pytest.raises(InputError, match="not a readable raster"):
        predict_raster(bad, tiny_model(), tmp_path / "m.tif", None, PredictConfig(**QUIET))
