"""Accuracy of the bundled models on sample scenes generated with another seed.

Generates the road and crack scenes with ``--seed`` (default 1; the bundled models were
trained on seed 0), runs ``predict_raster`` with each bundled model, and scores the masks:
road IoU, crack F1 with a 2-pixel tolerance (the crack-literature protocol), plus exact pixel
scores. Usage: ``python benchmarks/accuracy.py [--seed 1]``.
"""

from __future__ import annotations

import argparse

from benchmarks.common import SAMPLE, WORK
from geounet.evaluate import evaluate_masks
from geounet.predict import PredictConfig, predict_raster
from geounet.sample_data import SCENES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    folder = WORK / f"scenes_seed{args.seed}"
    print(f"{'scene':<8}{'pixel P':>9}{'pixel R':>9}{'pixel F1':>9}{'IoU':>8}"
          f"{'tol P':>8}{'tol R':>8}{'tol F1':>8}")
    for kind, generate in SCENES.items():
        files = generate(folder, seed=args.seed)
        mask = folder / f"{kind}_predicted.tif"
        predict_raster(files.image, SAMPLE / "models" / f"{kind}.safetensors", mask, None,
                       PredictConfig(progress=False, overwrite=True))
        r = evaluate_masks(mask, files.mask, tolerance=2)
        p, t = r["pixel"], r["tolerant"]
        print(f"{kind:<8}{p['precision']:>9.4f}{p['recall']:>9.4f}{p['f1']:>9.4f}"
              f"{p['iou']:>8.4f}{t['precision']:>8.4f}{t['recall']:>8.4f}{t['f1']:>8.4f}")


if __name__ == "__main__":
    main()
