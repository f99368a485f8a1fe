"""Land cover: train a softmax U-Net on the synthetic scene of seed 0, score seed 1.

The scene (``geounet sample landcover``: background, building, road, water, tree; water is
the rare class, about 0.4 % of the pixels) of seed 0 is the training image, seed 1 the
test image, used for nothing else. Trains with ``geounet.train.train_model`` within
``--minutes`` of training time (the bar: 20 CPU minutes), then runs ``geounet evaluate``'s
``evaluate_model`` on the test scene: per-class IoU, the mean IoU over the foreground
classes, the confusion matrix. With ``--no-rare``, the same run without the per-class
sampling and weights (``pos_fraction`` 0, no ``class_weights``), to show what they buy.

Usage: ``python -m benchmarks.landcover [--minutes 20] [--size 1024] [--threads 2]
[--no-rare]``; prints a Markdown block for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import WORK
from geounet.evaluate import EvaluateConfig, evaluate_model
from geounet.sample_data import LANDCOVER_CLASSES, generate_landcover_scene
from geounet.train import TrainConfig, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--no-rare", action="store_true",
                        help="no per-class window centres and no class weights")
    args = parser.parse_args()
    work = WORK / "landcover"
    train = generate_landcover_scene(work / "seed0", seed=0, size=args.size)
    test = generate_landcover_scene(work / "seed1", seed=1, size=args.size)
    settings = dict(images=[train.image], labels=[train.mask], class_names=LANDCOVER_CLASSES,
                    width=args.width, depth=4, patch=128, batch_size=8, epochs=args.epochs,
                    steps_per_epoch=args.steps, lr=3e-3, monitor="miou", seed=0,
                    threads=args.threads, device="cpu", max_minutes=args.minutes,
                    tile_size=512, overlap=64,
                    pos_fraction=0.0 if args.no_rare else 0.6,
                    class_weights=None if args.no_rare else "auto")
    config = TrainConfig(**settings)
    name = "landcover_plain" if args.no_rare else "landcover"
    start = time.perf_counter()
    result = train_model(config, work / f"{name}.safetensors", progress=False)
    train_s = time.perf_counter() - start
    report = evaluate_model(result.checkpoint, [(test.image, test.mask)],
                            EvaluateConfig(thresholds=0), device="cpu", threads=args.threads)
    ious = {n: report["classes"][n]["pixel"]["iou"] for n in LANDCOVER_CLASSES}
    (work / f"{name}_report.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"### Land cover ({'no rare-class sampling/weights' if args.no_rare else 'default'})")
    print(f"train seed 0, test seed 1, {args.size} px at 0.5 m; width {args.width}, depth 4, "
          f"patch 128, batch 8, {result.epochs} epochs x {args.steps} steps "
          f"({result.stopped}); {args.threads} threads, torch {torch.__version__}; "
          f"training {result.train_seconds / 60:.1f} min (wall {train_s / 60:.1f} min)")
    print("| class | IoU |\n|---|---|")
    for n, v in ious.items():
        print(f"| {n} | {v:.3f} |")
    print(f"| **mean (foreground)** | **{report['mean_iou']:.3f}** |")
    print(f"best validation epoch {result.best.get('epoch')}: miou {result.best['miou']:.3f}")


if __name__ == "__main__":
    main()
