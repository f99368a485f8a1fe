"""``geounet preview``: a quicklook PNG of a raster with its mask and vector outlines."""

from __future__ import annotations

from pathlib import Path

import click

from geounet.cli.options import OutputPath, overwrite, parse_bands, verbosity
from geounet.cli.summary import Column, emit, fixed
from geounet.preview import render_preview


@click.command("preview")
@click.argument("image", metavar="IMAGE.tif", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=OutputPath(),
              help="The PNG to write.")
@click.option("--mask", type=click.Path(path_type=Path),
              help="Class mask on the image's grid, drawn as a translucent overlay.")
@click.option("--vector", multiple=True, type=click.Path(path_type=Path),
              help="Vector file drawn as outlines (every layer); repeat for several.")
@click.option("--max-size", default=1024, show_default=True, type=click.IntRange(16),
              help="Longest side of the preview in pixels.")
@click.option("--bands", callback=parse_bands, help="One or three bands to show, e.g. 4,3,2.")
@click.option("--nodata", default="transparent", show_default=True,
              type=click.Choice(["transparent", "grey"]), help="How nodata pixels look.")
@click.option("--opacity", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Mask overlay opacity.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@overwrite
@verbosity
def command(image, output, mask, vector, max_size, bands, nodata, opacity, as_json, overwrite,
            quiet, verbose) -> None:
    """Render IMAGE at reduced resolution (overviews or decimated reads) as a PNG.

    The mask shows as a translucent colour per class (the model's class colours when the
    mask carries them), vectors as outlines; the caption gives the CRS, a legend of every
    class and a scale bar in metres.
    """
    info = render_preview(image, output, mask=mask, vector=list(vector) or None,
                          max_size=max_size, bands=bands, nodata=nodata, opacity=opacity,
                          overwrite=overwrite)
    summary = {"output": str(info.output), "source_size": list(info.source_size),
               "size": list(info.size), "factor": list(info.factor), "crs": info.crs,
               "metres_per_pixel": info.metres_per_pixel, "scale_bar_m": info.scale_bar_m,
               "mask_pixels": info.mask_pixels,
               "legend": [{"class": name, "color": colour} for name, colour in info.legend],
               "features": info.features,
               "seconds": round(info.seconds, 3)}
    row = {"image": Path(image).name, "size": "{}x{}".format(*info.size),
           "factor": info.factor[0], "m_px": info.metres_per_pixel,
           "mask": sum(info.mask_pixels.values()) if mask else None,
           "features": info.features if vector else None, "seconds": info.seconds}
    columns = [Column("image", "image", align="<"), Column("size", "preview"),
               Column("factor", "1:n", fixed(2)), Column("m_px", "m/px", fixed(3)),
               Column("mask", "mask px"), Column("features", "features"),
               Column("seconds", "seconds", fixed(2))]
    emit(summary, [row], columns, as_json=as_json, quiet=quiet,
         footer=[f"wrote {info.output}"])
