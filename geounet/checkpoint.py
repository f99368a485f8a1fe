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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from geounet.errors import ConfigError, ModelError
from geounet.model import UNet, UNetConfig
from geounet.outputs import atomic_path, write_failed

FORMAT = "geounet-checkpoint"
VERSION = 1
NODATA_POLICIES = ("mask",)


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

    def __post_init__(self) -> None:
        n = self.arch.in_channels
        if not (len(self.bands) == len(self.mean) == len(self.std) == n):
            raise ModelError(
                f"checkpoint metadata is inconsistent: {n} input channels but "
                f"{len(self.bands)} bands, {len(self.mean)} means, {len(self.std)} stds"
            )
        expected_names = 2 if self.arch.classes == 1 else self.arch.classes
        if len(self.class_names) != expected_names:
            raise ModelError(
                f"checkpoint metadata lists {len(self.class_names)} class names for "
                f"{expected_names} classes"
            )
        if any(s <= 0 for s in self.std):
            raise ModelError(f"checkpoint normalization has a non-positive std: {self.std}")
        if self.nodata_policy not in NODATA_POLICIES:
            raise ModelError(
                f"unknown nodata policy {self.nodata_policy!r}; expected one of {NODATA_POLICIES}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("arch"), dict):
            raise ModelError("checkpoint metadata is not a JSON object with an 'arch' object")
        try:
            arch = UNetConfig(**raw.pop("arch"))
            tuples = ("bands", "mean", "std", "class_names")
            return cls(arch=arch, **{k: tuple(v) if k in tuples else v for k, v in raw.items()})
        except ConfigError as exc:
            raise ModelError(f"checkpoint declares an invalid architecture: {exc}") from exc
        except (TypeError, KeyError) as exc:
            raise ModelError(f"checkpoint metadata has unexpected keys: {exc}") from exc


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
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelError(
            f"{path}: weights do not fit the declared architecture {metadata.arch} "
            f"({first[1].strip() if len(first) > 1 else first[0]})"
        ) from exc
    return model.to(device).eval(), metadata


def _open(
    path: str | Path, with_tensors: bool = False
) -> tuple[dict[str, torch.Tensor], ModelMetadata]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file; pass a .safetensors file from "
                         "`geounet train` or sample_data/models/")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            names = f.keys()  # safe_open is not a mapping
            tensors = {k: f.get_tensor(k) for k in names} if with_tensors else {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(
            f"{path}: not a readable geounet checkpoint (safetensors): {exc}. "
            "Checkpoints are made by `geounet train`; pickled .pt/.pth files are refused "
            "because loading them can run code."
        ) from exc
    if header.get("format") != FORMAT:
        raise ModelError(f"{path}: a safetensors file but not a geounet checkpoint "
                         f"(format {header.get('format')!r})")
    if header.get("version") != str(VERSION):
        raise ModelError(f"{path}: checkpoint version {header.get('version')!r}; this geounet "
                         f"reads version {VERSION}; upgrade geounet or retrain")
    try:
        metadata = ModelMetadata.from_json(header["geounet"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: checkpoint metadata is missing or corrupt: {exc}") from exc
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    return tensors, metadata
