"""Tile grid and blending invariants (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geounet.blend import axis_overlaps, hann_profile, resolve_window
from geounet.errors import ConfigError
from geounet.tiling import TileGrid, axis_starts


@given(length=st.integers(1, 5000), tile=st.integers(8, 700), data=st.data())
def test_tiles_cover_the_axis_inside_the_raster(length, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    starts = axis_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(s >= 0 and s + size <= length for s in starts)
    assert all(b > a and a + size - b >= overlap for a, b in zip(starts, starts[1:]))
    if length > tile:
        assert len(starts) == -(-(length - overlap) // (tile - overlap))


@settings(max_examples=60)
@given(h=st.integers(1, 900), w=st.integers(1, 900), tile=st.integers(16, 300),
       per_block=st.integers(1, 4), data=st.data())
def test_block_outputs_partition_the_raster(h, w, tile, per_block, data):
    overlap = data.draw(st.integers(0, tile // 2))
    grid = TileGrid(h, w, tile, overlap)
    cover = np.zeros((h, w), np.int32)
    for block in grid.blocks(per_block):
        o, b = block.output, block.window
        cover[o.row_off : o.row_off + o.height, o.col_off : o.col_off + o.width] += 1
        assert b.row_off <= o.row_off and o.row_off + o.height <= b.row_off + b.height
        assert b.col_off <= o.col_off and o.col_off + o.width <= b.col_off + b.width
        rows = [t.window.row_off for t in block.tiles]
        cols = [t.window.col_off for t in block.tiles]
        assert (min(rows), min(cols)) == (b.row_off, b.col_off)
        assert max(rows) + grid.tile_height == b.row_off + b.height
    assert (cover == 1).all()


def test_compute_overhead_of_the_default_grid():
    assert TileGrid(2048, 2048, 576, 64).compute_overhead == pytest.approx(1.265625)


@given(tile=st.integers(16, 600), data=st.data())
def test_hann_ramps_of_neighbours_sum_to_one(tile, data):
    overlap = data.draw(st.integers(1, tile // 2))
    left = hann_profile(tile, 0, overlap)
    right = hann_profile(tile, overlap, 0)
    assert np.allclose(left[tile - overlap :] + right[:overlap], 1.0, atol=1e-6)
    assert left[0] == 1.0 and right[-1] == 1.0   # raster borders keep full weight


def test_axis_overlaps_and_window_registry():
    assert axis_overlaps((0, 512, 1024, 1472), 576) == [(0, 64), (64, 64), (64, 128), (128, 0)]
    with pytest.raises(ConfigError, match="average"):
        resolve_window("gaussian")
    assert resolve_window(hann_profile) is hann_profile
