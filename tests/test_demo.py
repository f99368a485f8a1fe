"""``geounet demo`` (what ``make demo`` runs) on crops of the sample scenes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyogrio
import pyproj
import rasterio
from click.testing import CliRunner
from rasterio.windows import Window

import geounet.predict
from geounet.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
CROPS = {"roads": Window(1024, 1024, 512, 512), "cracks": Window(512, 512, 512, 512)}


def _crop(source: Path, target: Path, window: Window) -> None:
    with rasterio.open(source) as src:
        profile = src.profile | {"width": window.width, "height": window.height,
                                 "transform": src.window_transform(window)}
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(src.read(window=window))


def test_demo_writes_every_output_and_scores_then_skips(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    for kind, window in CROPS.items():
        for part in ("image", "mask"):
            _crop(SAMPLE / f"{kind}_{part}.tif", data / f"{kind}_{part}.tif", window)
        (data / "models" / f"{kind}.safetensors").symlink_to(
            SAMPLE / "models" / f"{kind}.safetensors")
    out = tmp_path / "out"
    used = []   # the engine each predict really ran on
    prepare = geounet.predict.prepare
    monkeypatch.setattr(geounet.predict, "prepare", lambda *a, **k: (
        used.append(prepare(*a, **k)) or used[-1]))
    args = ["demo", "--data", str(data), "-o", str(out), "--device", "cpu", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = {r["scene"]: r for r in json.loads(result.stdout)}
    # The fastest engine installed, and one line saying which, with its version.
    fastest = "onnx" if importlib.util.find_spec("onnxruntime") else "torch"
    assert [p.engine for p in used] == [fastest] * len(CROPS)
    said = [line for line in result.stderr.splitlines() if line.startswith("engine:")]
    library = "ONNX Runtime" if fastest == "onnx" else "PyTorch"
    assert len(said) == 1 and said[0].startswith(f"engine: {fastest} ({library} "), said
    assert said[0].endswith(", CPU)")
    assert {r["engine"] for r in rows.values()} == {said[0].removeprefix("engine: ")}
    assert rows["roads"]["metric"] == "pixel iou" and rows["roads"]["score"] > 0.85
    assert rows["cracks"]["metric"] == "tolerant f1" and rows["cracks"]["score"] > 0.8
    for kind in CROPS:
        folder = out / kind
        assert rows[kind]["status"] == "done" and rows[kind]["features"] > 0
        assert rows[kind]["length_m"] > 0
        with rasterio.open(folder / f"{kind}_image_mask.tif") as mask, \
                rasterio.open(data / f"{kind}_image.tif") as image:
            assert mask.crs == image.crs and mask.transform == image.transform
        polygons = pyogrio.read_info(folder / f"{kind}_image.gpkg")
        assert pyproj.CRS(polygons["crs"]) == pyproj.CRS("EPSG:32633")
        assert polygons["features"] == rows[kind]["features"]
        assert {"score", "length_m", "mean_width_m"} <= set(polygons["fields"])
        assert (folder / f"{kind}_image_centerlines.gpkg").is_file()
        assert (folder / f"{kind}_image_preview.png").is_file()
        assert (folder / "report.html").is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert {r["status"] for r in json.loads(again.stdout)} == {"skipped"}
