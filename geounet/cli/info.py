"""``geounet info``: show what a checkpoint carries."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("info")
@click.argument("checkpoint", type=click.Path(path_type=Path))
def command(checkpoint: Path) -> None:
    """Print a checkpoint's metadata (architecture, bands, normalization, classes) as JSON."""
    from geounet.checkpoint import read_metadata  # torch: loaded on use

    click.echo(read_metadata(checkpoint).to_json())
