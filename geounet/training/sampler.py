"""Random training windows: where they are drawn, how they are augmented, hard pixels.

Each step draws ``batch_size`` random windows: ``hard_fraction`` of them centred on a pixel
the model got wrong after the previous epoch (:func:`mine_hard_pixels`), ``pos_fraction`` of
the others on a foreground pixel, so thin rare classes are seen, the rest anywhere; never
touching a scene's validation strip. Each window is ``patch`` pixels times a random factor in
``scale_range`` a side, jittered in brightness and contrast, resampled to ``patch``, rotated
by a multiple of 90 degrees and maybe mirrored (overhead and inspection imagery has no
preferred orientation). Every random choice comes from the one generator passed in, in a
fixed order, so the same seed gives the same batches.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from geounet.io import normalize
from geounet.labels import IGNORE
from geounet.metrics import within
from geounet.training.config import TrainConfig
from geounet.training.data import Scene, training_windows
from geounet.training.validation import Stats, scored_window

log = logging.getLogger(__name__)

MINE_PIXELS = 16 * 2**20          # hard-pixel mining looks at most at this many pixels an epoch
MAX_HARD = 2**16                  # hard pixels kept per image (a random sample beyond)


def training_batch(scenes: list[Scene], mean: Stats, std: Stats, config: TrainConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Normalized images ``(batch, bands, patch, patch)`` float32 and their targets
    ``(batch, patch, patch)`` uint8 (IGNORE where unlabelled or nodata)."""
    p = config.patch
    xs, ys = [], []
    low, high = np.log(config.scale_range[0]), np.log(config.scale_range[1])
    hard_counts = np.array([len(s.hard) for s in scenes], dtype=np.float64)
    hard_total = hard_counts.sum()
    for _ in range(config.batch_size):
        on_hard = hard_total > 0 and rng.random() < config.hard_fraction
        if on_hard:  # images weighted by how much the model got wrong in them
            scene = scenes[rng.choice(len(scenes), p=hard_counts / hard_total)]
        else:
            scene = scenes[rng.integers(len(scenes))]
        rows, cols = scene.shape
        size = min(int(round(p * np.exp(rng.uniform(low, high)))), cols,
                   max(scene.held_rows[0], rows - scene.held_rows[1]))
        r0, c0 = window_origin(scene, size, _centres(scene, on_hard, config, rng), rng)
        data, valid = scene.read(Window(c0, r0, size, size))
        x = _jitter(normalize(data, valid, mean, std), config, rng)
        y = scene.target[r0 : r0 + size, c0 : c0 + size].copy()
        y[~valid] = IGNORE
        x, y = _orient(*_resize(x, y, p), rng)
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ys.append(np.ascontiguousarray(y))
    return np.stack(xs), np.stack(ys)


def _centres(scene: Scene, on_hard: bool, config: TrainConfig, rng: np.random.Generator
             ) -> np.ndarray | None:
    """The (row, col) pixels a window must hold one of: hard, foreground, or None (any).

    Foreground windows of a softmax model first pick one of the foreground classes present
    in the scene, each as likely as the others, then a pixel of it: a class covering 0.1 %
    of the pixels is centred on as often as one covering 30 %.
    """
    if on_hard:
        return scene.hard
    if len(scene.positives) and rng.random() < config.pos_fraction:
        present = ([pixels for pixels in scene.class_pixels if len(pixels)]
                   if scene.class_pixels else [scene.positives])
        if not present:
            return None
        return present[0] if len(present) == 1 else present[rng.integers(len(present))]
    return None


def window_origin(scene: Scene, size: int, centres: np.ndarray | None,
                  rng: np.random.Generator) -> tuple[int, int]:
    """Top-left of a ``size`` window clear of the validation strip, holding one of the
    ``centres`` (row, col) pixels if given, else anywhere."""
    rows, cols = scene.shape
    while True:  # rejection sampling: most draws already miss the strip
        if centres is not None:
            r, c = centres[rng.integers(len(centres))]
            r0 = int(np.clip(r - rng.integers(size), 0, rows - size))
            c0 = int(np.clip(c - rng.integers(size), 0, cols - size))
        else:
            r0 = int(rng.integers(0, rows - size + 1))
            c0 = int(rng.integers(0, cols - size + 1))
        if scene.clear_of_validation(r0, size):
            return r0, c0


def _jitter(x: np.ndarray, config: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Random contrast (a factor) and brightness (an offset) of normalized pixels."""
    return x * rng.uniform(1 - config.contrast, 1 + config.contrast) \
        + rng.uniform(-config.brightness, config.brightness)


def _resize(x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (bilinear) and target (nearest: class ids stay ids) resampled to ``size``."""
    if y.shape == (size, size):
        return x, y
    x = F.interpolate(torch.from_numpy(np.ascontiguousarray(x))[None], size=(size, size),
                      mode="bilinear", align_corners=False)[0].numpy()
    y = F.interpolate(torch.from_numpy(y)[None, None], size=(size, size),
                      mode="nearest-exact")[0, 0].numpy()
    return x, y


def _orient(x: np.ndarray, y: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """A random quarter turn of pixels and target, mirrored half of the time."""
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, ::-1]
    return x, y


def mine_hard_pixels(model: torch.nn.Module, scenes: list[Scene], mean: Stats, std: Stats,
                     config: TrainConfig, device: torch.device, epoch: int) -> None:
    """Set each scene's ``hard`` pixels: where the model is wrong beyond the tolerance.

    False positives farther than ``tolerance`` from the foreground and foreground pixels
    farther than it from any prediction, over the training rows (at most MINE_PIXELS an
    epoch, in random windows beyond that); at most MAX_HARD per scene. Its random choices
    depend only on the seed and epoch, so a resumed run mines the same pixels.
    """
    rng = np.random.default_rng([config.seed, epoch])
    windows = training_windows(scenes)
    order = rng.permutation(len(windows))
    budget = MINE_PIXELS
    chosen: list[int] = []
    for index in order:
        area = windows[index][1].width * windows[index][1].height
        if area <= budget or not chosen:
            chosen.append(index)
            budget -= area
    found: dict[int, list[np.ndarray]] = {id(s): [] for s in scenes}
    model.eval()
    with torch.inference_mode():
        for index in sorted(chosen):
            scene, window = windows[index]
            prob, target, keep = scored_window(model, scene, window, mean, std, device)
            if prob.ndim == 3:   # softmax: every labelled pixel of another class is hard
                wrong = (prob.argmax(axis=0) != target) & keep
            else:
                pred, truth = (prob > config.threshold) & keep, (target == 1) & keep
                wrong = (pred & ~within(truth, config.tolerance)) \
                    | (truth & ~within(pred, config.tolerance))
            rows, cols = np.nonzero(wrong)
            found[id(scene)].append(np.stack([rows + window.row_off,
                                              cols + window.col_off], axis=1))
    for scene in scenes:
        hard = np.concatenate(found[id(scene)]) if found[id(scene)] \
            else np.zeros((0, 2), np.int64)
        if len(hard) > MAX_HARD:
            hard = hard[np.sort(rng.choice(len(hard), MAX_HARD, replace=False))]
        scene.hard = hard
    log.info("epoch %d: %d hard pixels mined in %d windows", epoch,
             sum(len(s.hard) for s in scenes), len(chosen))
