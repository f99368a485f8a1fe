"""``geounet vectorize``: class mask raster to polygons in a GIS vector format."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geounet.cli.options import overwrite, verbosity
from geounet.vectorize import VectorizeConfig, vectorize_raster

vector_options = [
    click.option("--format", "driver", help="gpkg, geojson, shapefile or parquet "
                 "(default: from the extension)."),
    click.option("--connectivity", default=4, show_default=True, type=click.Choice(["4", "8"])),
    click.option("--min-area", default=0.0, show_default=True, type=click.FloatRange(0),
                 help="Drop polygons smaller than this (square map units)."),
    click.option("--simplify", default=0.0, show_default=True, type=click.FloatRange(0),
                 help="Topology-preserving simplification tolerance (map units)."),
    click.option("--crs", help="Reproject to this CRS (declares it for a raster without one)."),
    click.option("--pixel-coordinates", is_flag=True,
                 help="Accept a raster without a CRS and write pixel coordinates."),
]


def with_vector_options(func):
    for option in reversed(vector_options):
        func = option(func)
    return func


def vector_config(connectivity: str, min_area: float, simplify: float) -> VectorizeConfig:
    return VectorizeConfig(connectivity=int(connectivity), min_area=min_area, simplify=simplify)


@click.command("vectorize")
@click.argument("mask", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Vector file (.gpkg, .geojson, .shp, .parquet).")
@with_vector_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@overwrite
@verbosity
def command(mask, output, driver, connectivity, min_area, simplify, crs, pixel_coordinates,
            as_json, overwrite, quiet, verbose) -> None:
    """Polygonize MASK block by block (merged exactly across blocks) with area and perimeter."""
    result = vectorize_raster(mask, output, vector_config(connectivity, min_area, simplify),
                              driver, crs, pixel_coordinates, overwrite)
    summary = {"output": str(result.output), "features": result.features,
               "area_m2": round(result.area_m2, 3), "format": result.driver}
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        click.echo(f"wrote {result.features} features ({result.area_m2:.1f} m2) to "
                   f"{result.output} ({result.driver})", err=True)
