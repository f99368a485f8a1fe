"""Seams: tiled inference versus one whole-image forward pass of the same model.

On a 2048 x 2048 crop of the road scene, the bundled road model is run (a) once over the whole
raster in memory and (b) through ``predict_raster`` with the default tiling and Hann blending,
with plain averaging over the same overlap, and with no overlap. For each, it prints the mean
and max absolute probability difference to (a), the IoU of the foreground masks, and the
compute overhead of the overlap (pixels run through the model / raster pixels), all from one
run. Usage: ``python benchmarks/seams.py``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import torch

from benchmarks.common import SAMPLE, WORK, mosaic
from geounet.checkpoint import load_checkpoint
from geounet.io import normalize, read_masked
from geounet.metrics import pixel_scores
from geounet.model import logits_to_probabilities
from geounet.predict import PredictConfig, predict_raster
from geounet.tiling import TileGrid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=SAMPLE / "models" / "roads.safetensors")
    parser.add_argument("--image", type=Path, default=SAMPLE / "roads_image.tif")
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    raster = mosaic(args.image, WORK / f"seams_{args.size}.tif", args.size)
    model, meta = load_checkpoint(args.model)

    with rasterio.open(raster) as src:
        data, valid = read_masked(src, meta.bands, src.window(*src.bounds))
    x = torch.from_numpy(normalize(data, valid, meta.mean, meta.std))[None]
    with torch.inference_mode():
        whole = logits_to_probabilities(model(x))[0, 0].numpy()
    whole_mask = whole >= meta.threshold

    variants = [
        ("hann (default)", dict(window="hann")),
        ("plain average", dict(window="average")),
        ("no overlap", dict(overlap=0, tile_size=meta.tile_size - meta.overlap)),
    ]
    print(f"raster {args.size}x{args.size}, model {args.model.name}, tile {meta.tile_size}, "
          f"overlap {meta.overlap}; reference: one whole-image forward pass")
    print(f"{'variant':<16}{'mean |dp|':>12}{'max |dp|':>10}{'mask IoU':>10}{'overhead':>10}")
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        for name, overrides in variants:
            out = Path(tmp) / f"{name.split()[0]}.tif"
            config = PredictConfig(progress=False, **overrides)
            predict_raster(raster, (model, meta), None, out, config)
            with rasterio.open(out) as dst:
                tiled = dst.read(1)
            grid = TileGrid(args.size, args.size, config.tile_size or meta.tile_size,
                            meta.overlap if config.overlap is None else config.overlap)
            diff = np.abs(tiled - whole)
            iou = pixel_scores(tiled >= meta.threshold, whole_mask).iou
            print(f"{name:<16}{diff.mean():>12.2e}{diff.max():>10.3f}{iou:>10.5f}"
                  f"{grid.compute_overhead:>9.3f}x")


if __name__ == "__main__":
    main()
