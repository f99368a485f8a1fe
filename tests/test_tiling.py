"""The global tile grid and its blocks: coverage, bounds, overlaps, exact partition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geounet.errors import ConfigError
from geounet.tiling import TileGrid, axis_starts


@st.composite
def axes(draw, max_length: int = 3000, max_tile: int = 700):
    length = draw(st.integers(1, max_length))
    tile = draw(st.integers(1, max_tile))
    overlap = draw(st.integers(0, tile - 1))
    return length, tile, overlap


@settings(max_examples=300, deadline=None)
@given(axes())
def test_axis_starts_cover_the_axis_inside_the_raster(args):
    length, tile, overlap = args
    starts = axis_starts(length, tile, overlap)
    size = min(tile, length)

    # Count formula: one tile when the axis fits, else ceil((length - overlap) / stride).
    expected = 1 if length <= tile else math.ceil((length - overlap) / (tile - overlap))
    assert len(starts) == expected

    # Every tile lies inside the raster; the first starts at 0 and the last ends on the edge.
    assert starts[0] == 0
    assert all(s >= 0 and s + size <= length for s in starts)
    assert starts[-1] + size == length

    # Starts are on the global grid (multiples of the stride) except the last one.
    assert all(s == i * (tile - overlap) for i, s in enumerate(starts[:-1]))

    # Strictly increasing, with consecutive overlaps of at least ``overlap`` (no gaps).
    for a, b in zip(starts, starts[1:]):
        assert a < b
        assert a + size - b >= overlap

    covered = np.zeros(length, dtype=bool)
    for s in starts:
        covered[s : s + size] = True
    assert covered.all()


@pytest.mark.parametrize("length,tile,overlap,starts", [
    (1, 64, 16, (0,)),
    (64, 64, 16, (0,)),
    (65, 64, 16, (0, 1)),
    (112, 64, 16, (0, 48)),
    (113, 64, 16, (0, 48, 49)),
    (300, 128, 0, (0, 128, 172)),
    (10, 1, 0, tuple(range(10))),
])
def test_axis_starts_known_values(length, tile, overlap, starts):
    assert axis_starts(length, tile, overlap) == starts


@pytest.mark.parametrize("length,tile,overlap", [
    (0, 64, 16), (-5, 64, 16), (100, 0, 0), (100, 64, 64), (100, 64, 80), (100, 64, -1),
])
def test_invalid_axis_arguments_are_refused(length, tile, overlap):
    with pytest.raises(ConfigError):
        axis_starts(length, tile, overlap)


def test_block_tiles_must_be_positive():
    with pytest.raises(ConfigError, match="block_tiles"):
        list(TileGrid(100, 100, 32, 8).blocks(0))


@st.composite
def grids(draw):
    tile = draw(st.integers(8, 96))
    overlap = draw(st.integers(0, tile // 2))
    height = draw(st.integers(1, 300))
    width = draw(st.integers(1, 300))
    block_tiles = draw(st.integers(1, 5))
    return TileGrid(height, width, tile, overlap), block_tiles


def _window_slices(window):
    return (slice(window.row_off, window.row_off + window.height),
            slice(window.col_off, window.col_off + window.width))


@settings(max_examples=200, deadline=None)
@given(grids())
def test_blocks_partition_the_raster_and_hold_every_tile_once(args):
    grid, block_tiles = args
    blocks = list(grid.blocks(block_tiles))
    owner = np.full((grid.height, grid.width), -1)     # block whose output holds a pixel
    outputs = np.zeros((grid.height, grid.width), int)  # how many outputs hold a pixel
    last_cover = np.full((grid.height, grid.width), -1)  # last block with a tile on a pixel
    seen = []

    # Blocks come in row-major order.
    assert [(b.row, b.col) for b in blocks] == sorted((b.row, b.col) for b in blocks)
    for index, block in enumerate(blocks):
        win, out = block.window, block.output
        assert win.width > 0 and win.height > 0 and out.width > 0 and out.height > 0

        # The output lies within the block window, which lies within the raster.
        assert win.row_off <= out.row_off and out.row_off + out.height <= win.row_off + win.height
        assert win.col_off <= out.col_off and out.col_off + out.width <= win.col_off + win.width
        assert win.row_off >= 0 and win.row_off + win.height <= grid.height
        assert win.col_off >= 0 and win.col_off + win.width <= grid.width

        # The window is the union of the block's tiles: their bounding box, fully covered.
        tiles = [t.window for t in block.tiles]
        assert min(t.row_off for t in tiles) == win.row_off
        assert min(t.col_off for t in tiles) == win.col_off
        assert max(t.row_off + t.height for t in tiles) == win.row_off + win.height
        assert max(t.col_off + t.width for t in tiles) == win.col_off + win.width
        inside = np.zeros((win.height, win.width), bool)
        for t in tiles:
            inside[t.row_off - win.row_off : t.row_off - win.row_off + t.height,
                   t.col_off - win.col_off : t.col_off - win.col_off + t.width] = True
            rows, cols = _window_slices(t)
            last_cover[rows, cols] = np.maximum(last_cover[rows, cols], index)
        assert inside.all()

        rows, cols = _window_slices(out)
        outputs[rows, cols] += 1
        owner[rows, cols] = index
        seen.extend((t.row, t.col) for t in block.tiles)

    # Every pixel is in exactly one block output.
    assert (outputs == 1).all()
    # Every grid tile is in exactly one block.
    assert sorted(seen) == [(r, c) for r in range(len(grid.row_starts))
                            for c in range(len(grid.col_starts))]
    assert len(seen) == grid.tile_count
    # A block's output is final when it is done: no later block has a tile on those pixels.
    assert (last_cover == owner).all()


@settings(max_examples=100, deadline=None)
@given(grids())
def test_tiles_have_the_grid_size_and_lie_inside(args):
    grid, _ = args
    assert grid.tile_height == min(grid.tile_size, grid.height)
    assert grid.tile_width == min(grid.tile_size, grid.width)
    for r in range(len(grid.row_starts)):
        for c in (0, len(grid.col_starts) - 1):
            w = grid.tile(r, c).window
            assert (w.height, w.width) == (grid.tile_height, grid.tile_width)
            assert w.row_off >= 0 and w.row_off + w.height <= grid.height
            assert w.col_off >= 0 and w.col_off + w.width <= grid.width
    assert grid.compute_overhead >= 1.0


def test_tile_positions_do_not_depend_on_block_size():
    grid = TileGrid(300, 457, 64, 16)
    per_block = {n: sorted((t.window.row_off, t.window.col_off) for b in grid.blocks(n)
                           for t in b.tiles) for n in (1, 2, 3, 100)}
    assert per_block[1] == per_block[2] == per_block[3] == per_block[100]
    assert len(per_block[1]) == grid.tile_count == 6 * 10


def test_one_block_when_block_tiles_exceeds_the_grid():
    grid = TileGrid(150, 223, 64, 16)
    (block,) = grid.blocks(100)
    assert (block.window.width, block.window.height) == (223, 150)
    assert (block.output.width, block.output.height) == (223, 150)
    assert len(block.tiles) == grid.tile_count


def test_compute_overhead_of_the_default_grid():
    """Tile 576 / overlap 64 on 2048^2: 4 x 4 tiles, (4 * 576 / 2048)^2 = 1.27x compute."""
    grid = TileGrid(2048, 2048, 576, 64)
    assert grid.tile_count == 16
    assert grid.compute_overhead == pytest.approx(1.265625)
