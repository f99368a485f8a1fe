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


def _pixels(mask: np.ndarray) -> int:
    """Number of True pixels, as an int (numpy returns its own integer type)."""
    return int(np.count_nonzero(mask))


def _f1(precision: float, recall: float) -> float:
    if np.isnan(precision) or np.isnan(recall) or precision + recall == 0:
        return 0.0 if precision == 0 or recall == 0 else float("nan")
    return 2 * precision * recall / (precision + recall)


def pixel_scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> Scores:
    """Exact pixel precision/recall/F1/IoU of boolean ``pred`` against ``truth``."""
    pred, truth = _check(pred, truth, valid)
    tp = _pixels(pred & truth)
    fp = _pixels(pred & ~truth)
    fn = _pixels(~pred & truth)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return Scores(precision, recall, _f1(precision, recall), _ratio(tp, tp + fp + fn))


def tolerant_scores(pred: np.ndarray, truth: np.ndarray, tolerance: float = 2.0,
                    valid: np.ndarray | None = None) -> Scores:
    """Precision/recall/F1 with a localisation tolerance in pixels; IoU is the exact one."""
    pred, truth = _check(pred, truth, valid)
    near_truth = within(truth, tolerance)
    near_pred = within(pred, tolerance)
    n_pred, n_true = _pixels(pred), _pixels(truth)
    precision = _ratio(_pixels(pred & near_truth), n_pred)
    recall = _ratio(_pixels(truth & near_pred), n_true)
    return Scores(precision, recall, _f1(precision, recall), pixel_scores(pred, truth).iou)


# Up to this tolerance (px) the disk is dilated row by row; beyond it one distance transform,
# whose cost does not grow with the tolerance, is the faster.
ROWWISE_TOLERANCE = 12


def within(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels within ``tolerance`` (Euclidean, pixels) of any True pixel of ``mask``.

    A dilation by the disk of that radius, taken as the union of its rows: each row of the
    disk is a 1-D maximum filter of ``mask`` shifted by the row's offset (for the 2 px default,
    about 30x faster than a distance transform of a 4096^2 mask; the same pixels).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(mask)
    if not 0 <= tolerance <= ROWWISE_TOLERANCE or mask.ndim != 2:
        return ndimage.distance_transform_edt(~mask) <= tolerance
    squared, reach = tolerance * tolerance, int(np.floor(max(tolerance, 0.0)))
    near = np.zeros_like(mask)
    height = mask.shape[0]
    for dy in range(-min(reach, height - 1), min(reach, height - 1) + 1):
        half = max(dx for dx in range(reach + 1) if dx * dx + dy * dy <= squared)
        row = mask if half == 0 else ndimage.maximum_filter1d(
            mask.view(np.uint8), 2 * half + 1, axis=1, mode="constant").view(bool)
        if dy >= 0:
            near[dy:] |= row[:height - dy]
        else:
            near[:dy] |= row[-dy:]
    return near


def _check(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None,
           ) -> tuple[np.ndarray, np.ndarray]:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth {truth.shape}")
    pred, truth = pred.astype(bool), truth.astype(bool)
    if valid is not None:
        pred, truth = pred & valid, truth & valid
    return pred, truth


@dataclass
class Counts:
    """Pixel counts that pool over images and windows before scores are taken.

    ``tp``, ``fp``, ``fn``: exact pixel counts. ``pred_near``/``pred``: predicted pixels
    within the tolerance of the truth / all predicted pixels; ``truth_near``/``truth``: true
    pixels within the tolerance of a prediction / all true pixels.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    pred_near: int = 0
    pred: int = 0
    truth_near: int = 0
    truth: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def pixel(self) -> Scores:
        precision, recall = _ratio(self.tp, self.tp + self.fp), _ratio(self.tp, self.tp + self.fn)
        return Scores(precision, recall, _f1(precision, recall),
                      _ratio(self.tp, self.tp + self.fp + self.fn))

    def tolerant(self) -> Scores:
        precision = _ratio(self.pred_near, self.pred)
        recall = _ratio(self.truth_near, self.truth)
        return Scores(precision, recall, _f1(precision, recall), self.pixel().iou)


def count(pred: np.ndarray, truth: np.ndarray, tolerance: float = 2.0,
          valid: np.ndarray | None = None, near_truth: np.ndarray | None = None) -> Counts:
    """Exact and tolerant :class:`Counts` of boolean ``pred`` against ``truth``.

    ``near_truth`` (pixels within ``tolerance`` of the truth) may be passed when it is
    reused for many predictions of the same truth (threshold sweeps).
    """
    pred, truth = _check(pred, truth, valid)
    if near_truth is None:
        near_truth = within(truth, tolerance)
    return Counts(
        tp=_pixels(pred & truth), fp=_pixels(pred & ~truth),
        fn=_pixels(~pred & truth), pred_near=_pixels(pred & near_truth),
        pred=_pixels(pred), truth_near=_pixels(truth & within(pred, tolerance)),
        truth=_pixels(truth))


def threshold_sweep(prob: np.ndarray, truth: np.ndarray, thresholds: np.ndarray,
                    tolerance: float = 2.0, valid: np.ndarray | None = None) -> list[Counts]:
    """:class:`Counts` of ``prob > t`` against ``truth`` for every threshold ``t``."""
    truth = truth.astype(bool) & (True if valid is None else valid)
    near_truth = within(truth, tolerance)
    return [count(prob > t, truth, tolerance, valid, near_truth) for t in thresholds]


def ods_ois(per_image: list[list[Counts]], thresholds: np.ndarray) -> dict[str, float]:
    """ODS and OIS tolerant F1 from per-image threshold sweeps (BSDS / crack literature).

    ODS: the best F1 over thresholds of the counts pooled over the data set (one threshold
    for all images). OIS: the mean over images of each image's best F1 (its own threshold);
    images with no true and no predicted pixel at any threshold are left out.
    """
    pooled = [Counts() for _ in thresholds]
    best_per_image = []
    for sweep in per_image:
        f1s = []
        for total, counts in zip(pooled, sweep):
            total += counts
            f1s.append(counts.tolerant().f1)
        defined = [f for f in f1s if not np.isnan(f)]
        if defined:
            best_per_image.append(max(defined))
    ods_f1 = [c.tolerant().f1 for c in pooled]
    best = int(np.nanargmax(ods_f1)) if not np.all(np.isnan(ods_f1)) else 0
    return {"ods_f1": float(ods_f1[best]), "ods_threshold": float(thresholds[best]),
            "ods_iou": pooled[best].pixel().iou,
            "ois_f1": float(np.mean(best_per_image)) if best_per_image else float("nan")}
