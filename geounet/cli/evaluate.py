"""``geounet evaluate``: score predictions (or a model) against labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from geounet.cli.options import OutputPath, parse_class_ids, setting_option, verbosity
from geounet.errors import ConfigError
from geounet.inputs import require_regular_file
from geounet.outputs import atomic_path, check_output
from geounet.settings import PredictSettings


@click.command("evaluate")
@click.argument("prediction", required=False, type=click.Path(path_type=Path))
@click.argument("truth", required=False, type=click.Path(path_type=Path))
@click.option("-m", "--model", type=click.Path(path_type=Path),
              help="Checkpoint (or exported .onnx) to run on --images instead of giving "
              "PREDICTION.")
@click.option("--images", type=click.Path(exists=True, path_type=Path),
              help="Image file or folder for --model.")
@click.option("--labels", type=click.Path(exists=True, path_type=Path),
              help="Label file or folder (rasters or vector files) for --images.")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Lines 'NAME SPLIT': evaluate only the names of --split.")
@click.option("--split", default="test", show_default=True)
@click.option("--tolerance", default=2.0, show_default=True, type=click.FloatRange(0),
              help="Localisation tolerance in pixels for the tolerant scores.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Foreground cut of probability rasters (default: the model's, or 0.5).")
@click.option("--thresholds", default=99, show_default=True, type=click.IntRange(0),
              help="Thresholds swept for ODS/OIS on probability rasters (0: none).")
@click.option("--line-width", default=3.0, show_default=True, type=click.FloatRange(0),
              help="Full width given to vector line labels.")
@click.option("--line-width-units", default="pixels", show_default=True,
              type=click.Choice(["pixels", "map", "metres"]))
@click.option("--class-field", help="Attribute of vector labels with each feature's class "
              "id or name (names as the model or the prediction's classes call them); "
              "default: every feature is class 1.")
@click.option("--palette", help="TRUTH rasters are RGB masks: colours to classes as in "
              "training, inline (building=#ff0000,water=#0000ff; names or ids) or a "
              "YAML/JSON file {'#ff0000': building, ...}. A colour not listed is an error.")
@click.option("--linear-classes", callback=parse_class_ids,
              help="Class ids of linear features (roads, cracks) that get the tolerant "
              "scores, e.g. 2,4 (unset: every foreground class).")
@setting_option(PredictSettings, "device")
@setting_option(PredictSettings, "engine")
@setting_option(PredictSettings, "threads")
@setting_option(PredictSettings, "tta")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("-o", "--output", type=OutputPath(),
              help="Also write the full JSON report (with per-image scores) here.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output.")
@verbosity
def command(prediction, truth, model, images, labels, split_file, split, tolerance,
            threshold, thresholds, line_width, line_width_units, class_field, palette,
            linear_classes, device, engine, threads, tta, as_json, output, overwrite, quiet,
            verbose) -> None:
    """Precision, recall, F1 and IoU per class of PREDICTION against TRUTH.

    PREDICTION and TRUTH are rasters or folders paired by file name; TRUTH may be vector
    files (with --class-field for several classes) or RGB masks (with --palette). Or give
    --model with --images and --labels to run a checkpoint first.
    Probability rasters (float) also get ODS/OIS over thresholds.
    """
    from geounet.evaluate import EvaluateConfig, evaluate_model, evaluate_pairs
    from geounet.labels import LabelConfig, pair_folders, select_split
    from geounet.palette import palette_file, parse_palette

    if model is not None:
        if prediction is not None or images is None or labels is None:
            raise ConfigError("with --model give --images and --labels, not PREDICTION")
        source, target = images, labels
    elif prediction is None or truth is None:
        raise ConfigError("give PREDICTION and TRUTH, or --model with --images and --labels")
    else:
        source, target = prediction, truth
    for path in (source, target):
        if not path.is_dir():
            require_regular_file(path)
    if source.is_dir() != target.is_dir():
        raise ConfigError(f"{source} and {target}: give two files or two folders")
    pairs = pair_folders(source, target) if source.is_dir() else [(source, target)]
    if output is not None:   # never one of the files read, paired ones of folders included
        check_output(output, [*(p for pair in pairs for p in pair), model, split_file,
                              palette_file(palette)], overwrite)
    pairs = select_split(pairs, split_file, split)
    try:
        colours = None if palette is None else parse_palette(palette)
    except ValueError as exc:
        raise ConfigError(f"--palette: {exc}") from None
    config = EvaluateConfig(tolerance, threshold, thresholds,
                            LabelConfig(line_width, line_width_units, class_field=class_field),
                            palette=colours, linear_classes=linear_classes)
    if model is not None:
        report = evaluate_model(model, pairs, config, device, threads, progress=not quiet,
                                tta=tta, engine=engine)
    else:
        report = evaluate_pairs(pairs, config, progress=not quiet and len(pairs) > 1)
    foreground = [name for name in report["classes"] if name != _background(report)]
    if len(foreground) == 1:  # binary: the foreground's scores up front
        report = {**report["classes"][foreground[0]], **report}
    text = json.dumps(_strict(report), allow_nan=False)
    if output is not None:
        with atomic_path(output) as tmp:
            tmp.write_text(text + "\n")
    if as_json:
        click.echo(json.dumps(_strict({k: v for k, v in report.items() if k != "per_image"}),
                              allow_nan=False))
    elif not quiet or output is None:
        _print_table(report, tolerance)


def _background(report: dict) -> str:
    return next(iter(report["classes"]))


def _strict(value):
    """NaN (undefined scores) becomes null: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


def _print_table(report: dict, tolerance: float) -> None:
    tolerant = f"tolerant ({tolerance:g} px)"
    rows = []
    if "pixel" in report:
        rows.append(("pixel", report["pixel"]))
        if "tolerant" in report:
            rows.append((tolerant, report["tolerant"]))
    for name, scores in report["classes"].items():
        rows.append((f"{name} pixel", scores["pixel"]))
        if "tolerant" in scores:
            rows.append((f"{name} {tolerant}", scores["tolerant"]))
    width = max(len(label) for label, _ in [("scores", None), *rows]) + 2
    click.echo(f"{'scores':<{width}}{'precision':>10}{'recall':>10}{'F1':>10}{'IoU':>10}")
    for label, s in rows:
        click.echo(f"{label:<{width}}{s['precision']:>10.4f}{s['recall']:>10.4f}"
                   f"{s['f1']:>10.4f}{s['iou']:>10.4f}")
    if "mean_iou" in report:
        click.echo(f"mean IoU over foreground classes {report['mean_iou']:.4f}")
        _print_confusion(report["confusion"])
    if "ods_ois" in report:
        o = report["ods_ois"]
        click.echo(f"ODS tolerant F1 {o['ods_f1']:.4f} (threshold {o['ods_threshold']:.2f}, "
                   f"IoU {o['ods_iou']:.4f}); OIS tolerant F1 {o['ois_f1']:.4f}")
    click.echo(f"images: {report['images']}")


def _print_confusion(confusion: dict) -> None:
    """Pixels per true class (rows) and predicted class (columns)."""
    names = confusion["classes"]
    width = max(10, *(len(n) + 2 for n in names))
    click.echo("confusion (rows: true, columns: predicted; pixels)")
    click.echo(f"{'':<{width}}" + "".join(f"{n:>{width}}" for n in names))
    for name, row in zip(names, confusion["matrix"]):
        click.echo(f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
