"""Efficiency: end-to-end ``predict_raster`` against the bare model on the same tiles.

Runs, alternately in one process, (A) ``predict_raster`` on the road scene (read, normalize,
tile, infer, blend, write the mask) and (B) the bare model's forward pass over the same number
of tiles of the same shape, batch size and torch threads, on tensors already in memory, in the
memory layout the torch engine uses on this device. Prints B/A per pair: the share of the bare
model's pixel rate that the whole pipeline keeps. The pipeline runs the torch engine (the
forward pass B times) unless ``--engine`` says otherwise.
Usage: ``python -m benchmarks.efficiency [--pairs 3] [--engine torch]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import rasterio
import torch

from benchmarks.common import SAMPLE, WORK
from geounet.checkpoint import load_checkpoint
from geounet.model import fastest_memory_format
from geounet.predict import PredictConfig, predict_raster
from geounet.tiling import TileGrid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SAMPLE / "models" / "roads.safetensors")
    parser.add_argument("--image", type=Path, default=SAMPLE / "roads_image.tif")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--engine", default="torch", choices=["torch", "onnx", "auto"])
    args = parser.parse_args()
    model, meta = load_checkpoint(args.model)
    with rasterio.open(args.image) as src:
        grid = TileGrid(src.height, src.width, meta.tile_size, meta.overlap)
    tiles, batch = grid.tile_count, args.batch_size
    layout = fastest_memory_format(torch.device("cpu"))
    model = model.to(memory_format=layout)
    inputs = torch.randn(batch, meta.arch.in_channels, grid.tile_height, grid.tile_width)
    inputs = inputs.contiguous(memory_format=layout)

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, tiles, batch):
                torch.sigmoid(model(inputs[: min(batch, tiles - i)])).numpy()
        return time.perf_counter() - start

    def pipeline(out: Path) -> float:
        start = time.perf_counter()
        config = PredictConfig(batch_size=batch, progress=False, overwrite=True,
                               engine=args.engine, device="cpu")
        predict_raster(args.image, (model, meta), out, None, config)
        return time.perf_counter() - start

    raster_px = grid.height * grid.width
    print(f"{args.image.name}: {grid.width}x{grid.height} px, {tiles} tiles of "
          f"{grid.tile_height}x{grid.tile_width}, batch {batch}, torch threads "
          f"{torch.get_num_threads()}, engine {args.engine}, bare layout {layout}")
    print(f"{'pair':<6}{'pipeline s':>12}{'bare s':>10}{'pipeline Mpx/s':>16}"
          f"{'bare Mpx/s':>12}{'bare/pipeline':>15}")
    bare()  # warm-up: first-call allocations
    ratios = []
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        for pair in range(1, args.pairs + 1):
            a = pipeline(Path(tmp) / "mask.tif")
            b = bare()
            ratios.append(b / a)
            print(f"{pair:<6}{a:>12.2f}{b:>10.2f}{raster_px / a / 1e6:>16.3f}"
                  f"{raster_px / b / 1e6:>12.3f}{b / a:>15.3f}")
    print(f"median efficiency (bare time / pipeline time): {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
