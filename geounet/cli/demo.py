"""``geounet demo``: the whole job on the bundled sample scenes, scored against their labels.

Each scene goes through the workflow runner (as ``geounet run`` would): mask, probabilities,
polygons with centerlines and scores, a preview PNG and ``report.html``; the mask is then
scored against the scene's labels. A second demo finds everything done and skips it.

The model runs on the fastest engine installed (``--engine auto``: ONNX Runtime on the CPU,
torch on CUDA; see :mod:`geounet.engines`), and the demo says which in one line on stderr
(``engine: onnx (ONNX Runtime 1.x, CPU)``) and in each JSON row.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import click

from geounet.cli.options import setting_option, verbosity
from geounet.cli.summary import Column, emit, fixed, significant
from geounet.settings import PredictSettings

# Scene kind -> the score that matters for it (roads: area overlap; cracks: tolerant F1).
SCENES = {"roads": ("pixel", "iou"), "cracks": ("tolerant", "f1")}
COLUMNS = (Column("scene", "scene", align="<"), Column("status", "status", align="<"),
           Column("seconds", "s", fixed(1)), Column("features", "features", fixed(0)),
           Column("length_m", "centerline m", significant(3)), Column("metric", "score", align="<"),
           Column("score", "value", fixed(3)), Column("report", "report", align="<"))


@click.command("demo")
@click.option("--data", default="sample_data", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder with {kind}_image.tif, {kind}_mask.tif and models/{kind}.safetensors.")
@click.option("-o", "--output", "out_dir", default="demo_output", show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
@click.option("--device", default="auto", show_default=True)
@setting_option(PredictSettings, "engine")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@verbosity
def command(data: Path, out_dir: Path, device: str, engine: str, as_json: bool, quiet,
            verbose) -> None:
    """Segment and vectorize every sample scene with its bundled model; score the masks."""
    from geounet.engines import engine_description, resolve_engine
    from geounet.errors import InputError
    from geounet.evaluate import evaluate_masks
    from geounet.model import resolve_device
    from geounet.workflow import (
        HTML_REPORT,
        InputsConfig,
        OutputsConfig,
        VectorizeOptions,
        Workflow,
        run_workflow,
    )

    # Resolved once, here, so the line below names what every scene runs on.
    used = resolve_engine(engine, resolve_device(device))
    said = engine_description(used, resolve_device(device))
    if not quiet:
        click.echo(f"engine: {said}", err=True)
    rows = []
    for kind, (family, metric) in SCENES.items():
        image, truth = (data / f"{kind}_image.tif").resolve(), data / f"{kind}_mask.tif"
        model = (data / "models" / f"{kind}.safetensors").resolve()
        for path in (image, truth, model):
            if not path.is_file():
                raise InputError(f"{path}: no such file; run the demo from the project root "
                                 "or give --data")
        folder = (out_dir / kind).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        workflow = Workflow(
            name=f"demo-{kind}", inputs=InputsConfig(list=(image,)), model=model,
            device=device, engine=used, threads=os.cpu_count() or 1,
            outputs=OutputsConfig(folder=folder, mask="{stem}_mask.tif",
                                  probabilities="{stem}_prob.tif", vector="{stem}.gpkg",
                                  centerlines="{stem}_centerlines.gpkg"),
            vectorize=VectorizeOptions(connectivity=8, centerlines=True))
        report = run_workflow(workflow, progress=not quiet and not as_json)
        result = report.items[0]
        if result.status == "failed":
            raise InputError(f"{image}: {result.reason}")
        summary: Mapping[str, object] = result.summary or {}
        mask = result.outputs["mask"]
        assert mask is not None  # the workflow above names a mask
        score = evaluate_masks(mask, truth)[family][metric]
        rows.append({"scene": kind, "status": result.status, "seconds": result.seconds,
                     "features": summary.get("features"),
                     "length_m": summary.get("centerline_length_m"),
                     "metric": f"{family} {metric}", "score": score, "engine": said,
                     "report": str(folder / HTML_REPORT)})
    emit(rows, rows, COLUMNS, as_json=as_json, quiet=quiet,
         footer=[f"outputs in {out_dir}/<scene>/: masks, probabilities, polygons, "
                 "centerlines, previews and report.html"])
