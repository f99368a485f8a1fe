"""``geounet export``: a checkpoint as an ONNX file for ONNX Runtime and QGIS (Deepness)."""

from __future__ import annotations

from pathlib import Path

import click

from geounet.cli.options import InputPath, OutputPath, overwrite, verbosity
from geounet.cli.summary import Column, emit, fixed


@click.command("export")
@click.argument("checkpoint", metavar="MODEL.safetensors", type=InputPath("checkpoint"))
@click.option("-o", "--output", required=True, type=OutputPath(),
              help="ONNX file to write (.onnx).")
@click.option("--tile", type=click.IntRange(16),
              help="Fixed square tile edge in pixels (default: the checkpoint's tile).")
@click.option("--resolution", type=click.FloatRange(0, min_open=True),
              help="Pixel size of the training imagery in cm, for Deepness.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@overwrite
@verbosity
def command(checkpoint: Path, output: Path, tile: int | None, resolution: float | None,
            as_json: bool, overwrite: bool, quiet: bool, verbose: int) -> None:
    """Export MODEL.safetensors to ONNX: the U-Net with its sigmoid or softmax, opset 17,
    dynamic batch, a fixed square tile, and metadata for Deepness (QGIS) and for
    `geounet predict MODEL.onnx`. Input `image` (N, bands, T, T) float32 normalized as
    (x - mean) / std; output `probabilities` (N, classes, T, T).
    """
    from geounet.engines import INPUT_NAME, OUTPUT_NAME, export_onnx  # torch: loaded on use

    result = export_onnx(checkpoint, output, tile, resolution, overwrite)
    summary = {"output": str(result.output), "tile": result.tile, "bands": result.bands,
               "classes": result.classes, "activation": result.activation,
               "input": [INPUT_NAME, ["batch", result.bands, result.tile, result.tile]],
               "output_tensor": [OUTPUT_NAME,
                                 ["batch", result.classes, result.tile, result.tile]],
               "metadata": result.metadata, "notes": result.notes,
               "seconds": round(result.seconds, 3)}
    row = {"output": result.output.name, "tile": result.tile, "bands": result.bands,
           "classes": result.classes, "activation": result.activation,
           "seconds": result.seconds}
    columns = [Column("output", "output", align="<"), Column("tile", "tile"),
               Column("bands", "bands"), Column("classes", "classes"),
               Column("activation", "activation"), Column("seconds", "seconds", fixed(1))]
    emit(summary, [row], columns, as_json=as_json, quiet=quiet,
         footer=[f"wrote {result.output}"])
    if not as_json:
        for note in result.notes:  # what Deepness will get wrong is said even with -q
            click.echo(f"geounet: note: {note}", err=True)
