"""Blend windows: partition of unity across neighbours, full weight at the raster's border."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geounet.blend import (
    WINDOWS,
    average_profile,
    axis_overlaps,
    hann_profile,
    resolve_window,
    tile_weights,
)
from geounet.errors import ConfigError
from geounet.tiling import axis_starts


@st.composite
def tile_and_overlap(draw):
    length = draw(st.integers(2, 600))
    overlap = draw(st.integers(1, length - 1))
    return length, overlap


@settings(max_examples=200, deadline=None)
@given(tile_and_overlap())
def test_hann_ramps_of_two_neighbours_sum_to_one(args):
    length, overlap = args
    left = hann_profile(length, 0, overlap)    # the tile before, ramping down
    right = hann_profile(length, overlap, 0)   # the tile after, ramping up
    assert left.dtype == right.dtype == np.float32
    assert np.allclose(left[-overlap:] + right[:overlap], 1.0, atol=1e-6)
    # The ramps go the right way: the tile seen from further inside weighs more.
    assert np.all(np.diff(left[-overlap:]) <= 0) and np.all(np.diff(right[:overlap]) >= 0)
    # Border sides (overlap 0) and the interior keep full weight.
    assert np.all(left[: length - overlap] == 1.0)
    assert np.all(right[overlap:] == 1.0)
    # No weight is zero: every pixel of a computed tile counts.
    assert np.all(left > 0) and np.all(right > 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2000), st.integers(2, 300), st.data())
def test_hann_weights_sum_to_one_along_a_real_grid(length, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    starts = axis_starts(length, tile, overlap)
    size = min(tile, length)
    total = np.zeros(length)
    coverage = np.zeros(length, int)
    for start, (before, after) in zip(starts, axis_overlaps(starts, size)):
        total[start : start + size] += hann_profile(size, before, after)
        coverage[start : start + size] += 1
    # Where at most two tiles meet, the weights are a partition of unity.
    assert np.allclose(total[coverage <= 2], 1.0, atol=1e-6)
    # Raster borders have full weight from the single tile that covers them.
    assert total[0] == pytest.approx(1.0) and total[-1] == pytest.approx(1.0)
    assert np.all(total > 0)


def test_axis_overlaps_of_a_grid():
    starts = axis_starts(113, 64, 16)  # (0, 48, 49): the last overlap is larger
    assert axis_overlaps(starts, 64) == [(0, 16), (16, 63), (63, 0)]
    assert axis_overlaps((0,), 40) == [(0, 0)]


def test_border_tiles_keep_full_weight_at_the_border():
    # Corner tile of a grid: no neighbour above or to the left.
    weights = tile_weights(hann_profile, 64, 64, (0, 16), (0, 16))
    assert weights.shape == (64, 64)
    assert np.all(weights[:48, :48] == 1.0)
    assert weights[0, 0] == 1.0 and weights[63, 0] < 1.0 and weights[0, 63] < 1.0
    # A lone tile (raster smaller than a tile) has weight 1 everywhere.
    assert np.all(tile_weights(hann_profile, 21, 37, (0, 0), (0, 0)) == 1.0)
    # Weights are shared between tiles: they must not be writable.
    with pytest.raises(ValueError):
        weights[0, 0] = 5.0


def test_average_is_flat():
    assert np.all(average_profile(50, 10, 20) == 1.0)
    assert set(WINDOWS) == {"hann", "average"}


def test_unknown_window_lists_the_choices():
    with pytest.raises(ConfigError, match="gaussian") as info:
        resolve_window("gaussian")
    assert "average" in str(info.value) and "hann" in str(info.value)


def test_registry_names_and_callables_resolve():
    assert resolve_window("hann") is hann_profile
    assert resolve_window("average") is average_profile

    def triangle(length, before, after):
        return np.minimum(np.arange(1, length + 1), np.arange(length, 0, -1)).astype("f4")

    assert resolve_window(triangle) is triangle
    weights = tile_weights(triangle, 3, 5, (1, 1), (1, 1))
    assert np.array_equal(weights, np.outer([1, 2, 1], [1, 2, 3, 2, 1]))
