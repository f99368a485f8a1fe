"""``geounet demo``: run the bundled models on the bundled sample scenes and score them."""

from __future__ import annotations

from pathlib import Path

import click

from geounet.cli.options import verbosity

# Scene kind -> the score that matters for it (roads: area overlap; cracks: tolerant F1).
SCENES = {"roads": ("pixel", "iou"), "cracks": ("tolerant", "f1")}


@click.command("demo")
@click.option("--data", default="sample_data", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder with {kind}_image.tif, {kind}_mask.tif and models/{kind}.safetensors.")
@click.option("-o", "--output", "out_dir", default="demo_output", show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", default="auto", show_default=True)
@verbosity
def command(data: Path, out_dir: Path, device: str, quiet, verbose) -> None:
    """Segment every sample scene with its bundled model; write masks and print scores."""
    from geounet.evaluate import evaluate_masks
    from geounet.predict import PredictConfig, predict_raster  # torch: loaded on use

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, (family, metric) in SCENES.items():
        image, truth = data / f"{kind}_image.tif", data / f"{kind}_mask.tif"
        mask = out_dir / f"{kind}_mask.tif"
        config = PredictConfig(device=device, overwrite=True, progress=not quiet)
        result = predict_raster(image, data / "models" / f"{kind}.safetensors", mask,
                                out_dir / f"{kind}_probabilities.tif", config)
        score = evaluate_masks(mask, truth)[family][metric]
        rows.append((kind, result, f"{family} {metric}", score))
    click.echo(f"{'scene':<8}{'size':>12}{'tiles':>7}{'seconds':>9}  {'score':<14}{'value':>7}"
               "  output")
    for kind, r, name, score in rows:
        click.echo(f"{kind:<8}{f'{r.width}x{r.height}':>12}{r.tiles:>7}{r.seconds:>9.1f}  "
                   f"{name:<14}{score:>7.3f}  {r.mask}")
