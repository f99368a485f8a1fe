"""``geounet predict``: segment one raster with a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from geounet.cli.options import OutputPath, overwrite, parse_bands, setting_option, verbosity
from geounet.cli.summary import Column, emit, fixed
from geounet.cli.vectorize import summary as vector_summary
from geounet.cli.vectorize import vector_request, with_vector_options
from geounet.errors import ConfigError
from geounet.outputs import check_geotiff_name, check_outputs
from geounet.settings import PredictSettings


@click.command("predict")
@click.argument("input_path", metavar="IN.tif", type=click.Path(path_type=Path))
@click.option("-m", "--model", required=True, type=click.Path(path_type=Path),
              help="Checkpoint (.safetensors) from `geounet train`, or an .onnx file from "
              "`geounet export`.")
@click.option("-o", "--output", type=OutputPath(),
              help="Class mask GeoTIFF (uint8, nodata 255).")
@click.option("--probabilities", type=OutputPath(),
              help="Probabilities GeoTIFF (float32, nodata NaN).")
@setting_option(PredictSettings, "bands", callback=parse_bands,
                help="Input bands in model order, e.g. 1,2,3 (default: the checkpoint's).")
@setting_option(PredictSettings, "tile_size", "--tile")
@setting_option(PredictSettings, "overlap")
@setting_option(PredictSettings, "batch_size")
@setting_option(PredictSettings, "block_tiles")
@setting_option(PredictSettings, "window")
@setting_option(PredictSettings, "device")
@setting_option(PredictSettings, "engine")
@setting_option(PredictSettings, "amp", "--amp/--no-amp")
@setting_option(PredictSettings, "threshold")
@setting_option(PredictSettings, "threads")
@setting_option(PredictSettings, "tta")
@click.option("--cog", is_flag=True, help="Write Cloud-Optimized GeoTIFFs with overviews.")
@click.option("--vector", type=OutputPath(),
              help="Also polygonize the mask into this vector file (.gpkg, .geojson, ...).")
@with_vector_options
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@overwrite
@verbosity
@click.pass_context
def command(ctx: click.Context, input_path: Path, model: Path, output: Path | None,
            probabilities: Path | None, cog: bool, vector: Path | None, as_json: bool,
            overwrite: bool, quiet: bool, verbose: int, **settings) -> None:
    """Segment IN.tif tile by tile and write a georeferenced mask and/or probabilities.

    With --vector, the mask is also turned into polygons (a temporary mask is used when no
    -o is given), scored by their mean probability when --probabilities is given.
    """
    if output is None and probabilities is None and vector is None:
        raise ConfigError("give -o MASK.tif, --probabilities PROB.tif and/or --vector OUT.gpkg")
    temporary_mask = vector is not None and output is None
    request = vector_request(ctx)
    # Every output is checked before the model runs.
    inputs: list[str | Path] = [input_path, model]
    check_outputs([output, probabilities, vector, request.centerlines], inputs, overwrite)
    check_geotiff_name(output)
    check_geotiff_name(probabilities)
    if vector is not None:   # against the input: the mask will have its grid and CRS
        from geounet.io import georeferenced, open_raster
        from geounet.vectorize import check_vector_outputs

        check_vector_outputs(vector, request.centerlines, request.driver, request.crs,
                             inputs, overwrite, georeferenced(open_raster(input_path)),
                             request.pixel_coordinates)
    from geounet.predict import PredictConfig, predict_raster  # torch: loaded on use
    from geounet.workflow.pipeline import mask_for_vectors

    # Without -o, a mask only for the polygons, removed in any case (as a workflow's item
    # does); not made beforehand, as the mask may not be written over an existing file.
    with mask_for_vectors(output, vector, create=False) as mask:
        config = PredictConfig(**settings, cog=cog, overwrite=overwrite, progress=not quiet)
        result = predict_raster(input_path, model, mask, probabilities, config)
        vectors = None
        if vector is not None:
            assert mask is not None   # the user's mask or the temporary one
            try:
                vectors = request.run(mask, vector, overwrite, quiet or as_json, probabilities)
            except BaseException:   # the outputs appear together or not at all
                for written in (output, probabilities):
                    if written is not None:
                        written.unlink(missing_ok=True)
                raise
        _summarize(result, vectors, temporary_mask, as_json, quiet)


def _summarize(result, vectors, temporary_mask: bool, as_json: bool, quiet: bool) -> None:
    """The end-of-run table on stderr, or the JSON summary on stdout."""
    mask = None if temporary_mask or not result.mask else result.mask
    summary = {
        "input": str(result.input), "mask": str(mask) if mask else None,
        "probabilities": str(result.probabilities) if result.probabilities else None,
        "size": [result.width, result.height], "tiles": result.tiles,
        "tiles_skipped": result.tiles_skipped, "device": result.device,
        "engine": result.engine,
        "seconds": round(result.seconds, 3), "class_pixels": result.class_pixels,
    }
    row = {"input": result.input.name, "size": f"{result.width}x{result.height}",
           "tiles": result.tiles, "empty": result.tiles_skipped, "device": result.device,
           "engine": result.engine,
           "seconds": result.seconds,
           "rate": result.tiles / result.seconds if result.seconds else None,
           **{f"px:{name}": n for name, n in result.class_pixels.items()}}
    columns = [Column("input", "input", align="<"), Column("size", "size"),
               Column("tiles", "tiles"), Column("empty", "empty tiles"),
               Column("device", "device"), Column("engine", "engine"),
               Column("seconds", "seconds", fixed(1)),
               Column("rate", "tiles/s", fixed(2))]
    columns += [Column(f"px:{name}", f"{name} px", fixed(0)) for name in result.class_pixels]
    written = [p for p in (mask, result.probabilities) if p]
    if vectors is not None:
        summary["vector"], vector_row, vector_columns = vector_summary(vectors)
        row |= {k: v for k, v in vector_row.items() if k not in ("output", "seconds")}
        columns += [c for c in vector_columns if c.key not in ("output", "seconds")]
        written += [p for p in (vectors.output, vectors.centerlines) if p]
    emit(summary, [row], columns, as_json=as_json, quiet=quiet,
         footer=[f"wrote {path}" for path in written])
