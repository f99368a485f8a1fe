"""``geounet sample``: generate synthetic georeferenced scenes with labels."""

from __future__ import annotations

from pathlib import Path

import click

from geounet.cli.options import verbosity


@click.command("sample")
@click.argument("kinds", nargs=-1, type=click.Choice(["roads", "cracks", "landcover"]))
@click.option("-o", "--output", "out_dir", default="sample_data", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder to write into.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--size", type=click.IntRange(64), help="Scene edge in pixels (default per kind).")
@verbosity
def command(kinds, out_dir: Path, seed: int, size: int | None, quiet, verbose) -> None:
    """Write image, mask and vector labels of synthetic scenes (default: roads and cracks).

    landcover: class ids 0 background, 1 building, 2 road, 3 water, 4 tree.

    The scenes are deterministic for a seed; the bundled ones use seed 0.
    """
    from geounet.sample_data import SCENES

    for kind in kinds or ("roads", "cracks"):
        kwargs = {"size": size} if size else {}
        files = SCENES[kind](out_dir, seed=seed, **kwargs)
        if not quiet:
            click.echo(f"{kind}: {files.image}, {files.mask}, {files.labels}", err=True)
