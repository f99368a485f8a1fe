"""Preview cost: ``geounet preview`` versus ``geounet predict`` on the same 16384^2 raster.

The raster is a mosaic of the road scene (RGB, JPEG-compressed GeoTIFF without overviews, so
the preview decimates while reading). In one run, each command in its own process: predict
with the bundled road model (writing the mask), then the preview of the image alone and of the
image with that mask as overlay. Prints wall time and peak RSS (``ru_maxrss``) of each and
the preview/predict time ratios. Usage:
``python -m benchmarks.preview [--size 16384] [--max-size 1024]``.
"""

from __future__ import annotations

import argparse

from benchmarks.common import SAMPLE, WORK, mosaic
from benchmarks.memory import GEOUNET, peak_rss_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SAMPLE / "models" / "roads.safetensors"))
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--max-size", type=int, default=1024)
    args = parser.parse_args()
    raster = mosaic(SAMPLE / "roads_image.tif", WORK / f"roads_{args.size}.tif", args.size)
    mask = WORK / f"roads_{args.size}_mask.tif"
    runs = {
        "predict": [str(GEOUNET), "predict", str(raster), "-m", args.model, "-o", str(mask),
                    "--overwrite", "-q"],
        "preview": [str(GEOUNET), "preview", str(raster), "-o",
                    str(WORK / f"roads_{args.size}_preview.png"), "--max-size",
                    str(args.max_size), "--overwrite", "-q"],
        "preview+mask": [str(GEOUNET), "preview", str(raster), "--mask", str(mask), "-o",
                         str(WORK / f"roads_{args.size}_preview_mask.png"), "--max-size",
                         str(args.max_size), "--overwrite", "-q"],
    }
    results = {}
    for name, cmd in runs.items():
        results[name] = peak_rss_mib(cmd)
        rss, seconds = results[name]
        print(f"{name:<13} {args.size}x{args.size}: {seconds:7.1f} s, peak RSS {rss:6.0f} MiB")
    predict_s = results["predict"][1]
    for name in ("preview", "preview+mask"):
        print(f"time {name} / predict: {results[name][1] / predict_s:.4f}")


if __name__ == "__main__":
    main()
