"""``geounet train``: train a U-Net (binary or multi-class) from a YAML config and/or flags."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geounet.cli.options import InputPath, OutputPath, overwrite, verbosity
from geounet.errors import ConfigError
from geounet.outputs import check_outputs
from geounet.palette import palette_file

_FILE = InputPath()
_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command("train")
@click.option("-c", "--config", "config_file", type=_FILE,
              help="YAML training config (keys as in TrainConfig); flags override its keys.")
@click.option("--image", "images", multiple=True, type=_FILE, help="Training image (repeatable).")
@click.option("--label", "--mask", "labels", multiple=True, type=_FILE,
              help="Label for each --image: raster mask of class ids (nodata ignored; an "
                   "RGB mask with --palette) or vector file (GeoPackage, GeoJSON, Shapefile).")
@click.option("--image-dir", type=_DIR, help="Folder of training images (paired by name).")
@click.option("--label-dir", type=_DIR, help="Folder of their labels (same file stems).")
@click.option("--split-file", type=_FILE, help="Lines 'NAME SPLIT': keep names of --split.")
@click.option("--split", help="Split to train on (default train).")
@click.option("--val-image", "val_images", multiple=True, type=_FILE,
              help="Validation image (repeatable); default: a share of the training data.")
@click.option("--val-label", "val_labels", multiple=True, type=_FILE)
@click.option("-o", "--output", required=True, type=OutputPath(),
              help="Best checkpoint to write (.safetensors); the last one goes beside it.")
@click.option("--resume", is_flag=True,
              help="Continue the run whose last checkpoint lies beside --output.")
@click.option("--classes", help="Class names by id, background first: two (e.g. "
              "background,crack) train a binary model (with --softmax a two-channel softmax one), "
              "more a softmax model "
              "(background,building,road,water).")
@click.option("--class-field", help="Attribute of vector labels with each feature's class "
              "id or name.")
@click.option("--ignore-value", type=click.IntRange(0, 254),
              help="Label value meaning unlabelled (besides nodata and 255).")
@click.option("--palette", help="RGB label masks: colours to classes, inline "
              "(building=#ff0000,water=#0000ff; names or ids, a class may have several "
              "colours) or a YAML/JSON file {'#ff0000': building, ...}. A colour not "
              "listed is an error.")
@click.option("--unlabelled-outside", is_flag=True, default=None,
              help="Vector labels with --class-field: pixels outside every feature are "
                   "ignored, not background (label background areas as class 0).")
@click.option("--softmax", is_flag=True, default=None,
              help="With two classes: train a two-channel softmax model instead of the "
                   "binary sigmoid one.")
@click.option("--class-weights", help="Per-class loss weights, comma-separated, or 'auto' "
              "(inverse square root of class frequency); softmax models.")
@click.option("--width", type=click.IntRange(1))
@click.option("--depth", type=click.IntRange(1))
@click.option("--patch", type=click.IntRange(16))
@click.option("--batch-size", type=click.IntRange(1))
@click.option("--epochs", type=click.IntRange(1))
@click.option("--steps-per-epoch", type=click.IntRange(1))
@click.option("--lr", type=click.FloatRange(0, min_open=True))
@click.option("--loss", type=click.Choice(["bce_dice", "focal_dice", "bce"]))
@click.option("--pos-fraction", type=click.FloatRange(0, 1),
              help="Share of windows centred on a foreground pixel (default 0.5).")
@click.option("--hard-fraction", type=click.FloatRange(0, 1),
              help="Share of windows centred on pixels the model got wrong after the "
                   "previous epoch (hard-example mining; default 0: off).")
@click.option("--line-width", type=click.FloatRange(0), help="Full width of vector lines.")
@click.option("--line-width-units", type=click.Choice(["pixels", "map", "metres"]))
@click.option("--monitor", type=click.Choice(["iou", "miou", "f1", "tolerant_f1"]),
              help="Validation score that picks the best checkpoint.")
@click.option("--patience", type=click.IntRange(1), help="Early stop after N flat epochs.")
@click.option("--max-minutes", type=click.FloatRange(0, min_open=True),
              help="Stop when one more epoch would end past this training time.")
@click.option("--seed", type=int)
@click.option("--threads", type=click.IntRange(1))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA.")
@click.option("--name", help="Model name recorded in the checkpoint.")
@overwrite
@verbosity
def command(config_file, output, resume, classes, class_weights, name, overwrite, quiet,
            verbose, **flags) -> None:
    """Train a U-Net; write the best checkpoint (by validation score) and the last one."""
    from geounet.train import TrainConfig, last_paths, train_model  # torch: loaded on use

    values = {k: list(v) if isinstance(v, tuple) else v for k, v in flags.items()
              if v is not None and v != ()}
    if classes is not None:
        names = tuple(c.strip() for c in classes.split(","))
        if len(names) < 2 or not all(names):
            raise ConfigError(f"--classes needs two or more names, background first "
                              f"(background,foreground), got {classes!r}")
        values["class_names"] = names
    if class_weights is not None:
        try:
            values["class_weights"] = class_weights.strip() if class_weights.strip() == "auto" \
                else [float(w) for w in class_weights.split(",")]
        except ValueError:
            raise ConfigError(f"--class-weights: give numbers separated by commas or 'auto', "
                              f"got {class_weights!r}") from None
    if config_file is not None:
        config = TrainConfig.load(config_file, **values)
    else:
        config = TrainConfig.build(values, origin="flags")
    config = TrainConfig.build({**config.__dict__,
                                "source": {**config.source, "name": name or output.stem}})
    # Every file the run reads is never one it writes, even with --overwrite or --resume
    # (which replaces the run's own checkpoints).
    inputs = [*(p for pair in config.pairs() for p in pair), *config.val_images,
              *config.val_labels, config_file, config.split_file,
              palette_file(flags.get("palette"))]
    check_outputs([output, *last_paths(output)], inputs, overwrite or resume)
    result = train_model(config, output, resume=resume, progress=not quiet)
    if not quiet:
        summary = result.to_dict()
        summary.pop("history")
        click.echo(json.dumps(summary, default=str))
