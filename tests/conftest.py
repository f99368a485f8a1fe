"""Fixtures: tiny GeoTIFFs with real CRSs and odd sizes, and tiny random-weight checkpoints.

Everything here is small on purpose (U-Nets of width 4 and depth 2, rasters of at most a few
hundred pixels a side, one torch thread). The whole suite (`make test`, what CI runs) takes a
few minutes on 2 cores; `make test-fast` leaves out the end-to-end modules below (real
processes, Dask clusters, signals, every hostile case through the CLI) for a loop of under a
minute.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from geounet.checkpoint import ModelMetadata, save_checkpoint
from geounet.model import UNet, UNetConfig
from geounet.predict import PredictConfig

# End-to-end modules: marked ``slow`` as a whole, so ``-m "not slow"`` is the quick loop.
END_TO_END = {"test_hostile", "test_hostile_inputs", "test_dask_faults", "test_schedule",
              "test_signals", "test_demo", "test_distributed", "test_workflow", "test_report",
              "test_bundled_models", "test_cli", "test_gis_clients", "test_odd_inputs",
              "test_train", "test_train_multiclass", "test_onnx"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in END_TO_END:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLI reconfigures the root logger onto CliRunner's stderr; undo that afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 5000000.0, 0.5, 0.5)
MEAN, STD = 100.0, 50.0


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine is shared: one torch thread keeps timings stable and the suite fast."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_raster(tmp_path: Path) -> Callable[..., Path]:
    """Write ``array`` (bands, rows, cols) as a GeoTIFF in ``tmp_path``; returns its path."""

    def make(array: np.ndarray, name: str = "in.tif", crs: str | None = CRS,
             transform=TRANSFORM, nodata=None, **options) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        profile = {"driver": "GTiff", "width": array.shape[2], "height": array.shape[1],
                   "count": array.shape[0], "dtype": array.dtype.name, "crs": crs,
                   "transform": transform, "nodata": nodata, **options}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
        return path

    return make


def build_metadata(arch: UNetConfig, tile: int = 64, overlap: int = 16,
                   names: tuple[str, ...] | None = None) -> ModelMetadata:
    """Metadata for ``arch``: bands 1..n, mean 100 and std 50 per band, the given tiling."""
    bands = arch.in_channels
    if names is None:
        names = (("background", "thing") if arch.classes == 1
                 else tuple(f"c{i}" for i in range(arch.classes)))
    return ModelMetadata(arch, tuple(range(1, bands + 1)), (MEAN,) * bands, (STD,) * bands,
                         names, tile_size=tile, overlap=overlap, source={"name": "tiny"})


def random_unet(arch: UNetConfig, seed: int = 0) -> UNet:
    """A seeded random U-Net in eval mode, with non-trivial BatchNorm running statistics."""
    torch.manual_seed(seed)
    model = UNet(arch)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.8, 1.2)
    return model.eval()


@pytest.fixture
def make_unet() -> Callable[..., UNet]:
    """``make_unet(arch, seed=0)``: see :func:`random_unet`."""
    return random_unet


@pytest.fixture
def make_metadata() -> Callable[..., ModelMetadata]:
    """``make_metadata(arch, tile=64, overlap=16, names=None)``: see :func:`build_metadata`."""
    return build_metadata


@pytest.fixture
def tiny_model(tmp_path: Path) -> Callable[..., Path]:
    """Save a seeded random U-Net (width 4, depth 2 by default) checkpoint; returns its path."""

    def make(bands: int = 3, classes: int = 1, tile: int = 64, overlap: int = 16,
             name: str = "model.safetensors", width: int = 4, depth: int = 2,
             bilinear: bool = True, seed: int = 0) -> Path:
        arch = UNetConfig(bands, classes, width, depth, bilinear)
        torch.manual_seed(seed)
        model = UNet(arch).eval()
        return save_checkpoint(tmp_path / name, model, build_metadata(arch, tile, overlap))

    return make


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A tiny 3-band binary checkpoint (random weights, tile 64, overlap 16)."""
    arch = UNetConfig(3, 1, 4, 2)
    return save_checkpoint(tmp_path / "tiny.safetensors", random_unet(arch, seed=0),
                           build_metadata(arch))


@pytest.fixture
def constant_model() -> Callable[..., tuple[UNet, ModelMetadata]]:
    """A U-Net whose every weight is zero except the final bias: constant logits everywhere.

    In eval mode every BatchNorm outputs its (zero) bias, so the features are all zero and
    the logits equal ``bias`` at every pixel whatever the input.
    """

    def make(bias: float | tuple[float, ...] = 0.7, bands: int = 3, tile: int = 64,
             overlap: int = 16) -> tuple[UNet, ModelMetadata]:
        biases = (bias,) if isinstance(bias, (int, float)) else tuple(bias)
        arch = UNetConfig(bands, len(biases), 4, 2)
        model = UNet(arch).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
            model.outc.bias.copy_(torch.tensor(biases))
        return model, build_metadata(arch, tile, overlap)

    return make


@pytest.fixture
def rgb(make_raster) -> Path:
    """A 3-band uint8 raster of odd size (150 x 223) in UTM 33N."""
    rng = np.random.default_rng(0)
    return make_raster(rng.integers(0, 255, (3, 150, 223), dtype=np.uint8))


@pytest.fixture
def odd_rgb(make_raster) -> Path:
    """A 3-band uint8 raster of odd size (137 rows x 229 cols): several 64 px tiles each way."""
    rng = np.random.default_rng(7)
    return make_raster(rng.integers(0, 255, (3, 137, 229), dtype=np.uint8), name="odd.tif")


@pytest.fixture
def quiet() -> Callable[..., PredictConfig]:
    """PredictConfig on the CPU without a progress bar."""

    def make(**kwargs) -> PredictConfig:
        return PredictConfig(device="cpu", progress=False, **kwargs)

    return make
