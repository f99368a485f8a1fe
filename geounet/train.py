"""Training a binary U-Net on rasters (GeoTIFF, PNG, JPEG) with raster or vector labels.

Data: (image, label) pairs, given as lists or as two folders paired by file stem, optionally
filtered by a split file (lines ``NAME SPLIT``, as CrackForest's ``split.txt``). Labels are
raster masks on the image's grid or vector files rasterized onto it (see
:mod:`geounet.labels`). Small images are held in memory; large ones are read window by window.

Validation: with several training pairs, ``val_fraction`` of the images (evenly spaced in
name order) are held out whole; with one pair, the strip of ``val_fraction`` of its rows
richest in foreground is held out, and training windows never touch it. Explicit
``val_images``/``val_labels`` replace both. The test split is never used for any choice.

Each step draws ``batch_size`` random windows (``hard_fraction`` of them centred on a pixel
the model got wrong after the previous epoch, ``pos_fraction`` of the others on a foreground
pixel, so thin rare classes are seen), scaled by a random factor in
``scale_range``, rotated by a multiple of 90 degrees, maybe mirrored (overhead and inspection
imagery has no preferred orientation) and jittered in brightness and contrast. The loss (BCE
or focal, plus soft Dice) ignores pixels that are nodata in the image or unlabelled in the
mask. After every epoch of ``steps_per_epoch`` steps the model is scored on the validation
data (pixel IoU/precision/recall/F1 and tolerant F1); the best epoch by ``monitor`` is written
to ``output`` and the last one beside it (``NAME.last.safetensors``) with its optimizer and
random state in ``NAME.last.state.safetensors``, so that a killed run resumes where it
stopped. Both checkpoints are plain geounet checkpoints that ``geounet predict`` runs as is.
Training stops after ``epochs`` epochs, after ``patience`` epochs without improvement, or
when one more epoch (of the mean length so far) would end past ``max_minutes``. On the CPU,
the same seed and thread count give the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from geounet import __version__
from geounet.checkpoint import ModelMetadata, load_checkpoint, save_checkpoint
from geounet.errors import ConfigError, InputError
from geounet.model import UNet, UNetConfig, resolve_device
from geounet.outputs import atomic_path, first_line
from geounet.training.config import TrainConfig
from geounet.training.data import Scene as _Scene
from geounet.training.data import band_statistics as _band_statistics
from geounet.training.data import load_data as _load_data
from geounet.training.data import validation_windows as _validation_windows
from geounet.training.losses import loss as _loss
from geounet.training.sampler import mine_hard_pixels as _mine_hard_pixels
from geounet.training.sampler import training_batch as _training_batch
from geounet.training.validation import validate as _validate

log = logging.getLogger(__name__)

STATE_FORMAT = "geounet-train-state"
# Keys a resumed run may change; any other difference from the saved run is refused.
RESUMABLE_CHANGES = {"epochs", "patience", "max_minutes", "threads", "device", "source"}


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


def last_paths(output: str | Path) -> tuple[Path, Path]:
    """The last checkpoint and its training-state file beside the best one at ``output``."""
    output = Path(output)
    stem = output.name.removesuffix(".safetensors")
    return (output.with_name(f"{stem}.last.safetensors"),
            output.with_name(f"{stem}.last.state.safetensors"))


def train_model(config: TrainConfig, output: str | Path, resume: bool = False,
                progress: bool = True) -> TrainResult:
    """Train as ``config`` says; write the best checkpoint to ``output`` and the last beside.

    With ``resume``, continue the run whose last checkpoint lies beside ``output``.
    """
    output = Path(output)
    device = resolve_device(config.device)
    with _runtime(config, device):
        train, val = _load_data(config)
        try:
            return _fit(config, output, train, val, device, resume, progress)
        finally:
            for scene in {id(s): s for s in train + val}.values():
                scene.src.close()


def _fit(config: TrainConfig, output: Path, train: list[_Scene], val: list[_Scene],
         device: torch.device, resume: bool, progress: bool) -> TrainResult:
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    bands = train[0].bands
    mean, std = _band_statistics(train)
    arch = UNetConfig(len(bands), 1, config.width, config.depth, config.bilinear)
    model = UNet(arch).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    val_windows = _validation_windows(val)
    epoch, history, best = 0, [], {config.monitor: -1.0}
    if resume:
        epoch, history, best = _restore(output, config, model, optimizer, scaler, rng)
    total = config.epochs * config.steps_per_epoch
    metadata = ModelMetadata(
        arch=arch, bands=bands, mean=mean, std=std, class_names=tuple(config.class_names),
        tile_size=config.tile_size, overlap=config.overlap, threshold=config.threshold,
        source={**config.source, "trained_on": f"{len(train)} image(s), first {train[0].path}",
                "config": config.model_dump(mode="json"), "seed": str(config.seed),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "geounet_version": __version__},
    )
    seconds = sum(h["seconds"] for h in history)
    stopped = "epochs"
    bar = tqdm(total=total, initial=epoch * config.steps_per_epoch, disable=not progress,
               file=sys.stderr, unit="step", desc="train", dynamic_ncols=True)
    while epoch < config.epochs:
        start = time.perf_counter()
        if config.hard_fraction and epoch:  # from the weights of the epoch just done
            _mine_hard_pixels(model, train, mean, std, config, device, epoch)
        model.train()
        losses = []
        for i in range(config.steps_per_epoch):
            step = epoch * config.steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step, total)
            x, y = _training_batch(train, mean, std, config, rng)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(torch.from_numpy(x).to(device))
            loss = _loss(logits.float(), torch.from_numpy(y).to(device), config.loss)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        epoch += 1
        scores = _validate(model, val_windows, mean, std, config, device)
        seconds += time.perf_counter() - start
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **scores,
                        "seconds": seconds})
        log.info("epoch %d loss %.4f val %s", epoch, history[-1]["loss"], scores)
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}",
                        **{f"val_{config.monitor}": f"{scores[config.monitor]:.3f}"})
        improved = scores[config.monitor] > best[config.monitor]
        if improved:
            best = {**scores, "epoch": epoch}
            save_checkpoint(output, model, _with_scores(metadata, epoch, scores))
        _save_last(output, model, _with_scores(metadata, epoch, scores), optimizer, scaler,
                   rng, config, epoch, history, best)
        since_best = epoch - int(best["epoch"])
        if config.patience is not None and since_best >= config.patience:
            stopped = f"early stop: no better {config.monitor} for {since_best} epochs"
            break
        if config.max_minutes is not None and epoch < config.epochs \
                and seconds * (epoch + 1) / epoch > config.max_minutes * 60:
            # another epoch of the mean length would overrun
            stopped = (f"time limit: {seconds / 60:.1f} min done, another epoch would end "
                       f"past {config.max_minutes:g} min")
            break
    bar.close()
    return TrainResult(output, last_paths(output)[0], best, epoch,
                       epoch * config.steps_per_epoch, seconds, stopped, history)


def _with_scores(metadata: ModelMetadata, epoch: int, scores: dict[str, float]
                 ) -> ModelMetadata:
    source = {**metadata.source, "epoch": epoch,
              "validation": {k: round(v, 6) for k, v in scores.items()}}
    return ModelMetadata(**{**metadata.__dict__, "source": source})


@contextmanager
def _runtime(config: TrainConfig, device: torch.device):
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


def _learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 5% of ``lr``: a pure function of the step."""
    warm = int(config.warmup * total)
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))



# ---------------------------------------------------------------------------- resume


def _save_last(output: Path, model: UNet, metadata: ModelMetadata,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               rng: np.random.Generator, config: TrainConfig, epoch: int,
               history: list[dict[str, float]], best: dict[str, float]) -> None:
    """Last weights (a normal checkpoint) plus optimizer/RNG state (safetensors, no pickle)."""
    last, state_path = last_paths(output)
    save_checkpoint(last, model, metadata)
    optim = optimizer.state_dict()
    tensors = {f"optimizer.{index}.{name}": value.detach().cpu().contiguous()
               for index, state in optim["state"].items() for name, value in state.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    groups = [{k: v for k, v in g.items() if k != "lr"} for g in optim["param_groups"]]
    state = {"epoch": epoch, "history": history, "best": best, "param_groups": groups,
             "numpy_rng": rng.bit_generator.state, "grad_scaler": scaler.state_dict(),
             "config": config.model_dump(mode="json")}
    with atomic_path(state_path) as tmp:
        save_file(tensors, tmp, metadata={"format": STATE_FORMAT, "version": "1",
                                          "state": json.dumps(state)})


def _restore(output: Path, config: TrainConfig, model: UNet, optimizer, scaler,
             rng: np.random.Generator) -> tuple[int, list[dict[str, float]], dict[str, float]]:
    """Load the last checkpoint's weights, optimizer and RNG state; returns epoch, history."""
    last, state_path = last_paths(output)
    if not last.is_file() or not state_path.is_file():
        raise ConfigError(f"{last}: nothing to resume (need {last.name} and "
                          f"{state_path.name} from an earlier run with the same output)")
    state, tensors = _read_state(state_path, config)
    saved, now = state["config"], config.model_dump(mode="json")
    defaults = TrainConfig.model_construct().model_dump(mode="json")  # keys added later
    changed = sorted(k for k in now if now[k] != saved.get(k, defaults.get(k))
                     and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(f"cannot resume {last}: the run was made with other "
                          f"{', '.join(changed)}; use the same config (only "
                          f"{', '.join(sorted(RESUMABLE_CHANGES))} may change)")
    weights, _ = load_checkpoint(last)
    model.load_state_dict(weights.state_dict())
    params = list(model.parameters())
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    part = "optimizer"  # what is being restored, for the message if it fails
    try:
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                # load_state_dict does not compare shapes: a wrong one fails at the first step
                if value.dim() and value.shape != params[int(index)].shape:
                    raise ValueError(f"{key} is {list(value.shape)}, the model's parameter is "
                                     f"{list(params[int(index)].shape)}")
                per_param.setdefault(int(index), {})[name] = value
        groups = [{**g, "lr": config.lr} for g in state["param_groups"]]
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
        part = "grad_scaler"
        scaler.load_state_dict(state["grad_scaler"])
        part = "rng.torch"
        torch.set_rng_state(tensors["rng.torch"])
        part = "numpy_rng"
        rng.bit_generator.state = state["numpy_rng"]
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise _corrupt_state(state_path, f"{part}: {first_line(exc)}") from exc
    log.info("resuming %s after epoch %d", last, state["epoch"])
    return state["epoch"], state["history"], state["best"]


def _read_state(path: Path, config: TrainConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON state and the tensors of a training-state file, their types checked."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            names = f.keys()  # safe_open is not a mapping
            tensors = {k: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable training state ({first_line(exc)}); it was "
                         "cut short or damaged: train again without --resume") from exc
    if header.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path}: not a geounet training state")
    try:
        state = json.loads(header["state"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise _corrupt_state(path, f"no readable 'state' ({first_line(exc)})") from exc
    if not isinstance(state, dict):
        raise _corrupt_state(path, "'state' is not a JSON object")
    kinds = {"epoch": int, "history": list, "best": dict, "param_groups": list,
             "numpy_rng": dict, "grad_scaler": dict, "config": dict}
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind) or isinstance(state[key], bool):
            raise _corrupt_state(path, f"key {key!r} is {type(state.get(key)).__name__}, not "
                                 f"{kind.__name__}")
    if state["epoch"] < 0:
        raise _corrupt_state(path, f"key 'epoch' is {state['epoch']}")
    if not all(isinstance(h, dict) and _is_number(h.get("seconds")) for h in state["history"]):
        raise _corrupt_state(path, "key 'history' lists epochs without their seconds")
    if not all(_is_number(state["best"].get(k)) for k in (config.monitor, "epoch")):
        raise _corrupt_state(path, f"key 'best' lacks {config.monitor!r} or 'epoch'")
    if "rng.torch" not in tensors:
        raise _corrupt_state(path, "tensor 'rng.torch' is missing")
    return state, tensors


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _corrupt_state(path: Path, problem: str) -> InputError:
    return InputError(f"{path}: training state is missing or corrupt ({problem}); train again "
                      "without --resume")
