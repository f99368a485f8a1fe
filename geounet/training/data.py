"""Training data: scenes (an image with its target), the validation hold-out, band statistics.

A :class:`Scene` is one image with its target on the image's grid (``uint8`` class ids,
:data:`~geounet.labels.IGNORE` where unlabelled or nodata). Images up to
:data:`IN_MEMORY_PIXELS` are read once into memory, larger ones window by window; both give
the same pixels, so the same batches.

Validation: with several training pairs, ``val_fraction`` of the images (evenly spaced in
name order) are held out whole; with one pair, the strip of ``val_fraction`` of its rows
richest in foreground is held out (``Scene.held_rows``), and training windows never touch it.
Explicit ``val_images``/``val_labels`` replace both. The test split is never used for any
choice. The model scores scenes in windows of at most :data:`VAL_TILE` pixels a side that
cover either the validation rows (:func:`validation_windows`) or the training rows
(:func:`training_windows`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from geounet.errors import InputError
from geounet.io import read_masked
from geounet.labels import IGNORE, LabelConfig, check_class_ids, image_info, load_target
from geounet.training.config import TrainConfig

IN_MEMORY_PIXELS = 64 * 2**20     # images up to this many pixels are read once, into memory
VAL_TILE = 1024                   # windows scored by the model are at most this many px a side


@dataclass
class Scene:
    """One image with its target; ``data`` is set when the image is held in memory."""

    path: Path
    src: rasterio.DatasetReader
    bands: tuple[int, ...]
    target: np.ndarray                 # uint8 (rows, cols): class id, IGNORE where unlabelled
    data: np.ndarray | None = None     # float32 (bands, rows, cols)
    valid: np.ndarray | None = None    # bool (rows, cols)
    held_rows: tuple[int, int] = (0, 0)   # [first, end) rows kept for validation
    positives: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    # (row, col) pixels of each foreground class (binary: one array, the positives)
    class_pixels: list[np.ndarray] = field(default_factory=list)
    hard: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.target.shape
        return rows, cols

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Float32 pixels ``(bands, rows, cols)`` of ``window`` and their validity."""
        if self.data is None or self.valid is None:
            return read_masked(self.src, self.bands, window)
        rows, cols = window.toslices()
        return self.data[:, rows, cols].copy(), self.valid[rows, cols]

    def clear_of_validation(self, row: int, size: int) -> bool:
        """True if rows ``[row, row + size)`` miss the rows held out for validation."""
        return row + size <= self.held_rows[0] or row >= self.held_rows[1]


def load_data(config: TrainConfig) -> tuple[list[Scene], list[Scene]]:
    """Training and validation scenes of ``config``, checked; the caller closes their files."""
    labels = LabelConfig(config.line_width, config.line_width_units, config.class_field,
                         tuple(config.class_names) if config.class_field else (),
                         config.palette_ids, config.unlabelled_outside)
    pairs = config.pairs()
    val_pairs = config.val_pairs()
    if not val_pairs and len(pairs) > 1:
        held = max(1, round(len(pairs) * config.val_fraction))
        chosen = set(np.linspace(0, len(pairs) - 1, held + 2)[1:-1].round().astype(int))
        ordered = sorted(pairs, key=lambda p: str(p[0]))
        val_pairs = [p for i, p in enumerate(ordered) if i in chosen]
        pairs = [p for i, p in enumerate(ordered) if i not in chosen]
    train = [open_scene(image, label, config, labels) for image, label in pairs]
    val = [open_scene(image, label, config, labels) for image, label in val_pairs]
    if any(len(s.bands) != len(train[0].bands) for s in train + val):
        counts = ", ".join(f"{s.path} has {len(s.bands)}" for s in train + val)
        raise InputError(f"training images have different band counts ({counts}); choose "
                         "the same number of bands for all with --bands")
    if not any(len(s.positives) for s in train):
        raise InputError(f"the labels of {len(train)} training image(s) (first "
                         f"{pairs[0][1]}) mark no foreground pixel: there is nothing to "
                         "learn; check the label files")
    if not val:  # one training image: hold out its strip richest in foreground
        val = [hold_out_strip(train[0], config)]
    for scene in train:
        rows, cols = scene.shape
        if cols < config.patch or max(scene.held_rows[0], rows - scene.held_rows[1]) \
                < config.patch:
            raise InputError(f"{scene.path}: {cols}x{rows} px is too small for patch "
                             f"{config.patch}" + (" with a validation strip"
                                                  if scene.held_rows[1] else ""))
    return train, val


def open_scene(image: Path, label: Path, config: TrainConfig, labels: LabelConfig) -> Scene:
    """The scene of one (image, label) pair; its foreground pixels are ``positives``.

    With two classes (a binary model, or a two-class softmax one: the same data) the target
    is 1 wherever the label has a class id > 0; with more it keeps the class ids, which must
    be below ``len(class_names)``. The ``unlabelled`` value of the config becomes IGNORE.
    """
    info = image_info(image)
    bands = config.bands or tuple(range(1, info.count + 1))
    if max(bands) > info.count:
        raise InputError(f"{image}: has {info.count} band(s); bands {bands} asked for")
    raw = load_target(label, info, labels)
    if config.unlabelled is not None:
        raw[raw == config.unlabelled] = IGNORE
    if len(config.class_names) == 2:   # two classes: any class id > 0 is 1
        target = np.where(raw == IGNORE, IGNORE, raw > 0).astype(np.uint8)
    else:
        check_class_ids(raw, len(config.class_names), label)
        target = raw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(image)
    scene = Scene(image, src, bands, target)
    if info.width * info.height <= IN_MEMORY_PIXELS:
        scene.data, scene.valid = read_masked(src, bands, Window(0, 0, info.width, info.height))
        if not scene.valid.any():
            raise InputError(f"{image}: no valid pixel (all nodata or masked); there is "
                             "nothing to learn from it: drop it or fix its nodata value")
        scene.target[~scene.valid] = IGNORE
    rows, cols = np.nonzero(foreground(scene.target))
    scene.positives = np.stack([rows, cols], axis=1)
    if config.classes == 1:
        scene.class_pixels = [scene.positives]
    else:
        ids = scene.target[rows, cols]
        scene.class_pixels = [scene.positives[ids == k]
                              for k in range(1, len(config.class_names))]
    return scene


def foreground(target: np.ndarray) -> np.ndarray:
    """Pixels of a target labelled with a class other than the background (id 0)."""
    return (target > 0) & (target != IGNORE)


def hold_out_strip(scene: Scene, config: TrainConfig) -> Scene:
    """Keep the row strip of ``scene`` richest in foreground for validation (same object)."""
    rows = scene.shape[0]
    strip = min(rows, max(config.patch, int(rows * config.val_fraction)))
    per_row = foreground(scene.target).sum(axis=1)
    starts = range(0, rows - strip + 1, max(1, strip // 2))
    first = max(starts, key=lambda r: (per_row[r : r + strip].sum(), r))
    scene.held_rows = (first, first + strip)
    scene.positives = _clear_rows(scene, scene.positives)
    if config.classes == 1:
        scene.class_pixels = [scene.positives]
    else:   # only pixels a window of the largest size can hold without touching the strip
        largest = min(round(config.patch * config.scale_range[1]),
                      max(first, rows - first - strip))
        above, below = first >= largest, rows - first - strip >= largest
        scene.class_pixels = [p[(above & (p[:, 0] < first)) | (below & (p[:, 0] >= first + strip))]
                              for p in scene.class_pixels]
    return scene


def _clear_rows(scene: Scene, pixels: np.ndarray) -> np.ndarray:
    """The (row, col) ``pixels`` outside the scene's validation rows."""
    keep = np.array([scene.clear_of_validation(int(r), 1) for r in pixels[:, 0]],
                    dtype=bool) if len(pixels) else np.zeros(0, bool)
    return pixels[keep]


def class_frequencies(scenes: list[Scene], count: int) -> np.ndarray:
    """Share of each of ``count`` classes among the labelled, valid training pixels (the
    validation rows left out)."""
    total = np.zeros(count, np.int64)
    for scene in scenes:
        first, end = scene.held_rows
        for part in (scene.target[:first], scene.target[end:]):
            total += np.bincount(part[part != IGNORE].ravel(), minlength=count)[:count]
    return total / max(1, total.sum())


def band_statistics(scenes: list[Scene]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and std over valid pixels (nodata, masks, NaN excluded) of the scenes.

    Large images are read decimated to at most 1024 pixels a side.
    """
    total = squares = np.zeros(len(scenes[0].bands))   # float64 sums over valid pixels
    n = 0
    for scene in scenes:
        if scene.data is not None and scene.valid is not None:
            data, valid = scene.data, scene.valid
        else:
            src = scene.src
            scale = max(1, max(src.width, src.height) // 1024)
            shape = (len(scene.bands), src.height // scale, src.width // scale)
            data = src.read(list(scene.bands), out_shape=shape, out_dtype="float32",
                            resampling=Resampling.nearest)
            valid = np.isfinite(data).all(axis=0) & (src.read_masks(
                list(scene.bands), out_shape=shape, resampling=Resampling.nearest) > 0
            ).all(axis=0)
        if not valid.any():
            raise InputError(f"{scene.path}: no valid pixel (all nodata or masked); there "
                             "is nothing to learn from it: drop it or fix its nodata value")
        values = data[:, valid].astype(np.float64)
        total = values.sum(axis=1) + total
        squares = (values**2).sum(axis=1) + squares
        n += values.shape[1]
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0))
    return tuple(mean.tolist()), tuple(np.maximum(std, 1e-6).tolist())


def covering_windows(scene: Scene, first: int, end: int) -> list[Window]:
    """Windows (<= VAL_TILE a side) covering rows ``[first, end)`` of ``scene``."""
    cols = scene.shape[1]
    return [Window(c0, r0, min(VAL_TILE, cols - c0), min(VAL_TILE, end - r0))
            for r0 in range(first, end, VAL_TILE) for c0 in range(0, cols, VAL_TILE)]


def validation_windows(scenes: list[Scene]) -> list[tuple[Scene, Window]]:
    """Windows covering each validation image or held-out strip."""
    return [(scene, window) for scene in scenes
            for window in covering_windows(scene, *(scene.held_rows if scene.held_rows[1]
                                                    else (0, scene.shape[0])))]


def training_windows(scenes: list[Scene]) -> list[tuple[Scene, Window]]:
    """Windows covering the training rows of each scene (all but its validation strip)."""
    out = []
    for scene in scenes:
        first, end = scene.held_rows
        out += [(scene, w) for w in covering_windows(scene, 0, first)
                + covering_windows(scene, end, scene.shape[0])]
    return out
