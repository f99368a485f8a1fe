"""Scoring the model on windows of scenes, after every epoch and for hard-pixel mining.

Scores are those of :mod:`geounet.metrics`: pixel IoU, precision, recall and F1 of the
foreground and the tolerant F1 (a pixel counts as correct within ``tolerance`` pixels),
with the counts pooled over all validation windows; pixels that are nodata in the image or
unlabelled in the target count nowhere. An undefined score (no foreground predicted or
labelled) is 0, so that it never wins the ``monitor`` comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from rasterio.windows import Window

from geounet.io import normalize
from geounet.labels import IGNORE
from geounet.metrics import Counts, count
from geounet.training.config import TrainConfig
from geounet.training.data import Scene

Stats = Sequence[float]   # per-band mean or std, in the order of the scene's bands


def scored_window(model: torch.nn.Module, scene: Scene, window: Window, mean: Stats,
                  std: Stats, device: torch.device
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground probability, target and labelled-and-valid pixels of one window."""
    data, valid = scene.read(window)
    x = torch.from_numpy(normalize(data, valid, mean, std))[None].to(device)
    prob = torch.sigmoid(model(x)[0, 0].float()).cpu().numpy()
    rows, cols = window.toslices()
    target = scene.target[rows, cols]
    return prob, target, valid & (target != IGNORE)


def validate(model: torch.nn.Module, windows: list[tuple[Scene, Window]], mean: Stats,
             std: Stats, config: TrainConfig, device: torch.device) -> dict[str, float]:
    """Pixel IoU, precision, recall, F1 and tolerant F1 of the foreground over ``windows``."""
    model.eval()
    total = Counts()
    with torch.inference_mode():
        for scene, window in windows:
            prob, target, keep = scored_window(model, scene, window, mean, std, device)
            total += count(prob > config.threshold, target == 1, config.tolerance, keep)
    pixel, tolerant = total.pixel(), total.tolerant()
    scores = {"iou": pixel.iou, "precision": pixel.precision, "recall": pixel.recall,
              "f1": pixel.f1, "tolerant_f1": tolerant.f1}
    return {k: 0.0 if math.isnan(v) else v for k, v in scores.items()}
