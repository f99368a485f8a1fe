"""Checkpoints: weights and the metadata needed to use them, in one safetensors file.

The file is a `safetensors <https://github.com/huggingface/safetensors>`_ archive: raw tensors
plus a JSON header. Nothing in it is ever unpickled, so loading a checkpoint cannot run code.
The header's ``__metadata__`` holds ``format``, ``version`` and ``geounet``: the JSON of a
:class:`ModelMetadata` (architecture, band order, per-band normalization, class names, nodata
policy, recommended tile size and overlap, provenance). The checkpoint is the contract between
training and inference: ``geounet predict`` needs no other flag for a checkpoint it can read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeGuard

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from geounet.errors import GeoUNetError, ModelError
from geounet.inputs import require_regular_file
from geounet.model import UNet, UNetConfig, argument_problem, state_shapes
from geounet.outputs import atomic_path, write_failed
from geounet.palette import colors_problem, default_class_colors

FORMAT = "geounet-checkpoint"
VERSION = 1
NODATA_POLICIES = ("mask",)
# Largest recommended tile edge (px): a tile of 8192^2 px already holds 1 GiB per 4 bands.
MAX_TILE = 8192


@dataclass(frozen=True)
class ModelMetadata:
    """What a model expects of its input and what its output means.

    Attributes:
        arch: U-Net architecture arguments.
        bands: 1-based band indexes of the training rasters, in the order the model reads them.
        mean, std: per-band normalization, in the input's raw units (x - mean) / std.
        class_names: one name per class; a binary model (``arch.classes == 1``) has two,
            background first.
        nodata_policy: ``"mask"``: nodata/NaN pixels are set to the band mean before the model
            sees them and are written as nodata in every output.
        tile_size: recommended tile edge in pixels.
        overlap: recommended overlap between neighbouring tiles in pixels.
        threshold: probability above which a binary model's pixel is foreground.
        class_colors: ``'#rrggbb'`` per class for previews and legends (empty: the default
            palette, :func:`geounet.palette.default_class_colors`).
        ignore_value: the label value that meant "unlabelled" in training (255: only
            nodata); informative, inference does not use it.
        source: provenance (training data, command, seed, date, geounet version).
    """

    arch: UNetConfig
    bands: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    nodata_policy: str = "mask"
    tile_size: int = 576
    overlap: int = 64
    threshold: float = 0.5
    source: dict[str, Any] = field(default_factory=dict)
    class_colors: tuple[str, ...] = ()
    ignore_value: int = 255

    @property
    def colors(self) -> tuple[str, ...]:
        """One ``'#rrggbb'`` per class name: ``class_colors`` or the default palette."""
        return self.class_colors or default_class_colors(len(self.class_names))

    def __post_init__(self) -> None:
        for name, check in _FIELD_CHECKS.items():
            problem = check(getattr(self, name))
            if problem:
                raise ModelError(f"checkpoint metadata key {name!r}: {problem}")
        if 2 * self.overlap >= self.tile_size:
            raise ModelError(f"checkpoint metadata key 'overlap': must be below half of "
                             f"tile_size ({self.tile_size}), got {self.overlap}")
        n = self.arch.in_channels
        if not (len(self.bands) == len(self.mean) == len(self.std) == n):
            raise ModelError(
                f"checkpoint metadata is inconsistent: {n} input channels but "
                f"{len(self.bands)} bands, {len(self.mean)} means, {len(self.std)} stds"
            )
        if self.class_colors:
            problem = colors_problem(self.class_colors, len(self.class_names))
            if problem:
                raise ModelError(f"checkpoint metadata key 'class_colors': {problem}")
        expected_names = 2 if self.arch.classes == 1 else self.arch.classes
        if len(self.class_names) != expected_names:
            raise ModelError(
                f"checkpoint metadata lists {len(self.class_names)} class names for "
                f"{expected_names} classes"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Parse and validate the metadata JSON; every key is checked before anything is built.

        Raises:
            ModelError: one line naming the first wrong key and what is wrong with it.
        """
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ModelError("checkpoint metadata is not a JSON object")
        _check_keys(raw, {f.name for f in fields(cls)}, REQUIRED_KEYS, "")
        if not isinstance(raw["arch"], dict):
            raise ModelError(f"checkpoint metadata key 'arch': must be an object, got "
                             f"{raw['arch']!r}")
        arch_keys = {f.name for f in fields(UNetConfig)}
        _check_keys(raw["arch"], arch_keys, arch_keys, "arch.")
        for name, value in raw["arch"].items():
            problem = argument_problem(name, value)
            if problem:
                raise ModelError(f"checkpoint metadata key 'arch.{name}': {problem}")
        # Any: each value is checked by ModelMetadata.__post_init__, not trusted here.
        values: dict[str, Any] = {k: tuple(v) if k in _LISTS and isinstance(v, list) else v
                  for k, v in raw.items() if k != "arch"}
        return cls(arch=UNetConfig(**raw["arch"]), **values)


_LISTS = ("bands", "mean", "std", "class_names", "class_colors")
# Keys every checkpoint has had; later ones (class_colors, ignore_value) take their defaults,
# so checkpoints written before them (the bundled models among them) still load.
REQUIRED_KEYS = {"arch", "bands", "mean", "std", "class_names"}
FLOAT32_MAX = 3.4028234663852886e38


def _check_keys(raw: dict, known: set[str], required: set[str], prefix: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ModelError(f"checkpoint metadata has unknown key '{prefix}{unknown[0]}' (known: "
                         f"{', '.join(sorted(known))}); was it written by a newer geounet?")
    missing = sorted(required - set(raw))
    if missing:
        raise ModelError(f"checkpoint metadata key '{prefix}{missing[0]}' is missing")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sequence(value: object, element: str, ok: Callable[[object], bool]) -> str | None:
    """The problem of a list whose every element must pass ``ok``, or None."""
    if not isinstance(value, (list, tuple)):
        return f"must be a list of {element}, got {value!r}"
    if not all(ok(v) for v in value):
        return f"must be a list of {element}, got {list(value)!r}"
    return None


def _bands(value: object) -> str | None:
    problem = _sequence(value, "integers", _is_int)
    if problem is None and isinstance(value, (list, tuple)) and any(b < 1 for b in value):
        return f"band numbers are 1-based, got {list(value)}"
    return problem


def _means(value: object) -> str | None:
    problem = _sequence(value, "numbers", _is_number)
    if (problem is None and isinstance(value, (list, tuple))
            and not all(abs(v) <= FLOAT32_MAX for v in value)):  # NaN fails too
        return f"must be finite numbers, got {list(value)}"
    return problem


def _stds(value: object) -> str | None:
    problem = _sequence(value, "numbers", _is_number)
    # Inputs are scaled by 1 / std in float32: that must be finite too.
    if (problem is None and isinstance(value, (list, tuple))
            and not all(1 / FLOAT32_MAX < v <= FLOAT32_MAX for v in value)):
        return f"must be positive and finite, got {list(value)}"
    return problem


def _bounded_int(low: int, high: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if not _is_int(value) or not low <= value <= high:
            return f"must be an integer {low}..{high}, got {value!r}"
        return None
    return check


def _threshold(value: object) -> str | None:
    if not _is_number(value):
        return f"must be a number from 0 to 1, got {value!r}"
    if not 0 <= value <= 1:  # NaN fails too
        return f"must be a number from 0 to 1, got {value}"
    return None


def _nodata_policy(value: object) -> str | None:
    if value not in NODATA_POLICIES:
        return f"unknown nodata policy {value!r}; expected one of {NODATA_POLICIES}"
    return None


_FIELD_CHECKS = {
    "arch": lambda v: None if isinstance(v, UNetConfig) else f"must be a UNetConfig, got {v!r}",
    "bands": _bands,
    "mean": _means,
    "std": _stds,
    "class_names": lambda v: _sequence(v, "strings", lambda n: isinstance(n, str)),
    "nodata_policy": _nodata_policy,
    "tile_size": _bounded_int(16, MAX_TILE),
    "overlap": _bounded_int(0, MAX_TILE),
    "threshold": _threshold,
    "class_colors": lambda v: _sequence(v, "strings", lambda n: isinstance(n, str)),
    "ignore_value": _bounded_int(0, 255),
    "source": lambda v: None if isinstance(v, dict) else f"must be an object, got {v!r}",
}


def save_checkpoint(path: str | Path, model: UNet, metadata: ModelMetadata) -> Path:
    """Write weights and metadata to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    if model.config != metadata.arch:
        raise ModelError(f"model {model.config} does not match metadata arch {metadata.arch}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"format": FORMAT, "version": str(VERSION), "geounet": metadata.to_json()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, tmp, metadata=header)
        except SafetensorError as exc:
            raise write_failed(path, exc) from exc
    return path


def read_metadata(path: str | Path) -> ModelMetadata:
    """Read only the metadata of a checkpoint (no weights loaded)."""
    return _open(path)[1]


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[UNet, ModelMetadata]:
    """Load a checkpoint into an eval-mode :class:`UNet` on ``device``.

    Raises:
        ModelError: the file is missing, not a geounet checkpoint, truncated, of another
            version, or its weights do not fit the architecture it declares.
    """
    tensors, metadata = _open(path, with_tensors=True)
    model = UNet(metadata.arch)
    model.load_state_dict(tensors, strict=True)  # names and shapes checked in _open
    return model.to(device).eval(), metadata


def _open(
    path: str | Path, with_tensors: bool = False
) -> tuple[dict[str, torch.Tensor], ModelMetadata]:
    """Metadata and, with ``with_tensors``, the weights, once they are known to fit it."""
    path = Path(path)
    if path.is_dir() or not (path.exists() or path.is_symlink()):
        what = "is a folder, not a checkpoint file" if path.is_dir() else \
            "no such checkpoint file"
        raise ModelError(f"{path}: {what}; pass a .safetensors file from `geounet train` or "
                         "sample_data/models/")
    require_regular_file(path, "checkpoint", ModelError)  # a FIFO would wait forever
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = _metadata(path, f.metadata() or {})
            tensors = _weights(path, f, metadata.arch) if with_tensors else {}
    except GeoUNetError:
        raise
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(
            f"{path}: not a readable geounet checkpoint (safetensors): {exc}. "
            "Checkpoints are made by `geounet train`; pickled .pt/.pth files are refused "
            "because loading them can run code."
        ) from exc
    return tensors, metadata


def _metadata(path: Path, header: dict[str, str]) -> ModelMetadata:
    if header.get("format") != FORMAT:
        raise ModelError(f"{path}: a safetensors file but not a geounet checkpoint "
                         f"(format {header.get('format')!r})")
    if header.get("version") != str(VERSION):
        raise ModelError(f"{path}: checkpoint version {header.get('version')!r}; this geounet "
                         f"reads version {VERSION}; upgrade geounet or retrain")
    try:
        return ModelMetadata.from_json(header["geounet"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: checkpoint metadata is missing or corrupt: {exc}") from exc
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc


def _weights(path: Path, f: Any, arch: UNetConfig) -> dict[str, torch.Tensor]:
    """The tensors of the open safetensors ``f``, read only after each one's name, shape and
    type were compared with what ``arch`` needs (so a header declaring a huge model is refused
    before anything is allocated); all finite."""
    expected = state_shapes(arch)
    names = set(f.keys())
    problem = None
    for name, (shape, floating) in expected.items():  # in the model's order, first to last
        if name not in names:
            problem = f"tensor {name!r} is missing"
            break
        piece = f.get_slice(name)
        got, dtype = tuple(piece.get_shape()), piece.get_dtype()
        if got != shape:
            problem = f"tensor {name!r} is {list(got)}, the architecture needs {list(shape)}"
            break
        if dtype.startswith(("F", "BF")) != floating:
            problem = f"tensor {name!r} is {dtype}, the architecture needs " + (
                "floating point" if floating else "integers")
            break
    unexpected = sorted(names - expected.keys())
    if problem is None and unexpected:
        problem = f"unexpected tensor {unexpected[0]!r}"
    if problem:
        raise ModelError(f"{path}: weights do not fit the declared architecture {arch}: "
                         f"{problem}")
    tensors = {name: f.get_tensor(name) for name in expected}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"{path}: tensor {name!r} holds NaN or infinite values; the "
                             "model would predict nothing; retrain it or use another")
    return tensors
