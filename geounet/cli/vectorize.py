"""``geounet vectorize``: class mask raster to polygons (and centerlines) in a GIS format."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from geounet.cli.options import OutputPath, overwrite, parse_class_ids, setting_option, verbosity
from geounet.cli.summary import Column, emit, fixed, significant
from geounet.settings import VectorizeSettings

if TYPE_CHECKING:  # geopandas and scikit-image load only when a command vectorizes
    from geounet.vectorize import VectorizeConfig, VectorizeResult

_VECTOR_KEY = "vector_options"


def _collect(ctx: click.Context, param: click.Parameter, value: object) -> object:
    ctx.meta.setdefault(_VECTOR_KEY, {})[param.name] = value
    return value


def _option(*names: str, **kwargs):
    return click.option(*names, callback=_collect, expose_value=False, **kwargs)


def _setting(name: str, parse=None):
    """A vectorize setting's option (:func:`setting_option`), gathered for the request;
    ``parse`` turns its text into the setting's value where click cannot."""

    def gather(ctx: click.Context, param: click.Parameter, value: object) -> object:
        if parse is not None:
            value = parse(ctx, param, value)
        elif name == "connectivity" and value is not None:
            value = int(str(value))   # a choice of "4" or "8"
        return _collect(ctx, param, value)

    return setting_option(VectorizeSettings, name, callback=gather, expose_value=False)


vector_options = [
    _option("--format", "driver", help="gpkg, geojson, shapefile or parquet "
            "(default: from the extension)."),
    _setting("connectivity"),
    _setting("classes", parse=parse_class_ids),
    _setting("min_area"),
    _setting("min_pixels"),
    _setting("fill_holes"),
    _setting("simplify"),
    _option("--centerlines", type=OutputPath(),
            help="Also write skeleton centerlines here; adds length and widths (m) to the "
                 "polygons of the linear classes (the `centerlines` setting)."),
    _setting("linear_classes", parse=parse_class_ids),
    _setting("spur_length"),
    _setting("block_size"),
    _setting("workers"),
    _option("--crs", help="Reproject to this CRS (declares it for a raster without one)."),
    _option("--pixel-coordinates", is_flag=True,
            help="Accept a raster without a CRS: coordinates in its own units (pixels, or its "
            "transform's units when it has one)."),
]


def with_vector_options(func):
    for option in reversed(vector_options):
        func = option(func)
    return func


@dataclass(frozen=True)
class VectorRequest:
    """The vector options of a command line, ready for :func:`vectorize_raster`."""

    config: VectorizeConfig
    driver: str | None
    crs: str | None
    pixel_coordinates: bool
    centerlines: Path | None

    def run(self, mask: Path, output: Path, overwrite: bool, quiet: bool,
            probabilities: Path | None = None) -> VectorizeResult:
        from geounet.vectorize import vectorize_raster

        return vectorize_raster(mask, output, self.config, self.driver, self.crs,
                                self.pixel_coordinates, overwrite, probabilities,
                                self.centerlines, progress=not quiet)


def vector_request(ctx: click.Context) -> VectorRequest:
    """Build the request from the options gathered by :func:`with_vector_options`."""
    from geounet.vectorize import VectorizeConfig

    o = ctx.meta[_VECTOR_KEY]
    return VectorRequest(VectorizeConfig(**_settings(o)), o["driver"], o["crs"],
                         o["pixel_coordinates"], o["centerlines"])


def _settings(options: dict) -> dict:
    """The vectorize settings among the gathered ``options`` (``centerlines``: whether
    lines are asked for)."""
    settings = {name: options[name] for name in VectorizeSettings.model_fields
                if name in options}
    return settings | {"centerlines": options["centerlines"] is not None}


def summary(result: VectorizeResult) -> tuple[dict, dict, list[Column]]:
    """(JSON summary, table row, columns) of a vectorization."""
    data = {"output": str(result.output), "features": result.features,
            "area_m2": round(result.area_m2, 3), "format": result.driver,
            "seconds": round(result.seconds, 3)}
    row = {"output": result.output.name, "features": result.features,
           "area": result.area_m2, "seconds": result.seconds}
    columns = [Column("output", "output", align="<"), Column("features", "features"),
               Column("area", "area m2", significant(3))]
    if result.centerlines is not None:
        data |= {"centerlines": str(result.centerlines),
                 "centerline_features": result.centerline_features,
                 "centerline_length_m": round(result.centerline_length_m, 3)}
        row |= {"lines": result.centerline_features, "length": result.centerline_length_m}
        columns += [Column("lines", "centerlines"), Column("length", "length m", significant(3))]
    return data, row, columns + [Column("seconds", "seconds", fixed(1))]


@click.command("vectorize")
@click.argument("mask", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=OutputPath(),
              help="Vector file (.gpkg, .geojson, .shp, .parquet).")
@click.option("--probabilities", type=click.Path(path_type=Path),
              help="Probability raster of the mask: adds each feature's mean (score).")
@with_vector_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@overwrite
@verbosity
@click.pass_context
def command(ctx: click.Context, mask: Path, output: Path, probabilities: Path | None,
            as_json: bool, overwrite: bool, quiet: bool, verbose: int) -> None:
    """Polygonize MASK block by block (merged exactly across blocks) with area, perimeter
    and, with --centerlines, skeleton length and width."""
    options = ctx.meta[_VECTOR_KEY]
    if options["centerlines"] is not None:   # skeletons under way while the libraries load
        from geounet.processes import prestart_skeleton_helper

        with contextlib.suppress(ValueError):   # bad settings: reported by the command
            prestart_skeleton_helper(mask, VectorizeSettings(**_settings(options)))
    result = vector_request(ctx).run(mask, output, overwrite, quiet or as_json, probabilities)
    data, row, columns = summary(result)
    written = [p for p in (result.output, result.centerlines) if p]
    emit(data, [row], columns, as_json=as_json, quiet=quiet,
         footer=[f"wrote {path}" for path in written])
