"""Training a U-Net on georeferenced rasters with raster masks.

Training windows of ``patch`` pixels are drawn at random from each image (half of them
centred on a labelled pixel, so rare classes like cracks are seen often), flipped and rotated
by multiples of 90 degrees (overhead and inspection imagery has no preferred orientation),
and jittered in brightness and contrast. A strip of ``val_fraction`` of every image's rows,
the one richest in foreground, is held out for validation; the checkpoint with the best
validation IoU is kept. The loss is
BCE + Dice, which copes with thin, rare foreground. Per-band mean and std are measured on
the training images (nodata excluded) and stored in the checkpoint with everything else
``geounet predict`` needs.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm import tqdm

from geounet import __version__
from geounet.checkpoint import ModelMetadata, save_checkpoint
from geounet.errors import ConfigError, InputError
from geounet.io import normalize, open_raster, read_masked
from geounet.metrics import pixel_scores
from geounet.model import UNet, UNetConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (binary segmentation: mask > 0 is the foreground class).

    Attributes:
        class_names: (background, foreground) names stored in the checkpoint.
        width, depth, bilinear: U-Net architecture (see :class:`UNetConfig`).
        patch: training window edge in pixels (a multiple of 2**depth).
        batch_size: windows per step.
        steps: optimisation steps.
        lr: AdamW learning rate (cosine-decayed to 5% over the run).
        val_fraction: share of each image's rows held out for validation (one strip).
        val_every: steps between validations.
        seed: seed for sampling, augmentation and initialisation.
        tile_size, overlap: inference tiling recommended in the checkpoint.
        threads: torch CPU threads (None: torch's default).
    """

    class_names: tuple[str, str] = ("background", "foreground")
    width: int = 16
    depth: int = 4
    bilinear: bool = True
    patch: int = 256
    batch_size: int = 8
    steps: int = 1000
    lr: float = 3e-3
    val_fraction: float = 0.15
    val_every: int = 100
    seed: int = 0
    tile_size: int = 576
    overlap: int = 64
    threads: int | None = None
    source: dict[str, str] = field(default_factory=dict)


@dataclass
class _Scene:
    """One training image: open dataset, its mask in memory, and train/val row split."""

    src: rasterio.DatasetReader
    mask: np.ndarray        # uint8 (rows, cols): 1 foreground, 0 background, 255 ignore
    val_rows: tuple[int, int]  # [first, end) rows held out for validation
    positives: np.ndarray    # (n, 2) row/col of foreground pixels

    def window_is_training(self, row: int, patch: int) -> bool:
        """True when rows [row, row + patch) lie clear of the validation strip."""
        return row + patch <= self.val_rows[0] or row >= self.val_rows[1]


def train_model(images: list[Path], masks: list[Path], output: Path,
                config: TrainConfig, progress: bool = True) -> dict[str, float]:
    """Train on (image, mask) raster pairs and write the best checkpoint to ``output``.

    Returns the best validation scores (IoU, precision, recall, F1) and the training time.
    """
    if len(images) != len(masks) or not images:
        raise ConfigError("give one mask per image (at least one pair)")
    if config.patch % 2**config.depth:
        raise ConfigError(f"patch {config.patch} must be a multiple of 2**depth = "
                          f"{2**config.depth}")
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)

    scenes = [_open_scene(i, m, config) for i, m in zip(images, masks)]
    if not any(len(s.positives) for s in scenes):
        raise InputError(f"the masks {', '.join(map(str, masks))} have no foreground pixel "
                         "(value > 0): there is nothing to learn; check the label files")
    count = scenes[0].src.count
    if any(s.src.count != count for s in scenes):
        raise InputError("training images have different band counts")
    bands = tuple(range(1, count + 1))
    mean, std = _band_statistics(scenes, bands)
    arch = UNetConfig(count, 1, config.width, config.depth, config.bilinear)
    model = UNet(arch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=config.steps, pct_start=0.1,
        final_div_factor=20,
    )
    metadata = ModelMetadata(
        arch=arch, bands=bands, mean=mean, std=std, class_names=tuple(config.class_names),
        tile_size=config.tile_size, overlap=config.overlap,
        source={
            **config.source, "trained_on": ",".join(str(p) for p in images),
            "steps": str(config.steps), "patch": str(config.patch), "seed": str(config.seed),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "geounet_version": __version__,
        },
    )
    val_windows = _validation_windows(scenes, config.patch)
    best: dict[str, float] = {"iou": -1.0}
    start = time.perf_counter()
    bar = tqdm(range(1, config.steps + 1), disable=not progress, file=sys.stderr,
               unit="step", desc="train")
    for step in bar:
        model.train()
        x, y = _training_batch(scenes, bands, mean, std, config, rng)
        logits = model(torch.from_numpy(x))
        loss = _bce_dice(logits, torch.from_numpy(y))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if step % config.val_every == 0 or step == config.steps:
            scores = _validate(model, scenes, bands, mean, std, val_windows)
            log.info("step %d loss %.4f val %s", step, loss.item(), scores)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_iou=f"{scores['iou']:.3f}")
            if scores["iou"] > best["iou"]:
                best = {**scores, "step": float(step)}
                save_checkpoint(output, model, metadata)
    bar.close()
    for scene in scenes:
        scene.src.close()
    best["train_seconds"] = time.perf_counter() - start
    return best


def _open_scene(image: Path, mask: Path, config: TrainConfig) -> _Scene:
    info = open_raster(image)
    src = rasterio.open(image)
    with rasterio.open(mask) as m:
        if (m.width, m.height) != (info.width, info.height):
            raise InputError(f"{mask}: {m.width}x{m.height} does not match image {image} "
                             f"{info.width}x{info.height}")
        raw = m.read(1)
        labels = (raw > 0).astype(np.uint8)
        if m.nodata is not None:
            labels[raw == m.nodata] = 255
    strip = max(config.patch, int(info.height * config.val_fraction))
    if info.height < strip + config.patch or info.width < config.patch:
        raise InputError(f"{image}: too small for patch {config.patch} with a validation split")
    # Hold out the strip of rows with the most foreground, so validation sees the class.
    per_row = (labels == 1).sum(axis=1)
    starts = range(0, info.height - strip + 1, max(1, strip // 2))
    first = max(starts, key=lambda r: (per_row[r : r + strip].sum(), r))
    rows, cols = np.nonzero(labels == 1)
    return _Scene(src, labels, (first, first + strip), np.stack([rows, cols], axis=1))


def _band_statistics(scenes: list[_Scene], bands: tuple[int, ...],
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and std over valid pixels of decimated reads (<= 1024 px a side)."""
    samples = []
    for scene in scenes:
        src = scene.src
        scale = max(1, max(src.width, src.height) // 1024)
        shape = (len(bands), src.height // scale, src.width // scale)
        data = src.read(list(bands), out_shape=shape, resampling=Resampling.nearest,
                        out_dtype="float32")
        valid = np.isfinite(data).all(axis=0)
        if src.nodata is not None:
            valid &= (data != src.nodata).all(axis=0)
        samples.append(data[:, valid])
    values = np.concatenate(samples, axis=1)
    std = values.std(axis=1)
    return tuple(values.mean(axis=1).tolist()), tuple(np.maximum(std, 1e-6).tolist())


def _training_batch(scenes, bands, mean, std, config: TrainConfig, rng: np.random.Generator,
                    ) -> tuple[np.ndarray, np.ndarray]:
    p = config.patch
    xs, ys = [], []
    for _ in range(config.batch_size):
        scene = scenes[rng.integers(len(scenes))]
        centred = len(scene.positives) and rng.random() < 0.5
        while True:  # rejection-sample a window clear of the validation strip
            if centred:
                r, c = scene.positives[rng.integers(len(scene.positives))]
                r0 = int(np.clip(r - rng.integers(p), 0, scene.src.height - p))
                c0 = int(np.clip(c - rng.integers(p), 0, scene.src.width - p))
            else:
                r0 = int(rng.integers(0, scene.src.height - p + 1))
                c0 = int(rng.integers(0, scene.src.width - p + 1))
            if scene.window_is_training(r0, p):
                break
        data, valid = read_masked(scene.src, bands, Window(c0, r0, p, p))
        x = normalize(data, valid, mean, std)
        x = x * rng.uniform(0.8, 1.2) + rng.uniform(-0.2, 0.2)   # contrast, brightness
        y = scene.mask[r0 : r0 + p, c0 : c0 + p].copy()
        y[~valid] = 255
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, ::-1]
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ys.append(np.ascontiguousarray(y))
    return np.stack(xs), np.stack(ys)


def _bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice of the foreground, ignoring pixels labelled 255."""
    logits = logits[:, 0]
    keep = target != 255
    truth = (target == 1).float()
    bce = F.binary_cross_entropy_with_logits(logits[keep], truth[keep])
    prob = torch.sigmoid(logits) * keep
    inter = (prob * truth).sum()
    dice = 1 - (2 * inter + 1) / (prob.sum() + (truth * keep).sum() + 1)
    return bce + dice


def _validation_windows(scenes: list[_Scene], patch: int) -> list[tuple[int, Window]]:
    """Non-overlapping windows covering the held-out rows of every scene."""
    out = []
    for i, scene in enumerate(scenes):
        first, end = scene.val_rows
        for r0 in range(first, end - patch + 1, patch):
            for c0 in range(0, scene.src.width - patch + 1, patch):
                out.append((i, Window(c0, r0, patch, patch)))
    return out


def _validate(model: UNet, scenes, bands, mean, std, windows) -> dict[str, float]:
    model.eval()
    preds, truths = [], []
    with torch.inference_mode():
        for i, window in windows:
            data, valid = read_masked(scenes[i].src, bands, window)
            x = torch.from_numpy(normalize(data, valid, mean, std))[None]
            preds.append((model(x)[0, 0] > 0).numpy() & valid)
            r0, c0 = window.row_off, window.col_off
            truths.append(scenes[i].mask[r0 : r0 + window.height, c0 : c0 + window.width] == 1)
    s = pixel_scores(np.stack(preds), np.stack(truths))
    return {"iou": s.iou, "precision": s.precision, "recall": s.recall, "f1": s.f1}
