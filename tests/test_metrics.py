"""Pixel and tolerant scores on hand-made masks, and evaluation of mask rasters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from geounet.errors import InputError
from geounet.evaluate import evaluate_masks, read_binary_mask
from geounet.metrics import pixel_scores, tolerant_scores, within


def _masks():
    """TP = 2, FP = 1, FN = 3 on a 4x4 grid (TN = 10)."""
    truth = np.array([[1, 1, 1, 0],
                      [1, 1, 0, 0],
                      [0, 0, 0, 0],
                      [0, 0, 0, 0]], bool)
    pred = np.array([[1, 0, 0, 0],
                     [0, 1, 0, 0],
                     [0, 0, 0, 0],
                     [0, 0, 0, 1]], bool)
    return pred, truth


def test_pixel_scores_on_known_masks():
    pred, truth = _masks()
    s = pixel_scores(pred, truth)
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == pytest.approx(2 / 5)
    assert s.f1 == pytest.approx(0.5)  # 2PR / (P + R) = 2 * 4/15 / (16/15)
    assert s.iou == pytest.approx(2 / 6)
    assert s.to_dict() == {"precision": s.precision, "recall": s.recall, "f1": s.f1,
                           "iou": s.iou}


def test_pixel_scores_accept_integer_masks_and_ignore_invalid_pixels():
    pred, truth = _masks()
    valid = np.ones((4, 4), bool)
    valid[3, 3] = False  # drops the false positive
    valid[0, 2] = False  # drops one false negative
    s = pixel_scores(pred.astype(np.uint8) * 7, truth.astype(np.uint8), valid)
    assert (s.precision, s.recall, s.iou) == pytest.approx((1.0, 2 / 4, 2 / 4))
    assert s.f1 == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_perfect_and_opposite_predictions():
    _, truth = _masks()
    perfect = pixel_scores(truth, truth)
    assert (perfect.precision, perfect.recall, perfect.f1, perfect.iou) == (1, 1, 1, 1)
    opposite = pixel_scores(~truth, truth)
    assert (opposite.precision, opposite.recall, opposite.f1, opposite.iou) == (0, 0, 0, 0)


def test_empty_prediction_has_zero_recall():
    _, truth = _masks()
    empty = np.zeros_like(truth)
    for s in (pixel_scores(empty, truth), tolerant_scores(empty, truth, 2)):
        assert s.recall == 0.0
        assert s.f1 == 0.0
        assert s.iou == 0.0
        assert math.isnan(s.precision)  # no predicted pixel: precision is undefined


def test_nothing_to_find_and_nothing_found_is_undefined():
    nothing = np.zeros((5, 5), bool)
    s = pixel_scores(nothing, nothing)
    assert all(math.isnan(v) for v in (s.precision, s.recall, s.f1, s.iou))


def test_shapes_must_match():
    with pytest.raises(ValueError, match="shape"):
        pixel_scores(np.zeros((3, 4), bool), np.zeros((4, 3), bool))


def _line(col: int, shape=(40, 40)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[5:35, col] = True
    return mask


def test_tolerant_scores_forgive_a_two_pixel_shift_with_tolerance_two():
    truth, pred = _line(20), _line(22)
    exact = tolerant_scores(pred, truth, tolerance=2)
    assert (exact.precision, exact.recall, exact.f1) == (1.0, 1.0, 1.0)
    assert exact.iou == 0.0  # IoU stays the exact pixel overlap
    strict = tolerant_scores(pred, truth, tolerance=1)
    assert strict.f1 < 1.0
    assert (strict.precision, strict.recall, strict.f1) == (0.0, 0.0, 0.0)
    assert pixel_scores(pred, truth).f1 == 0.0


def test_tolerant_scores_partial_shift_and_zero_tolerance():
    truth = _line(20)
    pred = _line(20) | _line(24)  # half of the prediction is 4 px away
    s = tolerant_scores(pred, truth, tolerance=2)
    assert (s.precision, s.recall) == (0.5, 1.0)
    assert s.f1 == pytest.approx(2 / 3)
    zero = tolerant_scores(pred, truth, tolerance=0)
    assert zero.to_dict() == pytest.approx(pixel_scores(pred, truth).to_dict())


def test_tolerance_is_euclidean():
    truth = np.zeros((20, 20), bool)
    truth[5, 5] = True
    pred = np.zeros((20, 20), bool)
    pred[7, 7] = True  # 2 px down and 2 px right: 2.83 px away
    assert tolerant_scores(pred, truth, tolerance=2).f1 == 0.0
    assert tolerant_scores(pred, truth, tolerance=2.9).f1 == 1.0


@pytest.mark.parametrize("tolerance", [0, 0.5, 1, 1.5, 2, math.sqrt(5), 3, 4.9, 12, 13, 40])
def test_within_is_the_euclidean_distance_rule(tolerance):
    """The same pixels as "distance to the nearest True pixel <= tolerance", up to the image
    edges, for sparse lines, dense noise and masks thinner than the disk."""
    rng = np.random.default_rng(7)
    masks = [rng.random((97, 131)) < p for p in (0.002, 0.05, 0.4)]
    masks += [rng.random((3, 50)) < 0.1, rng.random((50, 2)) < 0.1, np.eye(9, dtype=bool)]
    for mask in masks:
        expected = ndimage.distance_transform_edt(~mask) <= tolerance
        assert np.array_equal(within(mask, tolerance), expected)
    assert not within(np.zeros((5, 5), bool), 2).any()
    assert not within(np.ones((5, 5), bool), -1).any()


def test_evaluate_masks_reads_rasters_and_ignores_nodata(make_raster):
    truth = np.zeros((1, 30, 40), np.uint8)
    truth[0, :, 10] = 1
    truth[0, 0:10, 25:35] = 255   # unlabelled in the truth
    pred = np.zeros((1, 30, 40), np.uint8)
    pred[0, :, 12] = 1            # 2 px off the true line: tolerated
    pred[0, 0:10, 30] = 1         # wrong, but where the truth is nodata: ignored
    pred[0, 20:30, 0:5] = 255     # nodata in the prediction
    truth_path = make_raster(truth, name="truth.tif", nodata=255)
    pred_path = make_raster(pred, name="pred.tif", nodata=255)

    foreground, valid = read_binary_mask(pred_path)
    assert valid.sum() == 30 * 40 - 10 * 5
    assert foreground.sum() == 30 + 10  # nodata (255) is not foreground

    report = evaluate_masks(pred_path, truth_path, tolerance=2)
    assert set(report) == {"pixel", "tolerant"}
    assert report["tolerant"]["precision"] == 1.0
    assert report["tolerant"]["recall"] == 1.0
    assert report["pixel"]["f1"] == 0.0 and report["pixel"]["iou"] == 0.0
    shifted = evaluate_masks(pred_path, truth_path, tolerance=1)
    assert shifted["tolerant"]["f1"] == 0.0


def test_evaluate_masks_refuses_different_grids(make_raster):
    a = make_raster(np.zeros((1, 30, 40), np.uint8), name="a.tif")
    b = make_raster(np.zeros((1, 40, 30), np.uint8), name="b.tif")
    with pytest.raises(InputError, match="40x30 px.*30x40.*same grid"):
        evaluate_masks(a, b)
