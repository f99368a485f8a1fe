"""Metrics on hand-made masks, and a tiny, deterministic training run."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from safetensors.torch import load_file

from geounet.checkpoint import read_metadata
from geounet.metrics import pixel_scores, tolerant_scores
from geounet.predict import PredictConfig, predict_raster
from geounet.train import TrainConfig, train_model


def test_pixel_scores_on_known_masks():
    truth = np.zeros((10, 10), bool)
    truth[2:6, 2:6] = True                      # 16 px
    pred = np.zeros_like(truth)
    pred[4:8, 2:6] = True                       # 16 px, 8 overlap
    s = pixel_scores(pred, truth)
    assert (s.precision, s.recall, s.iou) == (0.5, 0.5, 8 / 24)
    assert s.f1 == pytest.approx(0.5)


def test_tolerant_scores_forgive_small_shifts_only():
    truth = np.zeros((40, 40), bool)
    truth[20, 5:35] = True                      # a one-pixel-wide crack
    shifted = np.roll(truth, 2, axis=0)
    assert tolerant_scores(shifted, truth, tolerance=2).f1 == 1.0
    assert tolerant_scores(shifted, truth, tolerance=1).f1 == 0.0
    assert pixel_scores(shifted, truth).iou == 0.0
    empty = tolerant_scores(np.zeros_like(truth), truth)
    assert empty.recall == 0.0 and empty.f1 == 0.0


def _scene(make_raster):
    rng = np.random.default_rng(0)
    image = rng.integers(60, 90, (3, 128, 128), dtype=np.uint8)
    mask = np.zeros((1, 128, 128), np.uint8)
    mask[:, :, 40:52] = 1
    mask[:, 70:80, :] = 1
    image[:, mask[0] == 1] = 200
    return make_raster(image, name="img.tif"), make_raster(mask, name="mask.tif")


def test_tiny_training_is_deterministic_and_usable(make_raster, tmp_path):
    image, mask = _scene(make_raster)
    config = TrainConfig(class_names=("background", "stripe"), width=4, depth=2, patch=32,
                         batch_size=2, steps=20, val_every=10, seed=3, val_fraction=0.3,
                         tile_size=64, overlap=16)
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path in paths:
        best = train_model([image], [mask], path, config, progress=False)
        assert 0 <= best["iou"] <= 1
    a, b = (load_file(p) for p in paths)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    meta = read_metadata(paths[0])
    assert meta.class_names == ("background", "stripe") and meta.bands == (1, 2, 3)
    with rasterio.open(image) as src:
        pixels = src.read().reshape(3, -1).astype(float)
    assert meta.mean == pytest.approx(tuple(pixels.mean(axis=1)), rel=1e-5)
    assert meta.std == pytest.approx(tuple(pixels.std(axis=1)), rel=1e-4)
    out = tmp_path / "pred.tif"
    predict_raster(image, paths[0], out, None, PredictConfig(progress=False))
    assert out.exists()
