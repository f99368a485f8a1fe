"""The training loop: epochs of steps, validation, checkpoints, stopping.

:func:`train_model` loads the data (:mod:`~geounet.training.data`), builds a U-Net of
``width`` and ``depth`` with the bands' statistics, and runs epochs of ``steps_per_epoch``
steps of AdamW on batches from :mod:`~geounet.training.sampler` (learning rate: linear
warm-up, then cosine decay). After every epoch the model is scored on the validation data
(:mod:`~geounet.training.validation`); the best epoch by ``monitor`` is written to ``output``
and the last one beside it with its optimizer and random state
(:mod:`~geounet.training.state`), so that a killed run resumes where it stopped. Both
checkpoints are plain geounet checkpoints that ``geounet predict`` runs as is. Training stops
after ``epochs`` epochs, after ``patience`` epochs without improvement, or when one more
epoch (of the mean length so far) would end past ``max_minutes``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from geounet import __version__
from geounet.checkpoint import ModelMetadata, save_checkpoint
from geounet.labels import IGNORE
from geounet.model import UNet, UNetConfig, resolve_device
from geounet.palette import default_class_colors
from geounet.training.config import TrainConfig
from geounet.training.data import (
    Scene,
    band_statistics,
    class_frequencies,
    load_data,
    validation_windows,
)
from geounet.training.losses import loss as training_loss
from geounet.training.sampler import mine_hard_pixels, training_batch
from geounet.training.state import last_paths, restore, save_last
from geounet.training.validation import Stats, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a run did: best validation scores, epochs run, time and where it wrote."""

    checkpoint: Path
    last: Path
    best: dict[str, float]
    epochs: int
    steps: int
    train_seconds: float
    stopped: str
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["checkpoint"], out["last"] = str(self.checkpoint), str(self.last)
        out["steps_per_second"] = self.steps / self.train_seconds if self.train_seconds else 0
        return out


def train_model(config: TrainConfig, output: str | Path, resume: bool = False,
                progress: bool = True) -> TrainResult:
    """Train as ``config`` says; write the best checkpoint to ``output`` and the last beside.

    With ``resume``, continue the run whose last checkpoint lies beside ``output``.
    """
    output = Path(output)
    device = resolve_device(config.device)
    with _runtime(config, device):
        train, val = load_data(config)
        try:
            return _fit(config, output, train, val, device, resume, progress)
        finally:
            for scene in {id(s): s for s in train + val}.values():
                scene.src.close()


def _fit(config: TrainConfig, output: Path, train: list[Scene], val: list[Scene],
         device: torch.device, resume: bool, progress: bool) -> TrainResult:
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    bands = train[0].bands
    mean, std = band_statistics(train)
    arch = UNetConfig(len(bands), config.classes, config.width, config.depth, config.bilinear)
    model = UNet(arch).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    val_windows = validation_windows(val)
    epoch: int = 0
    history: list[dict[str, float]] = []
    best: dict[str, float] = {config.monitor: -1.0}
    if resume:
        epoch, history, best = restore(output, config, model, optimizer, scaler, rng)
    total = config.epochs * config.steps_per_epoch
    metadata = ModelMetadata(
        arch=arch, bands=bands, mean=mean, std=std, class_names=tuple(config.class_names),
        tile_size=config.tile_size, overlap=config.overlap, threshold=config.threshold,
        class_colors=config.class_colors or default_class_colors(len(config.class_names)),
        ignore_value=IGNORE if config.unlabelled is None else config.unlabelled,
        source={**config.source, "trained_on": f"{len(train)} image(s), first {train[0].path}",
                "config": config.model_dump(mode="json"), "seed": str(config.seed),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "geounet_version": __version__},
    )
    weights = class_weights(config, train)
    if weights is not None:
        log.info("class weights %s", dict(zip(config.class_names, weights.round(3).tolist())))
    seconds = sum(h["seconds"] for h in history)
    stopped = "epochs"
    bar = tqdm(total=total, initial=epoch * config.steps_per_epoch, disable=not progress,
               file=sys.stderr, unit="step", desc="train", dynamic_ncols=True)
    while epoch < config.epochs:
        start = time.perf_counter()
        if config.hard_fraction and epoch:  # from the weights of the epoch just done
            mine_hard_pixels(model, train, mean, std, config, device, epoch)
        losses = _train_epoch(model, optimizer, scaler, train, mean, std, config, device, rng,
                              epoch, amp, bar, weights)
        epoch += 1
        scores = validate(model, val_windows, mean, std, config, device)
        seconds += time.perf_counter() - start
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **scores,
                        "seconds": seconds})
        log.info("epoch %d loss %.4f val %s", epoch, history[-1]["loss"], scores)
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}",
                        **{f"val_{config.monitor}": f"{scores[config.monitor]:.3f}"})
        if scores[config.monitor] > best[config.monitor]:
            best = {**scores, "epoch": epoch}
            save_checkpoint(output, model, _with_scores(metadata, epoch, scores))
        save_last(output, model, _with_scores(metadata, epoch, scores), optimizer, scaler,
                  rng, config, epoch, history, best)
        reason = _stop_reason(config, epoch, seconds, best)
        if reason is not None:
            stopped = reason
            break
    bar.close()
    return TrainResult(output, last_paths(output)[0], best, epoch,
                       epoch * config.steps_per_epoch, seconds, stopped, history)


def _train_epoch(model: UNet, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 train: list[Scene], mean: Stats, std: Stats, config: TrainConfig,
                 device: torch.device, rng: np.random.Generator, epoch: int, amp: bool,
                 bar: tqdm, weights: np.ndarray | None = None) -> list[float]:
    """The steps of epoch ``epoch`` (0-based); returns each step's loss."""
    model.train()
    total = config.epochs * config.steps_per_epoch
    losses = []
    class_weight = None if weights is None else torch.from_numpy(weights).float().to(device)
    for i in range(config.steps_per_epoch):
        step = epoch * config.steps_per_epoch + i
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step, total)
        x, y = training_batch(train, mean, std, config, rng)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(torch.from_numpy(x).to(device))
        loss = training_loss(logits.float(), torch.from_numpy(y).to(device), config.loss,
                             class_weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return losses


def class_weights(config: TrainConfig, train: list[Scene]) -> np.ndarray | None:
    """Per-class weights of a softmax model's pixel loss (None: all 1, or a binary model).

    ``auto``: the inverse square root of each class's share of the valid training pixels,
    scaled to a mean of 1 over the classes present (absent and unlabelled classes weigh 0).
    """
    if config.class_weights is None or config.classes == 1:
        return None
    if config.class_weights != "auto":
        return np.asarray(config.class_weights, np.float64)
    share = class_frequencies(train, len(config.class_names))
    weights = np.where(share > 0, 1 / np.sqrt(np.maximum(share, 1e-12)), 0.0)
    if config.unlabelled is not None and config.unlabelled < len(weights):
        weights[config.unlabelled] = 0
    return weights / weights[weights > 0].mean()


def _stop_reason(config: TrainConfig, epoch: int, seconds: float, best: dict[str, float]
                 ) -> str | None:
    """Why training stops after ``epoch`` epochs and ``seconds`` of training, or None."""
    since_best = epoch - int(best["epoch"])
    if config.patience is not None and since_best >= config.patience:
        return f"early stop: no better {config.monitor} for {since_best} epochs"
    if config.max_minutes is not None and epoch < config.epochs \
            and seconds * (epoch + 1) / epoch > config.max_minutes * 60:
        # another epoch of the mean length would overrun
        return (f"time limit: {seconds / 60:.1f} min done, another epoch would end "
                f"past {config.max_minutes:g} min")
    return None


def _with_scores(metadata: ModelMetadata, epoch: int, scores: dict[str, float]
                 ) -> ModelMetadata:
    source = {**metadata.source, "epoch": epoch,
              "validation": {k: round(v, 6) for k, v in scores.items()}}
    return ModelMetadata(**{**metadata.__dict__, "source": source})


@contextmanager
def _runtime(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Threads and deterministic kernels for the run; the previous settings come back after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 5% of ``lr``: a pure function of the step."""
    warm = int(config.warmup * total)
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
