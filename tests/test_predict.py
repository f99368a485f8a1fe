"""Streaming prediction: values, georeferencing, nodata, small rasters, bands, safe outputs."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import rasterio
import torch
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import Affine

from geounet.blend import axis_overlaps, hann_profile, tile_weights
from geounet.checkpoint import ModelMetadata, load_checkpoint
from geounet.errors import ConfigError, InputError, OutputError
from geounet.io import normalize
from geounet.model import UNet, UNetConfig, logits_to_probabilities
from geounet.predict import PredictConfig, PredictResult, predict_raster
from geounet.tiling import TileGrid

# Measured on the seeded 300x457 raster below with the tiny random model (tile 64, overlap 16,
# hann window): mean |tiled - whole| = 6.8e-6, max 3.4e-4; without overlap: mean 1.7e-4.
TILED_VS_WHOLE_MEAN = 1e-3


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile


def _whole_image(model, meta, array: np.ndarray) -> np.ndarray:
    """Probabilities of one forward pass over the whole raster (no tiles, no blending)."""
    data = array.astype(np.float32)
    valid = np.ones(data.shape[1:], bool)
    x = torch.from_numpy(normalize(data, valid, meta.mean, meta.std))[None]
    with torch.inference_mode():
        logits = model(x)
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)
    return probs[0].numpy()


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- values ----------------------------------------------------------------------------


@pytest.mark.parametrize("window", ["hann", "average"])
@pytest.mark.parametrize("block_tiles", [1, 2, 3, 50])
def test_constant_model_blends_to_the_same_constant(odd_rgb, constant_model, quiet, tmp_path,
                                                    window, block_tiles):
    model, meta = constant_model(bias=0.7)
    mask, prob = tmp_path / "m.tif", tmp_path / "p.tif"
    result = predict_raster(odd_rgb, (model, meta), mask, prob,
                            quiet(window=window, block_tiles=block_tiles))
    expected = 1 / (1 + np.exp(-0.7))
    probs = _read(prob)[0]
    assert probs.shape == (1, 137, 229)
    assert np.abs(probs - expected).max() < 1e-6
    assert (_read(mask)[0] == 1).all()
    assert result.tiles == 3 * 5 and result.tiles_skipped == 0
    assert result.class_pixels == {"background": 0, "thing": 137 * 229}


def test_constant_negative_logit_gives_background(odd_rgb, constant_model, quiet, tmp_path):
    model, meta = constant_model(bias=-1.5)
    predict_raster(odd_rgb, (model, meta), tmp_path / "m.tif", tmp_path / "p.tif", quiet())
    assert np.abs(_read(tmp_path / "p.tif")[0] - 1 / (1 + np.exp(1.5))).max() < 1e-6
    assert (_read(tmp_path / "m.tif")[0] == 0).all()


@pytest.mark.parametrize("block_tiles", [1, 2])
def test_constant_multiclass_model_gives_the_softmax(odd_rgb, constant_model, quiet, tmp_path,
                                                     block_tiles):
    biases = (0.2, 1.1, -0.4)
    model, meta = constant_model(bias=biases)
    result = predict_raster(odd_rgb, (model, meta), tmp_path / "m.tif", tmp_path / "p.tif",
                            quiet(block_tiles=block_tiles))
    expected = np.exp(biases) / np.exp(biases).sum()
    probs, profile = _read(tmp_path / "p.tif")
    assert probs.shape == (3, 137, 229) and profile["count"] == 3
    assert np.abs(probs - expected[:, None, None]).max() < 1e-6
    assert (_read(tmp_path / "m.tif")[0] == 1).all()
    assert result.class_pixels == {"c0": 0, "c1": 137 * 229, "c2": 0}


def test_block_size_does_not_change_the_result(odd_rgb, checkpoint, quiet, tmp_path):
    probs, masks = {}, {}
    for block_tiles in (1, 2, 100):
        mask, prob = tmp_path / f"m{block_tiles}.tif", tmp_path / f"p{block_tiles}.tif"
        predict_raster(odd_rgb, checkpoint, mask, prob, quiet(block_tiles=block_tiles))
        probs[block_tiles], masks[block_tiles] = _read(prob)[0], _read(mask)[0]
    for n in (1, 2):
        assert np.abs(probs[n] - probs[100]).max() < 1e-6
        # Masks agree except, at most, on pixels within rounding of the threshold.
        differ = masks[n] != masks[100]
        assert np.all(np.abs(probs[100][differ] - 0.5) < 1e-6)
    assert 0.0 < probs[100].min() < probs[100].max() < 1.0  # a real, varying prediction


def _reference_blend(model, meta, array, tile, overlap):
    """Every tile of the global grid, hann-weighted, accumulated over the whole raster."""
    valid = np.isfinite(array).all(axis=0)
    x = normalize(array.astype(np.float32), valid, meta.mean, meta.std)
    grid = TileGrid(array.shape[1], array.shape[2], tile, overlap)
    th, tw = grid.tile_height, grid.tile_width
    rows, cols = axis_overlaps(grid.row_starts, th), axis_overlaps(grid.col_starts, tw)
    acc = np.zeros((meta.arch.classes, *valid.shape))
    weight = np.zeros(valid.shape)
    for i, r in enumerate(grid.row_starts):
        for j, c in enumerate(grid.col_starts):
            if not valid[r : r + th, c : c + tw].any():
                continue
            with torch.inference_mode():
                tile_x = torch.from_numpy(x[:, r : r + th, c : c + tw].copy())[None]
                probs = logits_to_probabilities(model(tile_x))[0].numpy()
            w = tile_weights(hann_profile, th, tw, rows[i], cols[j])
            acc[:, r : r + th, c : c + tw] += probs * w
            weight[r : r + th, c : c + tw] += w
    with np.errstate(invalid="ignore"):
        out = acc / weight
    out[:, ~valid] = np.nan
    return out


REFERENCE_CASES = [  # height, width, tile, overlap, block_tiles, nodata hole
    (150, 223, 64, 16, 1, False), (150, 223, 64, 16, 2, True), (113, 113, 64, 16, 3, True),
    (97, 200, 48, 0, 2, False), (61, 190, 32, 15, 1, True), (30, 20, 64, 16, 1, False),
    (200, 75, 40, 20, 4, True), (129, 131, 64, 31, 2, False),
]


@pytest.mark.parametrize("height,width,tile,overlap,block_tiles,hole", REFERENCE_CASES)
def test_streaming_equals_a_whole_raster_reference_blend(make_raster, quiet, tmp_path, height,
                                                         width, tile, overlap, block_tiles,
                                                         hole):
    """The carried accumulators of the block loop change nothing: same as blending at once."""
    torch.manual_seed(height * width)
    arch = UNetConfig(3, 2, 4, 2)
    model = UNet(arch).eval()
    meta = ModelMetadata(arch, (1, 2, 3), (100.0,) * 3, (50.0,) * 3, ("a", "b"))
    rng = np.random.default_rng(height + width)
    array = rng.uniform(0, 255, (3, height, width)).astype(np.float32)
    if hole:
        array[:, height // 3 : height // 3 + 45, width // 4 : width // 4 + 60] = np.nan
    path = tmp_path / "p.tif"
    predict_raster(make_raster(array), (model, meta), None, path,
                   quiet(tile_size=tile, overlap=overlap, block_tiles=block_tiles,
                         batch_size=3))
    got = _read(path)[0]
    expected = _reference_blend(model, meta, array, tile, overlap)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.nanmax(np.abs(got - expected)) < 1e-5


def test_batch_size_does_not_change_the_result(odd_rgb, checkpoint, quiet, tmp_path):
    out = {}
    for batch in (1, 5):
        path = tmp_path / f"p{batch}.tif"
        predict_raster(odd_rgb, checkpoint, None, path, quiet(batch_size=batch))
        out[batch] = _read(path)[0]
    assert np.abs(out[1] - out[5]).max() < 1e-5


def test_tiled_matches_one_whole_image_pass(make_raster, checkpoint, quiet, tmp_path):
    array = np.random.default_rng(11).integers(0, 255, (3, 300, 457), dtype=np.uint8)
    raster = make_raster(array, name="big.tif")
    model, meta = load_checkpoint(checkpoint)
    whole = _whole_image(model, meta, array)[0]

    diffs = {}
    for overlap in (0, 16):
        out = tmp_path / f"p{overlap}.tif"
        result = predict_raster(raster, checkpoint, None, out, quiet(overlap=overlap))
        assert result.tiles > 20
        diffs[overlap] = np.abs(_read(out)[0][0] - whole)
    mean = float(diffs[16].mean())
    print(f"tiled vs whole, tile 64 overlap 16 hann: mean {mean:.3g}, "
          f"max {diffs[16].max():.3g}; overlap 0: mean {diffs[0].mean():.3g}")
    assert mean < TILED_VS_WHOLE_MEAN
    assert diffs[16].max() < 1e-2
    # Overlap is what removes the seams.
    assert diffs[16].mean() < diffs[0].mean()


# -- georeferencing --------------------------------------------------------------------


@pytest.mark.parametrize("crs,transform", [
    ("EPSG:32633", Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0)),
    ("EPSG:32633", Affine(0.4, 0.3, 500000.0, 0.3, -0.4, 5000000.0)),
    ("EPSG:4326", Affine(1e-5, 0.0, 10.123456789, 0.0, -1e-5, 50.987654321)),
    ("EPSG:3857", Affine(0.3, 0.0, 1113194.9, 0.0, 0.3, 6446275.8)),  # south-up
], ids=["utm", "rotated", "geographic", "south-up"])
def test_output_keeps_crs_transform_and_size(make_raster, checkpoint, quiet, tmp_path, crs,
                                             transform):
    data = np.random.default_rng(1).integers(0, 255, (3, 70, 91), dtype=np.uint8)
    raster = make_raster(data, crs=crs, transform=transform)
    mask, prob = tmp_path / "m.tif", tmp_path / "p.tif"
    predict_raster(raster, checkpoint, mask, prob, quiet())
    with rasterio.open(raster) as src:
        src_crs = src.crs
    for path, dtype, nodata in ((mask, "uint8", 255), (prob, "float32", None)):
        with rasterio.open(path) as dst:
            assert dst.crs == src_crs and dst.crs.to_epsg() == int(crs.split(":")[1])
            assert dst.transform == transform  # exact, rotation terms included
            assert (dst.width, dst.height, dst.count) == (91, 70, 1)
            assert dst.dtypes[0] == dtype
            if nodata is None:
                assert np.isnan(dst.nodata)
            else:
                assert dst.nodata == nodata
            assert dst.tags()["GEOUNET_CLASSES"] == "background,thing"


def test_raster_without_crs_stays_without(make_raster, checkpoint, quiet, tmp_path):
    data = np.full((3, 20, 30), 90, np.uint8)
    raster = make_raster(data, crs=None, transform=Affine(2, 0, 100, 0, -2, 200))
    predict_raster(raster, checkpoint, tmp_path / "m.tif", None, quiet())
    _, profile = _read(tmp_path / "m.tif")
    assert profile["crs"] is None
    assert profile["transform"] == Affine(2, 0, 100, 0, -2, 200)


def test_gcp_georeferencing_is_kept(make_raster, checkpoint, quiet, tmp_path):
    gcps = [GroundControlPoint(0, 0, 500000, 5000000), GroundControlPoint(0, 90, 500045, 5e6),
            GroundControlPoint(60, 0, 500000, 4999970),
            GroundControlPoint(60, 90, 500045, 4999970)]
    data = np.random.default_rng(13).integers(0, 255, (3, 60, 90), dtype=np.uint8)
    raster = make_raster(data, crs=CRS.from_epsg(32633), transform=None, gcps=gcps)
    with rasterio.open(raster) as src:
        assert len(src.gcps[0]) == 4 and src.gcps[1].to_epsg() == 32633  # the input has them
    predict_raster(raster, checkpoint, tmp_path / "m.tif", None, quiet())
    with rasterio.open(tmp_path / "m.tif") as dst:
        out_gcps, out_crs = dst.gcps
    assert len(out_gcps) == 4 and out_crs is not None and out_crs.to_epsg() == 32633


# -- nodata ----------------------------------------------------------------------------


def test_nodata_value_and_nan_pixels_become_nodata_only_there(make_raster, checkpoint, quiet,
                                                              tmp_path):
    data = np.random.default_rng(2).uniform(0, 200, (3, 90, 131)).astype("float32")
    data[:, 10:25, 30:95] = -9999.0     # the nodata value in every band
    data[2, 60:62, 5:9] = -9999.0       # ... or in one band only
    data[1, 50, 60] = np.nan            # NaN in one band
    data[0, 89, 130] = np.nan           # in the corner
    raster = make_raster(data, nodata=-9999.0)
    mask_path, prob_path = tmp_path / "m.tif", tmp_path / "p.tif"
    result = predict_raster(raster, checkpoint, mask_path, prob_path, quiet())

    expected = np.zeros((90, 131), bool)
    expected[10:25, 30:95] = True
    expected[60:62, 5:9] = True
    expected[50, 60] = expected[89, 130] = True
    mask, prob = _read(mask_path)[0][0], _read(prob_path)[0][0]
    assert np.array_equal(mask == 255, expected)
    assert np.array_equal(np.isnan(prob), expected)
    assert set(np.unique(mask[~expected])) <= {0, 1}
    assert np.all((prob[~expected] >= 0) & (prob[~expected] <= 1))
    assert sum(result.class_pixels.values()) == (~expected).sum()
    assert result.tiles_skipped == 0


def test_integer_nodata_value_becomes_nodata(make_raster, checkpoint, quiet, tmp_path):
    data = np.random.default_rng(3).integers(1, 255, (3, 64, 100), dtype=np.uint8)
    data[:, :, :7] = 0
    raster = make_raster(data, nodata=0)
    predict_raster(raster, checkpoint, tmp_path / "m.tif", tmp_path / "p.tif", quiet())
    mask, prob = _read(tmp_path / "m.tif")[0][0], _read(tmp_path / "p.tif")[0][0]
    assert (mask[:, :7] == 255).all() and (mask[:, 7:] != 255).all()
    assert np.isnan(prob[:, :7]).all() and np.isfinite(prob[:, 7:]).all()


def test_all_nodata_raster_skips_every_tile(make_raster, checkpoint, quiet, tmp_path):
    raster = make_raster(np.full((3, 100, 150), -1, np.int16), nodata=-1)
    mask_path, prob_path = tmp_path / "m.tif", tmp_path / "p.tif"
    result = predict_raster(raster, checkpoint, mask_path, prob_path, quiet(block_tiles=1))
    assert isinstance(result, PredictResult)
    assert result.tiles == 2 * 3 and result.tiles_skipped == result.tiles
    assert (_read(mask_path)[0] == 255).all()
    assert np.isnan(_read(prob_path)[0]).all()
    assert result.class_pixels == {"background": 0, "thing": 0}


def test_all_nan_region_skips_its_tiles_only(make_raster, checkpoint, quiet, tmp_path):
    data = np.random.default_rng(4).uniform(0, 200, (3, 64, 200)).astype("float32")
    data[:, :, :112] = np.nan  # of the tiles at columns 0, 48, 96, 136: the first two
    mask_path = tmp_path / "m.tif"
    result = predict_raster(make_raster(data), checkpoint, mask_path, None, quiet())
    assert result.tiles == 4 and result.tiles_skipped == 2
    mask = _read(mask_path)[0][0]
    assert (mask[:, :112] == 255).all() and (mask[:, 112:] != 255).all()


def test_threshold_comes_from_the_checkpoint_unless_given(odd_rgb, constant_model, quiet,
                                                          tmp_path):
    model, meta = constant_model(bias=-0.4)  # probability 0.401 everywhere
    meta = dataclasses.replace(meta, threshold=0.3)
    predict_raster(odd_rgb, (model, meta), tmp_path / "a.tif", None, quiet())
    assert (_read(tmp_path / "a.tif")[0] == 1).all()
    predict_raster(odd_rgb, (model, meta), tmp_path / "b.tif", None, quiet(threshold=0.5))
    assert (_read(tmp_path / "b.tif")[0] == 0).all()


def test_more_classes_than_the_mask_can_hold_are_refused(odd_rgb, constant_model, quiet,
                                                        tmp_path):
    # The model itself refuses to be built: 255 is the mask's nodata, so 254 classes at most.
    with pytest.raises(ConfigError, match="255"):
        model, meta = constant_model(bias=(0.0,) * 255)
        predict_raster(odd_rgb, (model, meta), tmp_path / "m.tif", None, quiet())
    assert not (tmp_path / "m.tif").exists()


# -- data types and sizes --------------------------------------------------------------


def test_dtypes_give_the_same_probabilities(make_raster, checkpoint, quiet, tmp_path):
    values = np.random.default_rng(5).integers(0, 128, (3, 41, 77))
    out = {}
    for dtype in ("uint8", "int8", "uint16", "int16", "float32", "float64"):
        raster = make_raster(values.astype(dtype), name=f"{dtype}.tif")
        path = tmp_path / f"p_{dtype}.tif"
        predict_raster(raster, checkpoint, None, path, quiet())
        out[dtype] = _read(path)[0]
    for dtype in ("uint8", "int8", "uint16", "int16", "float64"):
        assert np.abs(out[dtype] - out["float32"]).max() < 1e-6, dtype


def test_large_and_negative_integer_values_run(make_raster, checkpoint, quiet, tmp_path):
    rng = np.random.default_rng(6)
    for dtype, low, high in (("uint16", 0, 65535), ("int16", -32768, 32767)):
        raster = make_raster(rng.integers(low, high, (3, 33, 47)).astype(dtype),
                             name=f"{dtype}.tif")
        path = tmp_path / f"p_{dtype}.tif"
        predict_raster(raster, checkpoint, None, path, quiet())
        assert np.isfinite(_read(path)[0]).all()


@pytest.mark.parametrize("shape", [(37, 21), (1, 1), (64, 64), (1, 50), (50, 1)])
def test_rasters_within_one_tile_match_one_forward_pass(make_raster, checkpoint, quiet,
                                                        tmp_path, shape):
    array = np.random.default_rng(7).integers(0, 255, (3, *shape), dtype=np.uint8)
    mask_path, prob_path = tmp_path / "m.tif", tmp_path / "p.tif"
    result = predict_raster(make_raster(array), checkpoint, mask_path, prob_path, quiet())
    assert result.tiles == 1 and (result.height, result.width) == shape
    model, meta = load_checkpoint(checkpoint)
    prob, profile = _read(prob_path)
    assert (profile["height"], profile["width"]) == shape
    assert np.abs(prob - _whole_image(model, meta, array)).max() < 1e-6
    assert np.array_equal(_read(mask_path)[0], (prob >= 0.5).astype(np.uint8))


@pytest.mark.parametrize("shape", [(1, 300), (300, 1), (3, 200)])
def test_thin_rasters(make_raster, checkpoint, quiet, tmp_path, shape):
    array = np.random.default_rng(8).integers(0, 255, (3, *shape), dtype=np.uint8)
    prob_path = tmp_path / "p.tif"
    result = predict_raster(make_raster(array), checkpoint, None, prob_path, quiet())
    assert result.tiles > 1
    prob = _read(prob_path)[0]
    assert prob.shape == (1, *shape) and np.isfinite(prob).all()


# -- bands -----------------------------------------------------------------------------


def test_band_mismatch_names_both_counts_and_the_fix(make_raster, checkpoint, quiet, tmp_path):
    four = np.random.default_rng(9).integers(0, 255, (4, 40, 50), dtype=np.uint8)
    # MINISBLACK: four plain bands (GDAL's default for 4 x uint8 makes band 4 an alpha mask).
    raster = make_raster(four, name="four.tif", photometric="MINISBLACK")
    with pytest.raises(InputError, match=r"4 band.*expects 3.*--bands") as info:
        predict_raster(raster, checkpoint, tmp_path / "m.tif", None, quiet())
    assert "four.tif" in str(info.value)
    assert not (tmp_path / "m.tif").exists()

    predict_raster(raster, checkpoint, None, tmp_path / "p4.tif", quiet(bands=(1, 2, 3)))
    three = make_raster(four[:3], name="three.tif")
    predict_raster(three, checkpoint, None, tmp_path / "p3.tif", quiet())
    assert np.array_equal(_read(tmp_path / "p4.tif")[0], _read(tmp_path / "p3.tif")[0])

    # Bands are taken in the order given.
    reordered = make_raster(four[[3, 1, 0]], name="reordered.tif")
    predict_raster(reordered, checkpoint, None, tmp_path / "pr.tif", quiet())
    predict_raster(raster, checkpoint, None, tmp_path / "p421.tif", quiet(bands=(4, 2, 1)))
    assert np.array_equal(_read(tmp_path / "pr.tif")[0], _read(tmp_path / "p421.tif")[0])


def test_transparent_alpha_pixels_become_nodata(make_raster, checkpoint, quiet, tmp_path):
    rgba = np.random.default_rng(12).integers(0, 255, (4, 40, 70), dtype=np.uint8)
    rgba[3] = 255
    rgba[3, 5:15, 20:60] = 0
    raster = make_raster(rgba, name="rgba.tif", photometric="RGB", alpha="YES")
    mask_path = tmp_path / "m.tif"
    predict_raster(raster, checkpoint, mask_path, None, quiet(bands=(1, 2, 3)))
    assert np.array_equal(_read(mask_path)[0][0] == 255, rgba[3] == 0)


@pytest.mark.parametrize("bands,needle", [((1, 2), "lists 2 band"), ((1, 2, 5), r"\[5\]"),
                                          ((0, 1, 2), r"\[0\]")])
def test_bad_band_choice_is_refused(make_raster, checkpoint, quiet, tmp_path, bands, needle):
    raster = make_raster(np.zeros((4, 20, 20), np.uint8))
    with pytest.raises(InputError, match=needle):
        predict_raster(raster, checkpoint, tmp_path / "m.tif", None, quiet(bands=bands))


def test_one_band_raster_with_a_three_band_model(make_raster, checkpoint, quiet, tmp_path):
    raster = make_raster(np.full((1, 20, 20), 100, np.uint8))
    with pytest.raises(InputError, match="1 band.*--bands 1,1,1"):
        predict_raster(raster, checkpoint, tmp_path / "m.tif", None, quiet())
    predict_raster(raster, checkpoint, tmp_path / "m.tif", None, quiet(bands=(1, 1, 1)))
    assert _read(tmp_path / "m.tif")[0].shape == (1, 20, 20)


# -- outputs ---------------------------------------------------------------------------


def test_existing_output_is_kept_without_overwrite(odd_rgb, checkpoint, quiet, tmp_path):
    mask, prob = tmp_path / "m.tif", tmp_path / "p.tif"
    mask.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        predict_raster(odd_rgb, checkpoint, mask, prob, quiet())
    assert mask.read_bytes() == b"keep me"
    assert not prob.exists()  # nothing is written when one output is refused

    prob.write_bytes(b"keep me too")
    with pytest.raises(OutputError, match="p.tif"):
        predict_raster(odd_rgb, checkpoint, None, prob, quiet())
    assert prob.read_bytes() == b"keep me too"

    predict_raster(odd_rgb, checkpoint, mask, None, quiet(overwrite=True))
    assert _read(mask)[0].shape == (1, 137, 229)
    assert _hidden(tmp_path) == []


def test_output_equal_to_input_is_refused(odd_rgb, checkpoint, quiet, tmp_path):
    before = _sha(odd_rgb)
    for same in (odd_rgb, tmp_path / "sub" / ".." / odd_rgb.name):
        (tmp_path / "sub").mkdir(exist_ok=True)
        for overwrite in (False, True):
            with pytest.raises(OutputError, match="same file as the input"):
                predict_raster(odd_rgb, checkpoint, same, None, quiet(overwrite=overwrite))
            with pytest.raises(OutputError, match="same file as the input"):
                predict_raster(odd_rgb, checkpoint, None, same, quiet(overwrite=overwrite))
    assert _sha(odd_rgb) == before
    assert _hidden(tmp_path) == []


def test_same_file_for_mask_and_probabilities_is_refused(odd_rgb, checkpoint, quiet, tmp_path):
    with pytest.raises(ConfigError, match="different files"):
        predict_raster(odd_rgb, checkpoint, tmp_path / "x.tif", tmp_path / "x.tif", quiet())
    with pytest.raises(ConfigError, match="nothing to write"):
        predict_raster(odd_rgb, checkpoint, None, None, quiet())
    assert not (tmp_path / "x.tif").exists()


def test_no_temporary_files_after_success(odd_rgb, checkpoint, quiet, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    predict_raster(odd_rgb, checkpoint, out / "m.tif", out / "p.tif", quiet())
    assert sorted(p.name for p in out.iterdir()) == ["m.tif", "p.tif"]


def _failing(model, after: int):
    """Make ``model.forward`` raise on its ``after``-th call."""
    calls = {"n": 0}
    forward = model.forward

    def failing(x):
        calls["n"] += 1
        if calls["n"] == after:
            raise RuntimeError("simulated crash")
        return forward(x)

    model.forward = failing
    return calls


def test_failure_midway_leaves_nothing_behind(odd_rgb, checkpoint, quiet, tmp_path):
    model, meta = load_checkpoint(checkpoint)
    calls = _failing(model, after=4)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict_raster(odd_rgb, (model, meta), out / "m.tif", out / "p.tif",
                       quiet(batch_size=1, block_tiles=1, engine="torch"))  # patched forward
    assert calls["n"] == 4  # it did fail partway, with tiles already blended
    assert not (out / "m.tif").exists() and not (out / "p.tif").exists()
    assert list(out.iterdir()) == []


def test_failure_while_writing_the_cog_leaves_nothing_behind(odd_rgb, checkpoint, quiet,
                                                             tmp_path, monkeypatch):
    import rasterio.shutil

    def broken_copy(src, dst, **options):
        with open(dst, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(rasterio.shutil, "copy", broken_copy)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError, match="simulated"):
        predict_raster(odd_rgb, checkpoint, out / "m.tif", out / "p.tif", quiet(cog=True))
    assert list(out.iterdir()) == []


def test_failure_with_overwrite_keeps_the_previous_output(odd_rgb, checkpoint, quiet, tmp_path):
    mask = tmp_path / "m.tif"
    predict_raster(odd_rgb, checkpoint, mask, None, quiet())
    before = _sha(mask)
    model, meta = load_checkpoint(checkpoint)
    _failing(model, after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict_raster(odd_rgb, (model, meta), mask, None,
                       quiet(batch_size=1, block_tiles=1, overwrite=True, engine="torch"))
    assert _sha(mask) == before
    assert _hidden(tmp_path) == []


def test_unknown_window_and_bad_settings_are_refused(odd_rgb, checkpoint, quiet, tmp_path):
    with pytest.raises(ConfigError, match="choose one of"):
        predict_raster(odd_rgb, checkpoint, tmp_path / "m.tif", None, quiet(window="gauss"))
    with pytest.raises(ConfigError, match="overlap"):
        predict_raster(odd_rgb, checkpoint, tmp_path / "m.tif", None, quiet(tile_size=16))
    with pytest.raises(ConfigError, match="batch size"):
        predict_raster(odd_rgb, checkpoint, tmp_path / "m.tif", None, quiet(batch_size=0))
    with pytest.raises(ConfigError, match="block_tiles"):
        predict_raster(odd_rgb, checkpoint, tmp_path / "m.tif", None, quiet(block_tiles=0))
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tif"] == ["odd.tif"]
    assert _hidden(tmp_path) == []


def test_callable_window_is_used(odd_rgb, checkpoint, quiet, tmp_path):
    calls = []

    def flat(length, before, after):
        calls.append((length, before, after))
        return np.full(length, 3.0, np.float32)

    predict_raster(odd_rgb, checkpoint, None, tmp_path / "flat.tif", quiet(window=flat))
    predict_raster(odd_rgb, checkpoint, None, tmp_path / "avg.tif", quiet(window="average"))
    predict_raster(odd_rgb, checkpoint, None, tmp_path / "hann.tif", quiet(window="hann"))
    flat_p, avg_p = _read(tmp_path / "flat.tif")[0], _read(tmp_path / "avg.tif")[0]
    assert np.abs(flat_p - avg_p).max() < 1e-6
    assert np.abs(flat_p - _read(tmp_path / "hann.tif")[0]).max() > 1e-6
    # Profiles are asked for with the tile size and the actual overlaps of the 64/16 grid.
    assert {c[0] for c in calls} == {64} and (64, 0, 16) in calls and (64, 16, 16) in calls


def test_cog_output_has_overviews_and_the_same_pixels(make_raster, checkpoint, quiet,
                                                      tmp_path):
    array = np.random.default_rng(10).integers(0, 255, (3, 300, 520), dtype=np.uint8)
    raster = make_raster(array, name="wide.tif")
    out = tmp_path / "out"
    out.mkdir()
    predict_raster(raster, checkpoint, out / "m.tif", out / "p.tif", quiet(cog=True))
    predict_raster(raster, checkpoint, out / "m_plain.tif", out / "p_plain.tif", quiet())
    with rasterio.open(raster) as src:
        transform = src.transform
    for name in ("m", "p"):
        with rasterio.open(out / f"{name}.tif") as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert src.overviews(1)
            assert src.profile["tiled"]
            assert src.crs.to_epsg() == 32633
            assert (src.width, src.height) == (520, 300)
            assert src.transform == transform
            assert src.nodata == 255 if name == "m" else np.isnan(src.nodata)
            cog_pixels = src.read()
        plain_pixels = _read(out / f"{name}_plain.tif")[0]
        assert np.array_equal(cog_pixels, plain_pixels, equal_nan=(name == "p"))
    assert sorted(p.name for p in out.iterdir()) == ["m.tif", "m_plain.tif", "p.tif",
                                                     "p_plain.tif"]


def test_band_descriptions_and_tags(odd_rgb, constant_model, quiet, tmp_path):
    model, meta = constant_model(bias=(0.0, 1.0))
    predict_raster(odd_rgb, (model, meta), tmp_path / "m.tif", tmp_path / "p.tif", quiet())
    with rasterio.open(tmp_path / "p.tif") as src:
        assert src.descriptions == ("probability c0", "probability c1")
        assert src.tags()["GEOUNET_CLASSES"] == "c0,c1"
    with rasterio.open(tmp_path / "m.tif") as src:
        assert src.descriptions == ("class",)


def test_predict_config_defaults_come_from_the_checkpoint(odd_rgb, tiny_model, quiet,
                                                          tmp_path):
    path = tiny_model(tile=96, overlap=32)
    result = predict_raster(odd_rgb, path, tmp_path / "m.tif", None, quiet())
    # 137 rows: ceil((137-32)/64) = 2 tiles; 229 cols: ceil((229-32)/64) = 4 tiles.
    assert result.tiles == 2 * 4
    result = predict_raster(odd_rgb, path, tmp_path / "m2.tif", None,
                            quiet(tile_size=64, overlap=0))
    assert result.tiles == 3 * 4
    assert PredictConfig().tile_size is None and PredictConfig().overlap is None


@pytest.mark.parametrize("rows,cols", [(64, 64), (37, 53)])
def test_tta_probabilities_turn_and_mirror_with_the_image(make_raster, checkpoint, quiet,
                                                          tmp_path, rows, cols):
    """With tta the prediction of a turned or mirrored image is the turned or mirrored
    prediction (one 64 px tile, and a tile clipped to a raster smaller than it); the plain
    run of the same random model is not, so the check can fail."""
    image = np.random.default_rng(3).integers(0, 255, (3, rows, cols), dtype=np.uint8)

    def probabilities(array: np.ndarray, name: str, tta: bool) -> np.ndarray:
        path = make_raster(np.ascontiguousarray(array), name=f"{name}.tif")
        out = tmp_path / f"{name}_{tta}.tif"
        predict_raster(path, checkpoint, None, out, quiet(tta=tta))
        with rasterio.open(out) as src:
            return src.read(1)

    for tta in (True, False):
        base = probabilities(image, "base", tta)
        turned = probabilities(np.rot90(image, 1, (1, 2)), "turned", tta)
        mirrored = probabilities(image[:, :, ::-1], "mirrored", tta)
        assert base.shape == (rows, cols) and np.isfinite(base).all()
        equivariant = (np.allclose(turned, np.rot90(base), atol=1e-5)
                       and np.allclose(mirrored, base[:, ::-1], atol=1e-5))
        assert equivariant == tta


def test_tta_averages_the_eight_orientations_of_each_tile(odd_rgb, checkpoint, quiet,
                                                          tmp_path):
    """On a raster of several overlapping tiles, tta blends the same tiles into the same
    grid and georeferencing: probabilities in [0, 1], but not a plain run's."""
    plain, tta = tmp_path / "plain.tif", tmp_path / "tta.tif"
    predict_raster(odd_rgb, checkpoint, None, plain, quiet())
    result = predict_raster(odd_rgb, checkpoint, None, tta, quiet(tta=True))
    with rasterio.open(plain) as a, rasterio.open(tta) as b:
        assert (a.transform, a.crs, a.shape) == (b.transform, b.crs, b.shape)
        p, q = a.read(1), b.read(1)
    assert result.tiles == TileGrid(137, 229, 64, 16).tile_count
    assert np.isfinite(q).all() and ((q >= 0) & (q <= 1)).all()
    assert np.abs(p - q).max() > 1e-3
