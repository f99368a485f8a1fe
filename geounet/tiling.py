"""One global tile grid, and blocks of tiles as the unit of memory.

Tiles overlap so that every pixel near a tile edge is also seen from inside a neighbouring
tile; blending (``geounet.blend``) then favours the interior view and no seam shows. Along an
axis of ``length`` pixels with tile edge ``t`` and overlap ``o`` (stride ``s = t - o``), the grid
has ``n = ceil((length - o) / s)`` tiles starting at ``0, s, 2s, ...`` with the last one moved
back to end exactly on the raster's edge (``length - t``), so no tile reads outside the raster
and the last overlap may be larger than ``o``. An axis shorter than a tile has one tile the size
of the axis. Tile positions depend only on (length, tile, overlap): any split of the work into
blocks, processes or machines computes the same tiles and gives the same result.

A block is a rectangle of ``block_tiles x block_tiles`` tiles. Its ``window`` is the union of its
tiles (what it must accumulate); its ``output`` is the part that is final once the block and all
blocks before it in row-major order are done. The outputs partition the raster, so finished
regions can be written as soon as their block completes and then forgotten.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from rasterio.windows import Window

from geounet.errors import ConfigError


@dataclass(frozen=True)
class Tile:
    """One model input: grid position and the pixel window it reads (row/col offsets, size)."""

    row: int
    col: int
    window: Window


@dataclass(frozen=True)
class Block:
    """A group of tiles; ``window`` is their union, ``output`` the region it completes."""

    row: int
    col: int
    tiles: tuple[Tile, ...]
    window: Window
    output: Window


def axis_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile start offsets along one axis (pixels); see the module docstring for the rule."""
    if length < 1:
        raise ConfigError(f"raster axis length must be positive, got {length}")
    if tile < 1 or not 0 <= overlap < tile:
        raise ConfigError(
            f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}"
        )
    if length <= tile:
        return (0,)
    stride = tile - overlap
    count = math.ceil((length - overlap) / stride)
    return tuple(i * stride for i in range(count - 1)) + (length - tile,)


@dataclass(frozen=True)
class TileGrid:
    """The global tile grid of a ``height x width`` raster (pixels)."""

    height: int
    width: int
    tile_size: int
    overlap: int

    @property
    def tile_height(self) -> int:
        return min(self.tile_size, self.height)

    @property
    def tile_width(self) -> int:
        return min(self.tile_size, self.width)

    @property
    def row_starts(self) -> tuple[int, ...]:
        return axis_starts(self.height, self.tile_size, self.overlap)

    @property
    def col_starts(self) -> tuple[int, ...]:
        return axis_starts(self.width, self.tile_size, self.overlap)

    @property
    def tile_count(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    @property
    def compute_overhead(self) -> float:
        """Pixels run through the model divided by raster pixels (1.0 = no overlap cost)."""
        covered = self.tile_count * self.tile_height * self.tile_width
        return covered / (self.height * self.width)

    def tile(self, row: int, col: int) -> Tile:
        window = Window(
            self.col_starts[col], self.row_starts[row], self.tile_width, self.tile_height
        )
        return Tile(row, col, window)

    def blocks(self, block_tiles: int) -> Iterator[Block]:
        """Blocks of ``block_tiles x block_tiles`` tiles in row-major order."""
        if block_tiles < 1:
            raise ConfigError(f"block_tiles must be >= 1, got {block_tiles}")
        rows = _axis_blocks(self.row_starts, self.tile_height, self.height, block_tiles)
        cols = _axis_blocks(self.col_starts, self.tile_width, self.width, block_tiles)
        for bi, (tile_rows, (y0, y1), (oy0, oy1)) in enumerate(rows):
            for bj, (tile_cols, (x0, x1), (ox0, ox1)) in enumerate(cols):
                tiles = tuple(self.tile(r, c) for r in tile_rows for c in tile_cols)
                yield Block(
                    bi, bj, tiles, Window(x0, y0, x1 - x0, y1 - y0),
                    Window(ox0, oy0, ox1 - ox0, oy1 - oy0),
                )


def _axis_blocks(
    starts: tuple[int, ...], tile: int, length: int, per_block: int
) -> list[tuple[range, tuple[int, int], tuple[int, int]]]:
    """Per block along one axis: tile indexes, union extent, and the extent it completes.

    A pixel is complete once the last tile covering it is done. Tiles covering pixels at or
    after the first start of the next block belong to that block or later, so a block
    completes exactly [its first tile's start, the next block's first tile's start).
    """
    out = []
    firsts = list(range(0, len(starts), per_block))
    for k, first in enumerate(firsts):
        last = min(first + per_block, len(starts)) - 1
        end = starts[firsts[k + 1]] if k + 1 < len(firsts) else length
        out.append(
            (range(first, last + 1), (starts[first], starts[last] + tile),
             (0 if k == 0 else starts[first], end))
        )
    return out
