"""A tiny training run: the checkpoint it writes is complete, usable and reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from geounet.checkpoint import load_checkpoint, read_metadata
from geounet.errors import ConfigError, GeoUNetError, InputError
from geounet.model import UNetConfig
from geounet.predict import predict_raster
from geounet.train import TrainConfig, train_model

TINY = TrainConfig(class_names=("ground", "roof"), width=4, depth=2, patch=32, batch_size=2,
                   steps=20, val_every=10, lr=1e-2, seed=1, tile_size=64, overlap=16)


@pytest.fixture
def scene(make_raster):
    """128x128 image with bright squares on a dark ground (the mask), and a nodata corner."""
    rng = np.random.default_rng(0)
    mask = np.zeros((128, 128), np.uint8)
    for r, c in ((10, 10), (20, 80), (70, 40), (90, 100), (100, 5)):
        mask[r : r + 18, c : c + 18] = 1
    image = rng.normal(60, 10, (3, 128, 128)) + 120 * mask
    image = np.clip(image, 1, 255).astype(np.uint8)
    image[:, 118:, :12] = 0  # nodata
    return (make_raster(image, name="image.tif", nodata=0),
            make_raster(mask[None], name="mask.tif"), image, mask)


def _weights(path):
    model, _ = load_checkpoint(path)
    return model.state_dict()


def test_tiny_training_writes_a_complete_usable_checkpoint(scene, quiet, tmp_path):
    image_path, mask_path, image, _ = scene
    out = tmp_path / "models" / "tiny.safetensors"
    best = train_model([image_path], [mask_path], out, TINY, progress=False)

    assert out.exists()
    assert best["step"] in (10.0, 20.0)
    assert {"iou", "precision", "recall", "f1", "train_seconds"} <= set(best)
    assert [p.name for p in out.parent.iterdir()] == ["tiny.safetensors"]

    model, meta = load_checkpoint(out)
    assert read_metadata(out) == meta
    assert meta.arch == UNetConfig(3, 1, 4, 2, True)
    assert meta.bands == (1, 2, 3)
    assert meta.class_names == ("ground", "roof")
    assert (meta.tile_size, meta.overlap, meta.nodata_policy) == (64, 16, "mask")
    # Normalization measured on the valid pixels only (the nodata corner is excluded).
    valid = (image != 0).all(axis=0)
    pixels = image[:, valid].astype(np.float64)
    assert meta.mean == pytest.approx(tuple(pixels.mean(axis=1)), rel=1e-4)
    assert meta.std == pytest.approx(tuple(pixels.std(axis=1)), rel=1e-4)
    assert meta.source["seed"] == "1" and meta.source["steps"] == "20"
    assert meta.source["patch"] == "32" and str(image_path) in meta.source["trained_on"]

    # The checkpoint is all `predict` needs.
    mask_out = tmp_path / "pred.tif"
    result = predict_raster(image_path, out, mask_out, None, quiet())
    assert result.tiles == 9 and set(result.class_pixels) == {"ground", "roof"}
    with rasterio.open(mask_out) as dst, rasterio.open(image_path) as src:
        assert dst.crs == src.crs and dst.transform == src.transform
        predicted = dst.read(1)
    assert (predicted[118:, :12] == 255).all()
    assert set(np.unique(predicted[:118])) <= {0, 1}


def test_same_seed_gives_identical_weights(scene, tmp_path):
    image_path, mask_path, _, _ = scene
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.safetensors"
        config = TrainConfig(**{**TINY.__dict__, "seed": seed})
        train_model([image_path], [mask_path], out, config, progress=False)
        runs[name] = _weights(out)
    assert runs["a"].keys() == runs["b"].keys()
    for key in runs["a"]:
        assert torch.equal(runs["a"][key], runs["b"][key]), key
    # Another seed does give other weights: the comparison above can fail.
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_training_arguments_are_checked(scene, make_raster, tmp_path):
    image_path, mask_path, _, _ = scene
    out = tmp_path / "m.safetensors"
    with pytest.raises(ConfigError, match="multiple of 2\\*\\*depth"):
        train_model([image_path], [mask_path], out,
                    TrainConfig(**{**TINY.__dict__, "patch": 30}), progress=False)
    with pytest.raises(ConfigError, match="one mask per image"):
        train_model([image_path], [], out, TINY, progress=False)
    small_mask = make_raster(np.zeros((1, 64, 64), np.uint8), name="small_mask.tif")
    with pytest.raises(InputError, match="does not match"):
        train_model([image_path], [small_mask], out, TINY, progress=False)
    with pytest.raises(InputError, match="too small"):
        train_model([image_path], [mask_path], out,
                    TrainConfig(**{**TINY.__dict__, "patch": 80}), progress=False)
    assert not out.exists()


def test_mask_without_foreground_still_gives_a_checkpoint_or_an_error(scene, make_raster,
                                                                      tmp_path):
    image_path, _, _, _ = scene
    empty_mask = make_raster(np.zeros((1, 128, 128), np.uint8), name="empty_mask.tif")
    out = tmp_path / "m.safetensors"
    try:
        train_model([image_path], [empty_mask], out, TINY, progress=False)
    except GeoUNetError:
        return  # refusing such labels with a clear error is fine too
    assert out.exists(), "train_model returned normally but wrote no checkpoint"
