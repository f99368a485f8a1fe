"""Blending overlapping tile predictions without seams.

A U-Net sees less context near a tile's edge, so its predictions there are worse. Each tile's
prediction is multiplied by a 2-D weight window before being summed into an accumulator
together with the weights; the blended value is ``sum(w * p) / sum(w)``. Windows are separable:
a 1-D profile per axis, built from the overlap the tile actually has with its neighbour on
each side. A side with no neighbour (the raster's border) keeps full weight, otherwise border
pixels would get almost no weight at all.

Window profiles form a registry of functions with one signature,
``profile(length, overlap_before, overlap_after) -> float32 array of length``:

- ``hann``: raised-cosine ramps across each overlap, flat 1 elsewhere. Two neighbours' ramps sum
  to exactly 1 across their overlap, so each pixel is a smooth mix weighted towards the tile
  that sees it from further inside.
- ``average``: flat 1 everywhere, i.e. plain averaging of overlapping predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from geounet.errors import ConfigError

WindowProfile = Callable[[int, int, int], np.ndarray]


def hann_profile(length: int, overlap_before: int, overlap_after: int) -> np.ndarray:
    """Flat window with sin^2 ramps over the overlaps (partition of unity across neighbours)."""
    weights = np.ones(length, dtype=np.float64)
    if overlap_before:
        d = np.arange(overlap_before)
        weights[:overlap_before] = np.sin(0.5 * np.pi * (d + 0.5) / overlap_before) ** 2
    if overlap_after:
        d = np.arange(overlap_after)
        weights[length - overlap_after :] *= np.cos(0.5 * np.pi * (d + 0.5) / overlap_after) ** 2
    return weights.astype(np.float32)


def average_profile(length: int, overlap_before: int, overlap_after: int) -> np.ndarray:
    """Constant weights: overlapping predictions are averaged."""
    return np.ones(length, dtype=np.float32)


WINDOWS: dict[str, WindowProfile] = {"hann": hann_profile, "average": average_profile}


def resolve_window(window: str | WindowProfile) -> WindowProfile:
    """Return the profile function for a registry name, or the callable itself."""
    if callable(window):
        return window
    try:
        return WINDOWS[window]
    except KeyError:
        raise ConfigError(
            f"unknown blend window {window!r}; choose one of {sorted(WINDOWS)}"
        ) from None


def axis_overlaps(starts: tuple[int, ...], tile: int) -> list[tuple[int, int]]:
    """(overlap with the previous tile, overlap with the next tile) for each tile of an axis."""
    out = []
    for i, start in enumerate(starts):
        before = starts[i - 1] + tile - start if i > 0 else 0
        after = start + tile - starts[i + 1] if i + 1 < len(starts) else 0
        out.append((max(before, 0), max(after, 0)))
    return out


@lru_cache(maxsize=64)
def _window_2d(
    profile: WindowProfile, height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray:
    wy = profile(height, *rows)
    wx = profile(width, *cols)
    weights = np.outer(wy, wx).astype(np.float32)
    weights.setflags(write=False)
    return weights


def tile_weights(
    profile: WindowProfile,
    height: int,
    width: int,
    row_overlaps: tuple[int, int],
    col_overlaps: tuple[int, int],
) -> np.ndarray:
    """2-D weights (height, width) of one tile given its overlaps on each side (read-only)."""
    return _window_2d(profile, height, width, row_overlaps, col_overlaps)
