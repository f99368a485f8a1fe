"""Inference engines: what runs the U-Net's forward pass, and the export to ONNX.

:func:`geounet.predict.predict_raster` hands each batch of normalized tiles, a float32 tensor
``(N, bands, H, W)``, to a *forward* function that returns probabilities ``(N, C, H, W)``:
the sigmoid of a binary model's one logit, the softmax over classes otherwise. Tiling,
blending, nodata, test-time augmentation, streaming and Dask regions are the same whichever
engine computes it; only this function changes.

Engines (:data:`ENGINES`):

- ``torch``: the :class:`~geounet.model.UNet` in eval mode, in the memory layout measured
  fastest on its device (:func:`geounet.model.fastest_memory_format`: channels-last on the
  CPU), with float16 autocast on CUDA when ``amp`` is on.
- ``onnx``: ONNX Runtime's CPU engine, 2-4x torch's CPU speed on these small U-Nets. From a
  checkpoint the network is traced to ONNX in memory at the run's tile shape (nothing is
  written to disk) and the session kept for the process, keyed by the weights' content and
  the shape; an exported ``.onnx`` file runs as it is. Probabilities agree with torch's
  within float noise (at most 8.3e-6 on the sample and real scenes), so masks differ only
  where a probability ties the threshold.
- ``auto``: ``onnx`` on the CPU when onnxruntime is installed, ``torch`` otherwise (CUDA).

:func:`export_onnx` writes the network with its output activation in the graph (opset
:data:`OPSET`, dynamic batch, a fixed square tile): input ``image`` ``(N, bands, T, T)``
float32 normalized as ``(x - mean) / std`` per band, output ``probabilities``
``(N, C, T, T)``. Its ``metadata_props`` hold the keys the Deepness QGIS plugin reads (values
JSON-encoded, see :func:`deepness_metadata`) and, under ``geounet``, the checkpoint's whole
metadata, so the file is also a complete geounet model.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import math
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geounet import __version__
from geounet.checkpoint import MAX_TILE, ModelMetadata, load_checkpoint, read_metadata
from geounet.errors import ConfigError, GeoUNetError, ModelError
from geounet.inputs import require_regular_file
from geounet.model import UNet, fastest_memory_format, logits_to_probabilities
from geounet.outputs import atomic_path, check_output, first_line, write_failed

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
METADATA_KEY = "geounet"            # metadata_props key of the checkpoint's whole metadata
ONNX_FORMAT, ONNX_VERSION = "geounet-onnx", 1
SESSIONS_KEPT = 8                   # ONNX Runtime sessions kept per process (LRU)

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Prepared:
    """A model ready to run: its metadata, its forward function and the engine's name."""

    meta: ModelMetadata
    forward: Forward
    engine: str


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("the onnx engine needs onnxruntime, which is not installed; "
                          "`pip install onnxruntime`, or pass --engine torch") from None
    return onnxruntime


def resolve_engine(name: str, device: torch.device) -> str:
    """``torch`` or ``onnx`` for the engine ``name`` on ``device`` (see the module docstring).

    Raises:
        ConfigError: an unknown name, or ``onnx`` on a device other than the CPU.
    """
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "auto":
        return "onnx" if device.type == "cpu" and onnxruntime_available() else "torch"
    if name == "onnx" and device.type != "cpu":
        raise ConfigError(f"the onnx engine runs on the CPU only, not {device}; pass "
                          "--device cpu, or --engine torch (or auto) on a GPU")
    return name


def engine_description(engine: str, device: torch.device) -> str:
    """One line naming the engine that runs on ``device``, its library and version, e.g.
    ``onnx (ONNX Runtime 1.32.0, CPU)`` or ``torch (PyTorch 2.13.0, CUDA)``.
    ``engine`` is ``torch`` or ``onnx`` (see :func:`resolve_engine`)."""
    if engine == "onnx":
        return f"onnx (ONNX Runtime {_onnxruntime().__version__}, CPU)"
    return f"torch (PyTorch {torch.__version__.split('+')[0]}, {device.type.upper()})"


def load_model(path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[UNet, ModelMetadata] | OnnxModel:
    """A checkpoint as ``(net, metadata)``, or an exported ``.onnx`` file as an
    :class:`OnnxModel` (recognized by its extension)."""
    if Path(path).suffix.lower() == ".onnx":
        return load_onnx(path)
    return load_checkpoint(path, device)


def model_metadata(model: tuple[UNet, ModelMetadata] | OnnxModel) -> ModelMetadata:
    """The metadata of a model returned by :func:`load_model`."""
    return model.meta if isinstance(model, OnnxModel) else model[1]


def read_model_metadata(path: str | Path) -> ModelMetadata:
    """The metadata of a checkpoint (weights not read) or of an exported ``.onnx`` file."""
    if Path(path).suffix.lower() == ".onnx":
        return load_onnx(path).meta
    return read_metadata(path)


def prepare(model: str | Path | tuple[UNet, ModelMetadata] | OnnxModel, engine: str,
            device: torch.device, threads: int | None = None, amp: bool = True,
            tile_size: int | None = None) -> Prepared:
    """Load ``model`` (a path, a loaded pair or an :class:`OnnxModel`) for ``engine``.

    ``threads`` (None: torch's current count) are the ONNX Runtime session's threads;
    ``tile_size`` is the tile asked for, checked against an exported file's fixed tile.

    Raises:
        ConfigError: the engine cannot run this model here (an ``.onnx`` file with the
            torch engine, a tile the file was not exported for).
    """
    if isinstance(model, (str, Path)) and Path(model).suffix.lower() == ".onnx":
        model = load_onnx(model)
    if isinstance(model, OnnxModel):
        if engine == "torch":
            raise ConfigError(f"{model.name}: an exported ONNX model runs with --engine onnx "
                              "or auto; for the torch engine give its .safetensors checkpoint")
        resolve_engine("onnx", device)
        model.check_tile(tile_size)
        return Prepared(model.meta, model.forward_function(threads), "onnx")
    name = resolve_engine(engine, device)
    if isinstance(model, tuple):
        net, meta = model
    else:
        net, meta = load_checkpoint(model, "cpu" if name == "onnx" else device)
    if name == "onnx":
        traced = OnnxModel(meta, net)
        return Prepared(meta, traced.forward_function(threads), "onnx")
    return Prepared(meta, torch_forward(net, device, amp), "torch")


def torch_forward(net: UNet, device: torch.device, amp: bool = True) -> Forward:
    """The torch engine: ``net`` moved to ``device`` in its fastest layout (in place)."""
    layout = fastest_memory_format(device)
    net = net.to(device).to(memory_format=layout).eval()  # type: ignore[call-overload]
    autocast = amp and device.type == "cuda"

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True).contiguous(memory_format=layout)
        with torch.inference_mode(), torch.autocast(device_type=device.type,
                                                    dtype=torch.float16, enabled=autocast):
            return logits_to_probabilities(net(x).float())

    return forward


# -- ONNX Runtime ---------------------------------------------------------------------------
class _WithActivation(nn.Module):
    """The U-Net followed by its output activation: what an ONNX graph computes."""

    def __init__(self, net: UNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_to_probabilities(self.net(x))


def trace_onnx(net: UNet, shape: tuple[int, int, int]) -> bytes:
    """The ONNX graph (serialized) of ``net`` with its activation for inputs of
    ``shape`` (bands, H, W) and any batch size. ``net``'s training mode is kept."""
    training = net.training
    device = next(net.parameters()).device
    buffer = io.BytesIO()
    # torch >= 2.5 defaults to the torch.export-based exporter, which needs onnxscript; the
    # TorchScript one traces these plain convolutions exactly.
    export: Callable[..., Any] = torch.onnx.export  # its stub omits file-like outputs
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(export).parameters else {}
    with warnings.catch_warnings():
        # Tracer warnings on the Python-level size tests (constants for this shape, which is
        # why a graph is traced per shape) and the legacy exporter's deprecation notice.
        warnings.simplefilter("ignore")
        export(
            _WithActivation(net).eval(), (torch.zeros((1, *shape), device=device),), buffer,
            opset_version=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True, **legacy)
    net.train(training)
    return buffer.getvalue()


_SESSIONS: OrderedDict[tuple, Any] = OrderedDict()
_SESSIONS_LOCK = threading.Lock()   # a Dask worker may run several tasks in one process


def _session(key: tuple, graph: Callable[[], bytes], threads: int):
    """The ONNX Runtime CPU session of ``key`` (made from ``graph()`` on first use; a
    session's ``run`` may be called from several threads)."""
    with _SESSIONS_LOCK:
        if key in _SESSIONS:
            _SESSIONS.move_to_end(key)
            return _SESSIONS[key]
        session = _new_session(graph(), threads)
        _SESSIONS[key] = session
        while len(_SESSIONS) > SESSIONS_KEPT:
            _SESSIONS.popitem(last=False)
        return session


def _new_session(graph: bytes, threads: int):
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the CLI's messages are ours
    # Idle threads sleep instead of spinning: the tile reader and the writer need the cores
    # between batches (predict on 2 busy cores takes 0.87 of the time it takes spinning).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _content_key(net: UNet) -> str:
    """sha256 of the architecture and every weight: equal nets share their sessions."""
    digest = hashlib.sha256(repr(net.config).encode())
    for name, tensor in net.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class OnnxModel:
    """A U-Net that ONNX Runtime runs on the CPU, one session per tile shape.

    ``source`` is a torch net, traced at each tile shape it is run on (the network's exact
    computation), or an exported graph (serialized ONNX), run as it is: with ``fixed`` tile
    ``(H, W)``, smaller tiles (a raster smaller than the tile) are edge-padded to it and the
    outputs cropped.
    """

    def __init__(self, meta: ModelMetadata, source: UNet | bytes, name: str = "model",
                 fixed: tuple[int, int] | None = None):
        self.meta, self.source, self.name, self.fixed = meta, source, name, fixed
        self.key = (hashlib.sha256(source).hexdigest() if isinstance(source, bytes)
                    else _content_key(source))

    def check_tile(self, tile_size: int | None) -> None:
        """Refuse a tile the exported graph cannot take."""
        if self.fixed is not None and tile_size is not None and (tile_size,) * 2 != self.fixed:
            raise ConfigError(
                f"{self.name} takes {self.fixed[0]}x{self.fixed[1]} px tiles (fixed at export); "
                f"drop --tile {tile_size}, or export again with `geounet export --tile "
                f"{tile_size}`")

    def forward_function(self, threads: int | None = None) -> Forward:
        """The forward function on ``threads`` CPU threads (None: torch's count)."""
        threads = threads or torch.get_num_threads()

        def forward(x: torch.Tensor) -> torch.Tensor:
            height, width = x.shape[-2:]
            shape = self.fixed or (height, width)
            if height > shape[0] or width > shape[1]:
                self.check_tile(max(height, width))
            session = _session((self.key, shape, threads), lambda: self._graph(shape),
                               threads)
            if (height, width) != shape:  # a small raster's tile in a fixed-tile graph
                x = F.pad(x, [0, shape[1] - width, 0, shape[0] - height], mode="replicate")
            array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
            name = session.get_inputs()[0].name
            out = torch.from_numpy(session.run(None, {name: array})[0])
            return out[..., :height, :width]

        return forward

    def _graph(self, shape: tuple[int, int]) -> bytes:
        if isinstance(self.source, bytes):
            return self.source
        start = time.perf_counter()
        graph = trace_onnx(self.source, (self.meta.arch.in_channels, *shape))
        log.info("traced the model to ONNX for %dx%d px tiles in %.2f s", *shape,
                 time.perf_counter() - start)
        return graph


def load_onnx(path: str | Path) -> OnnxModel:
    """An ONNX file written by :func:`export_onnx`, checked before it is run.

    Raises:
        ModelError: one line: the file is missing, not ONNX (corrupt, truncated), carries no
            geounet metadata, or its graph does not fit the metadata.
    """
    path = Path(path)
    if path.is_dir() or not (path.exists() or path.is_symlink()):
        raise ModelError(f"{path}: no such ONNX model file; make one with `geounet export "
                         "MODEL.safetensors -o MODEL.onnx`")
    require_regular_file(path, "ONNX model", ModelError)
    graph = path.read_bytes()
    try:
        session = _session(("check", hashlib.sha256(graph).hexdigest()), lambda: graph, 1)
    except GeoUNetError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types (Fail, ...)
        raise ModelError(f"{path}: not a readable ONNX model, probably truncated or corrupt "
                         f"({first_line(exc)}); export it again with `geounet export "
                         f"MODEL.safetensors -o {path.name}`") from exc
    meta = _embedded_metadata(path, session.get_modelmeta().custom_metadata_map)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    out = outputs[0].shape if len(outputs) == 1 else []
    if len(shape) != 4 or shape[1] != meta.arch.in_channels or len(out) != 4 \
            or out[1] != meta.arch.classes:
        raise ModelError(f"{path}: the ONNX graph takes {shape} and gives {out}, not the "
                         f"(N, {meta.arch.in_channels}, H, W) -> (N, {meta.arch.classes}, H, W) "
                         "its geounet metadata declares; export it again")
    fixed = (shape[2], shape[3]) if all(isinstance(s, int) for s in shape[2:]) else None
    return OnnxModel(meta, graph, name=str(path), fixed=fixed)


def _embedded_metadata(path: Path, props: dict[str, str]) -> ModelMetadata:
    text = props.get(METADATA_KEY)
    if text is None:
        raise ModelError(f"{path}: an ONNX model without geounet metadata (band order, "
                         "normalization, classes, tiling), so geounet cannot run it; give the "
                         "checkpoint, or a file made by `geounet export`")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: its geounet metadata is not JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != ONNX_FORMAT:
        raise ModelError(f"{path}: its {METADATA_KEY!r} metadata is not geounet's")
    if record.get("version") != ONNX_VERSION:
        raise ModelError(f"{path}: geounet ONNX metadata version {record.get('version')!r}; "
                         f"this geounet reads version {ONNX_VERSION}; upgrade geounet")
    try:
        return ModelMetadata.from_json(json.dumps(record.get("metadata")))
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc


# -- export -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote."""

    output: Path
    tile: int
    bands: int
    classes: int
    activation: str
    metadata: dict[str, str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def deepness_metadata(meta: ModelMetadata, resolution_cm: float | None = None
                      ) -> dict[str, str]:
    """The ``metadata_props`` the Deepness QGIS plugin reads, values JSON-encoded.

    Deepness scales 8-bit tiles to 0-1 and then standardizes them, so our ``(x - mean) / std``
    on raw values is ``(x / 255 - mean / 255) / (std / 255)``. ``tiles_overlap`` is the
    overlap in percent of the tile, ``resolution`` the pixel size in cm.
    """
    names = {str(i): name for i, name in enumerate(meta.class_names)}
    props = {
        "model_type": "Segmentor",
        "class_names": names,
        "tile_size": meta.tile_size,
        "tiles_overlap": round(100 * meta.overlap / meta.tile_size),
        "seg_thresh": meta.threshold,
        "standardization_mean": [m / 255 for m in meta.mean],
        "standardization_std": [s / 255 for s in meta.std],
    }
    if resolution_cm is not None:
        props["resolution"] = resolution_cm
    return {key: json.dumps(value) for key, value in props.items()}


def deepness_notes(meta: ModelMetadata) -> list[str]:
    """One line per thing Deepness will not get right with this model (none: empty)."""
    notes = []
    for band, mean, std in zip(meta.bands, meta.mean, meta.std):
        if std < 1 or mean - std < 0 or mean + std > 255:
            notes.append(
                f"Deepness: band {band}'s normalization (mean {mean:.4g}, std {std:.4g}) is "
                "not that of 8-bit imagery; Deepness feeds 8-bit tiles scaled to 0-1, so its "
                "results will be wrong; geounet predict runs this file correctly")
            break
    if tuple(meta.bands) != tuple(range(1, len(meta.bands) + 1)):
        notes.append(f"Deepness: it feeds the layer's first {len(meta.bands)} bands; the model "
                     f"reads bands {','.join(map(str, meta.bands))}: reorder the layer's bands")
    return notes


def export_onnx(checkpoint: str | Path, output: str | Path, tile: int | None = None,
                resolution_cm: float | None = None, overwrite: bool = False) -> ExportResult:
    """Export ``checkpoint`` to the ONNX file ``output`` (see the module docstring).

    Args:
        checkpoint: geounet ``.safetensors`` checkpoint.
        output: ``.onnx`` file, written atomically; never the checkpoint itself.
        tile: the fixed square tile edge in pixels (default: the checkpoint's tile).
        resolution_cm: pixel size of the training imagery in cm (Deepness's ``resolution``).
        overwrite: replace an existing ``output``.
    """
    start = time.perf_counter()
    checkpoint, output = Path(checkpoint), Path(output)
    if output.suffix.lower() != ".onnx":
        raise ConfigError(f"{output}: give an output name ending in .onnx (geounet predict "
                          "recognizes exported models by it)")
    check_output(output, [checkpoint], overwrite)
    if resolution_cm is not None and not (0 < resolution_cm < math.inf):
        raise ConfigError(f"resolution must be a positive number of cm, got {resolution_cm}")
    import onnx  # a dependency of the export only

    net, meta = load_checkpoint(checkpoint, "cpu")
    tile = meta.tile_size if tile is None else tile
    if not 16 <= tile <= MAX_TILE:
        raise ConfigError(f"tile must be 16..{MAX_TILE} px, got {tile}")
    if 2 * meta.overlap >= tile:
        raise ConfigError(f"tile {tile} px is too small for the model's overlap of "
                          f"{meta.overlap} px; give --tile above {2 * meta.overlap}")
    meta = replace(meta, tile_size=tile)
    model = onnx.load_from_string(trace_onnx(net, (meta.arch.in_channels, tile, tile)))
    record = {"format": ONNX_FORMAT, "version": ONNX_VERSION, "metadata": asdict(meta)}
    props = deepness_metadata(meta, resolution_cm) | {METADATA_KEY: json.dumps(record)}
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "geounet", __version__
    model.doc_string = (f"geounet U-Net {meta.source.get('name', '')}: input {INPUT_NAME} "
                        f"(N, {meta.arch.in_channels}, {tile}, {tile}) float32 = "
                        f"(x - mean) / std; output {OUTPUT_NAME} (N, {meta.arch.classes}, "
                        f"{tile}, {tile})").replace("U-Net :", "U-Net:")
    with atomic_path(output) as tmp:
        try:
            tmp.write_bytes(model.SerializeToString())
        except OSError as exc:
            raise write_failed(output, exc) from exc
    activation = "sigmoid" if meta.arch.classes == 1 else "softmax"
    return ExportResult(output, tile, meta.arch.in_channels, meta.arch.classes, activation,
                        props, deepness_notes(meta), time.perf_counter() - start)
