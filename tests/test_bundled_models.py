"""The bundled models run on the bundled scenes and find what the labels say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from geounet.checkpoint import read_metadata
from geounet.metrics import pixel_scores, tolerant_scores
from geounet.predict import PredictConfig, predict_raster

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
CASES = {"roads": ("road", Window(1024, 1024, 1024, 1024)),
         "cracks": ("crack", Window(512, 512, 1024, 1024))}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_metadata_is_complete(kind):
    meta = read_metadata(SAMPLE / "models" / f"{kind}.safetensors")
    assert meta.class_names == ("background", CASES[kind][0])
    assert meta.bands == (1, 2, 3) and meta.arch.in_channels == 3
    assert all(0 < m < 255 for m in meta.mean) and all(s > 1 for s in meta.std)
    assert meta.tile_size > meta.overlap > 0
    assert meta.source["trained_on"].endswith(f"{kind}_image.tif")


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bundled_model_segments_its_scene(kind, tmp_path):
    window = CASES[kind][1]
    crop = tmp_path / "crop.tif"
    with rasterio.open(SAMPLE / f"{kind}_image.tif") as src:
        profile = src.profile | {"width": window.width, "height": window.height,
                                 "transform": src.window_transform(window)}
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=window))
    with rasterio.open(SAMPLE / f"{kind}_mask.tif") as src:
        truth = src.read(1, window=window).astype(bool)
    out = tmp_path / "mask.tif"
    predict_raster(crop, SAMPLE / "models" / f"{kind}.safetensors", out, None,
                   PredictConfig(progress=False, threads=2))
    with rasterio.open(out) as dst, rasterio.open(crop) as src:
        assert dst.crs == src.crs and dst.transform == src.transform
        pred = dst.read(1) == 1
    if kind == "roads":
        assert pixel_scores(pred, truth).iou > 0.85
    else:
        assert tolerant_scores(pred, truth, tolerance=2).f1 > 0.8
    assert np.count_nonzero(pred) > 0
