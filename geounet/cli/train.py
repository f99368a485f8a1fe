"""``geounet train``: train a binary U-Net on image/mask raster pairs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geounet.cli.options import overwrite, verbosity
from geounet.errors import ConfigError
from geounet.io import check_output


@click.command("train")
@click.option("--image", "images", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training image (repeatable).")
@click.option("--mask", "masks", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Label mask for each --image (>0 is foreground, its nodata ignored).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Checkpoint to write (.safetensors).")
@click.option("--classes", default="background,foreground", show_default=True,
              help="Background and foreground class names.")
@click.option("--width", default=16, show_default=True, type=click.IntRange(1))
@click.option("--depth", default=4, show_default=True, type=click.IntRange(1))
@click.option("--patch", default=256, show_default=True, type=click.IntRange(16))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--steps", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=3e-3, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", type=click.IntRange(1))
@click.option("--name", default="", help="Model name recorded in the checkpoint.")
@overwrite
@verbosity
def command(images, masks, output, classes, width, depth, patch, batch_size, steps, lr, seed,
            threads, name, overwrite, quiet, verbose) -> None:
    """Train a U-Net and write the checkpoint with the best validation IoU."""
    from geounet.train import TrainConfig, train_model  # torch: loaded on use

    names = tuple(c.strip() for c in classes.split(","))
    if len(names) != 2:
        raise ConfigError(f"--classes needs two names (background,foreground), got {classes!r}")
    check_output(output, list(images) + list(masks), overwrite)
    config = TrainConfig(
        class_names=names, width=width, depth=depth, patch=patch, batch_size=batch_size,
        steps=steps, lr=lr, seed=seed, threads=threads, source={"name": name or output.stem},
    )
    best = train_model(list(images), list(masks), output, config, progress=not quiet)
    if not quiet:
        click.echo(json.dumps({"checkpoint": str(output), **{k: round(v, 4)
                                                             for k, v in best.items()}}))
