"""Segmentation metrics on boolean masks, as the field reports them.

Pixel metrics count true/false positives over valid pixels: IoU = TP / (TP + FP + FN),
precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R).

Tolerant metrics (the crack-detection protocol, e.g. CrackForest): a predicted foreground
pixel is correct if a true foreground pixel lies within ``tolerance`` pixels (Euclidean), and
a true pixel is found if a predicted one lies within ``tolerance``. This forgives the one- or
two-pixel misplacement of thin-structure labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Scores:
    """Precision, recall, F1 and IoU of one class (0..1; NaN where undefined)."""

    precision: float
    recall: float
    f1: float
    iou: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def _f1(precision: float, recall: float) -> float:
    if np.isnan(precision) or np.isnan(recall) or precision + recall == 0:
        return 0.0 if precision == 0 or recall == 0 else float("nan")
    return 2 * precision * recall / (precision + recall)


def pixel_scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> Scores:
    """Exact pixel precision/recall/F1/IoU of boolean ``pred`` against ``truth``."""
    pred, truth = _check(pred, truth, valid)
    tp = np.count_nonzero(pred & truth)
    fp = np.count_nonzero(pred & ~truth)
    fn = np.count_nonzero(~pred & truth)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return Scores(precision, recall, _f1(precision, recall), _ratio(tp, tp + fp + fn))


def tolerant_scores(pred: np.ndarray, truth: np.ndarray, tolerance: float = 2.0,
                    valid: np.ndarray | None = None) -> Scores:
    """Precision/recall/F1 with a localisation tolerance in pixels; IoU is the exact one."""
    pred, truth = _check(pred, truth, valid)
    near_truth = _within(truth, tolerance)
    near_pred = _within(pred, tolerance)
    n_pred, n_true = np.count_nonzero(pred), np.count_nonzero(truth)
    precision = _ratio(np.count_nonzero(pred & near_truth), n_pred)
    recall = _ratio(np.count_nonzero(truth & near_pred), n_true)
    return Scores(precision, recall, _f1(precision, recall), pixel_scores(pred, truth).iou)


def _within(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels within ``tolerance`` (Euclidean, pixels) of any True pixel of ``mask``."""
    if not mask.any():
        return np.zeros_like(mask)
    return ndimage.distance_transform_edt(~mask) <= tolerance


def _check(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None,
           ) -> tuple[np.ndarray, np.ndarray]:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth {truth.shape}")
    pred, truth = pred.astype(bool), truth.astype(bool)
    if valid is not None:
        pred, truth = pred & valid, truth & valid
    return pred, truth
