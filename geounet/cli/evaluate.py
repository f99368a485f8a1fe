"""``geounet evaluate``: score a predicted mask against a label mask."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from geounet.cli.options import verbosity
from geounet.evaluate import evaluate_masks


@click.command("evaluate")
@click.argument("prediction", type=click.Path(path_type=Path))
@click.argument("truth", type=click.Path(path_type=Path))
@click.option("--tolerance", default=2.0, show_default=True, type=click.FloatRange(0),
              help="Localisation tolerance in pixels for the tolerant scores.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@verbosity
def command(prediction: Path, truth: Path, tolerance: float, as_json: bool, quiet, verbose
            ) -> None:
    """Precision, recall, F1 and IoU of PREDICTION against TRUTH (mask > 0 is foreground)."""
    report = evaluate_masks(prediction, truth, tolerance)
    if as_json:  # undefined scores (NaN) become null: strict JSON
        clean = {k: {m: None if math.isnan(v) else v for m, v in scores.items()}
                 for k, scores in report.items()}
        click.echo(json.dumps(clean, allow_nan=False))
        return
    click.echo(f"{'scores':<22}{'precision':>10}{'recall':>10}{'F1':>10}{'IoU':>10}")
    for key in ("pixel", "tolerant"):
        s = report[key]
        label = key if key == "pixel" else f"tolerant ({tolerance:g} px)"
        click.echo(f"{label:<22}{s['precision']:>10.4f}{s['recall']:>10.4f}"
                   f"{s['f1']:>10.4f}{s['iou']:>10.4f}")
