"""Fixtures: tiny GeoTIFFs with real CRSs and odd sizes, and tiny random-weight checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from geounet.checkpoint import ModelMetadata, save_checkpoint
from geounet.model import UNet, UNetConfig

TRANSFORM = from_origin(500000.0, 5000000.0, 0.5, 0.5)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def make_raster(tmp_path: Path) -> Callable[..., Path]:
    """Write ``array`` (bands, rows, cols) as a GeoTIFF; returns its path."""

    def make(array: np.ndarray, name: str = "in.tif", crs: str = "EPSG:32633",
             transform=TRANSFORM, nodata=None, **options) -> Path:
        path = tmp_path / name
        profile = {"driver": "GTiff", "width": array.shape[2], "height": array.shape[1],
                   "count": array.shape[0], "dtype": array.dtype.name, "crs": crs,
                   "transform": transform, "nodata": nodata, **options}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
        return path

    return make


@pytest.fixture
def tiny_model(tmp_path: Path) -> Callable[..., Path]:
    """A seeded random U-Net (width 4, depth 2) checkpoint with the given tiling."""

    def make(bands: int = 3, classes: int = 1, tile: int = 64, overlap: int = 16,
             name: str = "model.safetensors") -> Path:
        torch.manual_seed(0)
        arch = UNetConfig(bands, classes, 4, 2)
        model = UNet(arch).eval()
        names = ("background", "thing") if classes == 1 else tuple(f"c{i}" for i in
                                                                     range(classes))
        meta = ModelMetadata(arch, tuple(range(1, bands + 1)), (100.0,) * bands,
                             (50.0,) * bands, names, tile_size=tile, overlap=overlap)
        return save_checkpoint(tmp_path / name, model, meta)

    return make


@pytest.fixture
def rgb(make_raster) -> Path:
    rng = np.random.default_rng(0)
    return make_raster(rng.integers(0, 255, (3, 150, 223), dtype=np.uint8))
