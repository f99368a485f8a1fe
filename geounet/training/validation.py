"""Scoring the model on windows of scenes, after every epoch and for hard-pixel mining.

Scores are those of :mod:`geounet.metrics`: pixel IoU, precision, recall and F1 of the
foreground and the tolerant F1 (a pixel counts as correct within ``tolerance`` pixels),
with the counts pooled over all validation windows; pixels that are nodata in the image or
unlabelled in the target count nowhere. An undefined score (no foreground predicted or
labelled) is 0, so that it never wins the ``monitor`` comparison.

A softmax model's pixels take the class of highest probability; each foreground class is
scored as above (``iou/NAME``, ``f1/NAME``, ...), and ``iou``, ``f1``, ``precision``,
``recall`` and ``tolerant_f1`` are their means over the foreground classes (``miou`` is
``iou``: the mean IoU), over the classes labelled or predicted in the validation data.
Pixels of an ``unlabelled`` class are not scored.
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
    """Probabilities, target and labelled-and-valid pixels of one window.

    Binary model: the foreground probability ``(rows, cols)``; softmax model: one
    probability per class ``(classes, rows, cols)``.
    """
    data, valid = scene.read(window)
    x = torch.from_numpy(normalize(data, valid, mean, std))[None].to(device)
    logits = model(x)[0].float()
    prob = (torch.sigmoid(logits[0]) if logits.shape[0] == 1
            else torch.softmax(logits, dim=0)).cpu().numpy()
    rows, cols = window.toslices()
    target = scene.target[rows, cols]
    return prob, target, valid & (target != IGNORE)


def validate(model: torch.nn.Module, windows: list[tuple[Scene, Window]], mean: Stats,
             std: Stats, config: TrainConfig, device: torch.device) -> dict[str, float]:
    """Pixel IoU, precision, recall, F1 and tolerant F1 of the foreground over ``windows``."""
    model.eval()
    n = len(config.class_names)
    totals = [Counts() for _ in range(n)]
    with torch.inference_mode():
        for scene, window in windows:
            prob, target, keep = scored_window(model, scene, window, mean, std, device)
            if config.classes == 1:
                totals[1] += count(prob > config.threshold, target == 1, config.tolerance,
                                   keep)
                continue
            pred = prob.argmax(axis=0)
            for k in range(1, n):
                if k != config.unlabelled:
                    totals[k] += count(pred == k, target == k, config.tolerance, keep)
    scored = {name: totals[k] for k, name in enumerate(config.class_names)
              if k and k != config.unlabelled}
    per_class = {name: _scores(counts) for name, counts in scored.items()}
    if config.classes == 1:
        scores = next(iter(per_class.values()))
        return {**scores, "miou": scores["iou"]}
    # Means over the classes that were labelled or predicted (the others have no score).
    seen = [s for name, s in per_class.items() if not math.isnan(scored[name].pixel().iou)]
    means = {key: float(np.mean([s[key] for s in seen])) if seen else 0.0
             for key in ("iou", "precision", "recall", "f1", "tolerant_f1")}
    return {**means, "miou": means["iou"],
            **{f"{key}/{name}": s[key] for name, s in per_class.items()
               for key in ("iou", "f1")}}


def _scores(total: Counts) -> dict[str, float]:
    """Pixel and tolerant scores of pooled counts, undefined ones as 0."""
    pixel, tolerant = total.pixel(), total.tolerant()
    scores = {"iou": pixel.iou, "precision": pixel.precision, "recall": pixel.recall,
              "f1": pixel.f1, "tolerant_f1": tolerant.f1}
    return {k: 0.0 if math.isnan(v) else v for k, v in scores.items()}
