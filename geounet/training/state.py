"""The last checkpoint of a run and its training state, so that a killed run resumes.

Every epoch writes, beside the best checkpoint ``NAME.safetensors``, the last weights as a
plain geounet checkpoint (``NAME.last.safetensors``, which ``geounet predict`` runs as is) and
the optimizer and random state in ``NAME.last.state.safetensors``: optimizer tensors and the
torch RNG as safetensors (no pickle), everything else as JSON in its metadata (format
:data:`STATE_FORMAT`). A resumed run refuses a state file that is damaged, of another format,
of another model, or made with another config (only :data:`RESUMABLE_CHANGES` may differ),
each in one line, before any step is taken.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from geounet.checkpoint import ModelMetadata, load_checkpoint, save_checkpoint
from geounet.errors import ConfigError, InputError
from geounet.model import UNet
from geounet.outputs import atomic_path, first_line
from geounet.training.config import TrainConfig

log = logging.getLogger(__name__)

STATE_FORMAT = "geounet-train-state"
# Keys a resumed run may change; any other difference from the saved run is refused.
RESUMABLE_CHANGES = {"epochs", "patience", "max_minutes", "threads", "device", "source"}


def last_paths(output: str | Path) -> tuple[Path, Path]:
    """The last checkpoint and its training-state file beside the best one at ``output``."""
    output = Path(output)
    stem = output.name.removesuffix(".safetensors")
    return (output.with_name(f"{stem}.last.safetensors"),
            output.with_name(f"{stem}.last.state.safetensors"))


def save_last(output: Path, model: UNet, metadata: ModelMetadata,
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


def restore(output: Path, config: TrainConfig, model: UNet,
            optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            rng: np.random.Generator
            ) -> tuple[int, list[dict[str, float]], dict[str, float]]:
    """Load the last checkpoint's weights, optimizer and RNG state; returns epoch, history
    and best scores so far."""
    last, state_path = last_paths(output)
    if not last.is_file() or not state_path.is_file():
        raise ConfigError(f"{last}: nothing to resume (need {last.name} and "
                          f"{state_path.name} from an earlier run with the same output)")
    state, tensors = read_state(state_path, config)
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


def read_state(path: Path, config: TrainConfig
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
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
