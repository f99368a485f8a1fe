"""Evaluating a predicted mask raster against a label raster on the same grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from geounet.errors import InputError
from geounet.io import open_raster
from geounet.metrics import pixel_scores, tolerant_scores


def read_binary_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Foreground (value > 0 and not nodata) and valid pixels of band 1 of a mask raster."""
    open_raster(path)
    with rasterio.open(path) as src:
        values = src.read(1)
        valid = src.read_masks(1) > 0
    return (values > 0) & valid, valid


def evaluate_masks(prediction: str | Path, truth: str | Path, tolerance: float = 2.0
                   ) -> dict[str, dict[str, float]]:
    """Pixel and tolerant scores of the foreground; nodata in either raster is ignored."""
    pred, pred_valid = read_binary_mask(prediction)
    true, true_valid = read_binary_mask(truth)
    if pred.shape != true.shape:
        raise InputError(f"{prediction} is {pred.shape[1]}x{pred.shape[0]} px but {truth} is "
                         f"{true.shape[1]}x{true.shape[0]}; both must be on the same grid")
    valid = pred_valid & true_valid
    return {
        "pixel": pixel_scores(pred, true, valid).to_dict(),
        "tolerant": tolerant_scores(pred, true, tolerance, valid).to_dict(),
    }
