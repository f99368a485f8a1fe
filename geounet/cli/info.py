"""``geounet info``: show what a checkpoint carries."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("info")
@click.argument("checkpoint", type=click.Path(path_type=Path))
def command(checkpoint: Path) -> None:
    """Print a checkpoint's metadata (architecture, bands, normalization, classes and their
    colours, ignore value) as JSON; class_colors shows the default palette when none is set."""
    from geounet.engines import read_model_metadata  # torch: loaded on use

    meta = read_model_metadata(checkpoint)
    out = json.loads(meta.to_json())
    out["class_colors"] = list(meta.colors)
    click.echo(json.dumps(out, sort_keys=True))
