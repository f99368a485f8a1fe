"""The ``geounet`` command: outputs, JSON summaries, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from geounet.checkpoint import FORMAT
from geounet.cli import main
from geounet.model import UNet, UNetConfig
from geounet.predict import predict_raster


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def _assert_one_line_error(result, needle: str) -> str:
    # A crash would also exit 1 under CliRunner: insist on the CLI's own exit.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("geounet: error:"), lines[0]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    return lines[0]


def _geounet_command() -> list[str]:
    script = Path(sys.executable).parent / "geounet"
    return [str(script)] if script.exists() else [sys.executable, "-m", "geounet"]


def test_predict_writes_the_mask_on_the_input_grid(odd_rgb, checkpoint, quiet, tmp_path):
    out = tmp_path / "cli_mask.tif"
    result = _invoke("predict", odd_rgb, "-m", checkpoint, "-o", out, "-q", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    predict_raster(odd_rgb, checkpoint, tmp_path / "lib_mask.tif", None, quiet())
    with rasterio.open(out) as cli, rasterio.open(tmp_path / "lib_mask.tif") as lib, \
            rasterio.open(odd_rgb) as src:
        assert cli.crs == src.crs and cli.transform == src.transform
        assert (cli.width, cli.height, cli.dtypes[0], cli.nodata) == (229, 137, "uint8", 255)
        assert np.array_equal(cli.read(), lib.read())


def test_predict_json_summary_and_options(odd_rgb, checkpoint, tmp_path):
    mask, prob = tmp_path / "m.tif", tmp_path / "p.tif"
    result = _invoke("predict", odd_rgb, "-m", checkpoint, "-o", mask, "--probabilities",
                     prob, "--tile", "96", "--overlap", "32", "--block-tiles", "1",
                     "--window", "average", "--threshold", "0.3", "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["size"] == [229, 137]
    assert summary["tiles"] == 2 * 4 and summary["tiles_skipped"] == 0
    assert summary["mask"] == str(mask) and summary["probabilities"] == str(prob)
    assert set(summary["class_pixels"]) == {"background", "thing"}
    assert sum(summary["class_pixels"].values()) == 229 * 137
    with rasterio.open(mask) as m, rasterio.open(prob) as p:
        assert np.array_equal(m.read(1), (p.read(1) >= 0.3).astype(np.uint8))
        assert summary["class_pixels"]["thing"] == int((m.read(1) == 1).sum())


def test_predict_with_bands_on_a_four_band_raster(make_raster, checkpoint, tmp_path):
    four = make_raster(np.random.default_rng(1).integers(0, 255, (4, 30, 40), dtype=np.uint8),
                       name="four.tif", photometric="MINISBLACK")
    out = tmp_path / "m.tif"
    result = _invoke("predict", four, "-m", checkpoint, "-o", out, "--bands", "3,2,1", "-q")
    assert result.exit_code == 0, result.output
    assert out.exists()


@pytest.fixture
def bad_inputs(tmp_path, make_raster):
    not_raster = tmp_path / "text.tif"
    not_raster.write_text("not a raster")
    four = make_raster(np.zeros((4, 20, 20), np.uint8), name="four.tif")
    existing = tmp_path / "exists.tif"
    existing.write_bytes(b"precious")
    evil = tmp_path / "evil.safetensors"
    torch.save({"state_dict": _Payload(tmp_path / "pwned")}, evil)
    return {"text": not_raster, "four": four, "existing": existing, "evil": evil,
            "missing": tmp_path / "missing.tif", "nockpt": tmp_path / "none.safetensors"}


CASES = {
    "missing input": (("predict", "{missing}", "-m", "{ckpt}", "-o", "{out}"), "no such file"),
    "not a raster": (("predict", "{text}", "-m", "{ckpt}", "-o", "{out}"),
                     "not a readable raster"),
    "existing output": (("predict", "{rgb}", "-m", "{ckpt}", "-o", "{existing}"),
                        "already exists; pass --overwrite"),
    "band mismatch": (("predict", "{four}", "-m", "{ckpt}", "-o", "{out}"),
                      "raster has 4 band(s) but the model expects 3"),
    "missing checkpoint": (("predict", "{rgb}", "-m", "{nockpt}", "-o", "{out}"),
                           "no such checkpoint file"),
    "pickle checkpoint": (("predict", "{rgb}", "-m", "{evil}", "-o", "{out}"),
                          "pickled .pt/.pth files are refused"),
    "output is input": (("predict", "{rgb}", "-m", "{ckpt}", "-o", "{rgb}", "--overwrite"),
                        "same file as the input"),
    "no output": (("predict", "{rgb}", "-m", "{ckpt}"), "give -o MASK.tif"),
    "unknown bands": (("predict", "{four}", "-m", "{ckpt}", "-o", "{out}", "--bands",
                       "1,2,9"), "--bands [9] not in"),
    "info missing": (("info", "{nockpt}"), "no such checkpoint file"),
    "info pickle": (("info", "{evil}"), "pickled .pt/.pth files are refused"),
    "evaluate missing": (("evaluate", "{missing}", "{rgb}"), "no such file"),
    "train existing output": (("train", "--image", "{rgb}", "--mask", "{rgb}", "-o",
                               "{existing}"), "already exists"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_errors_are_one_line_without_traceback(case, bad_inputs, odd_rgb, checkpoint,
                                               tmp_path):
    args, needle = CASES[case]
    names = {**bad_inputs, "rgb": odd_rgb, "ckpt": checkpoint, "out": tmp_path / "new.tif"}
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _invoke(*(a.format(**names) for a in args))
    line = _assert_one_line_error(result, needle)
    if case == "band mismatch":
        assert "--bands" in line and "expects 3" in line
    # Nothing was created or changed, and the pickle payload never ran.
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert bad_inputs["existing"].read_bytes() == b"precious"
    assert not (tmp_path / "pwned").exists()


def test_errors_from_the_installed_command(bad_inputs, odd_rgb, tmp_path):
    """The real entry point: exit status 1 and one stderr line, for a hostile checkpoint."""
    done = subprocess.run(
        [*_geounet_command(), "predict", str(odd_rgb), "-m", str(bad_inputs["evil"]), "-o",
         str(tmp_path / "m.tif")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geounet: error:"), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "m.tif").exists()


def test_info_prints_the_metadata_as_json(checkpoint):
    result = _invoke("info", checkpoint)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["arch"] == {"in_channels": 3, "classes": 1, "width": 4, "depth": 2,
                            "bilinear": True}
    assert info["bands"] == [1, 2, 3]
    assert info["mean"] == [100.0] * 3 and info["std"] == [50.0] * 3
    assert info["class_names"] == ["background", "thing"]
    assert (info["tile_size"], info["overlap"], info["threshold"]) == (64, 16, 0.5)


def test_info_on_metadata_that_is_not_an_object_is_one_line(tmp_path):
    arch = UNetConfig(3, 1, 4, 2)
    path = tmp_path / "null.safetensors"
    save_file({k: v.contiguous() for k, v in UNet(arch).state_dict().items()}, str(path),
              metadata={"format": FORMAT, "version": "1", "geounet": "null"})
    _assert_one_line_error(_invoke("info", path), "null.safetensors")


@pytest.fixture
def masks(make_raster):
    truth = np.zeros((1, 40, 50), np.uint8)
    truth[0, 5:35, 20] = 1                 # a 30 px line
    pred = np.zeros((1, 40, 50), np.uint8)
    pred[0, 5:35, 22] = 1                  # the same line 2 px to the right
    pred[0, 5:15, 40] = 1                  # and 10 false pixels far away
    return make_raster(pred, name="pred.tif"), make_raster(truth, name="truth.tif")


def test_evaluate_json_prints_the_scores(masks):
    pred, truth = masks
    result = _invoke("evaluate", pred, truth, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pixel"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0}
    tolerant = report["tolerant"]
    assert tolerant["precision"] == pytest.approx(30 / 40)
    assert tolerant["recall"] == 1.0
    assert tolerant["f1"] == pytest.approx(2 * 0.75 / 1.75)

    tight = json.loads(_invoke("evaluate", pred, truth, "--json", "--tolerance", "1").stdout)
    assert tight["tolerant"]["f1"] == 0.0


def test_evaluate_table(masks):
    pred, truth = masks
    result = _invoke("evaluate", pred, truth, "--tolerance", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["scores", "precision", "recall", "F1", "IoU"]
    assert lines[1].split() == ["pixel", "0.0000", "0.0000", "0.0000", "0.0000"]
    assert lines[2].split() == ["tolerant", "(2", "px)", "0.7500", "1.0000", "0.8571",
                                "0.0000"]


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON (RFC 8259)")

    return json.loads(text, parse_constant=refuse)


def test_evaluate_json_is_strict_json_for_an_empty_prediction(make_raster, masks):
    _, truth = masks
    empty = make_raster(np.zeros((1, 40, 50), np.uint8), name="empty.tif")
    result = _invoke("evaluate", empty, truth, "--json")
    assert result.exit_code == 0
    report = _strict_json(result.stdout)
    assert report["pixel"]["recall"] == 0.0


def test_evaluate_json_reports_an_empty_prediction(make_raster, masks):
    _, truth = masks
    empty = make_raster(np.zeros((1, 40, 50), np.uint8), name="empty.tif")
    result = _invoke("evaluate", empty, truth, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pixel"]["recall"] == 0.0 and report["pixel"]["f1"] == 0.0
    assert report["pixel"]["precision"] is None  # undefined (no predicted pixel): null


def test_version():
    result = _invoke("--version")
    assert result.exit_code == 0 and "0.1.0" in result.stdout


def test_predict_on_a_plain_png_writes_a_pixel_grid_mask_without_warnings(checkpoint, tmp_path):
    """A plain image (no CRS, no geotransform) is a normal input: the mask is on its pixel
    grid, and rasterio's NotGeoreferencedWarning shows only with -v."""
    from PIL import Image

    png, out = tmp_path / "photo.png", tmp_path / "photo_mask.tif"
    rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(png)
    done = subprocess.run([*_geounet_command(), "predict", str(png), "-m", str(checkpoint),
                           "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    with rasterio.open(out) as mask:
        assert (mask.width, mask.height, mask.crs) == (56, 40, None)
        assert mask.transform == rasterio.Affine.identity()
    verbose = subprocess.run([*_geounet_command(), "predict", str(png), "-m", str(checkpoint),
                              "-o", str(out), "--overwrite", "-v"], capture_output=True,
                             text=True)
    assert verbose.returncode == 0 and "NotGeoreferencedWarning" in verbose.stderr


def test_predict_vector_checks_the_layers_crs_before_inference(make_raster, checkpoint,
                                                               tmp_path):
    """`predict --vector` refuses a layer it could not write (no CRS to place the polygons
    in; GeoJSON of a local site grid) before the model runs, naming the input, and leaves
    no mask behind; with --pixel-coordinates the same command writes all its outputs."""
    image = np.random.default_rng(0).integers(0, 255, (3, 40, 40), dtype=np.uint8)
    local = ('LOCAL_CS["site grid",LOCAL_DATUM["site",0],UNIT["metre",1],'
             'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
    plain = make_raster(image, "plain.tif", crs=None)
    site = make_raster(image, "site.tif", crs=local)
    before = sorted(tmp_path.iterdir())
    for source, vector, said in ((plain, "v.gpkg", "plain.tif: raster has no CRS"),
                                 (site, "v.geojson", "GeoJSON (RFC 7946) needs a CRS")):
        result = _invoke("predict", source, "-m", checkpoint, "-o", tmp_path / "m.tif",
                         "--probabilities", tmp_path / "p.tif", "--vector",
                         tmp_path / vector, "-q", "--device", "cpu")
        _assert_one_line_error(result, said)
        assert sorted(tmp_path.iterdir()) == before
    result = _invoke("predict", plain, "-m", checkpoint, "-o", tmp_path / "m.tif", "--vector",
                     tmp_path / "v.gpkg", "--pixel-coordinates", "-q", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.tif").exists() and (tmp_path / "v.gpkg").exists()


def test_evaluate_never_writes_its_report_over_a_file_it_reads(masks, tmp_path):
    """The report (-o) may not replace the palette, the split file, or a label of paired
    folders, even with --overwrite (a palette became JSON before)."""
    pred, truth = masks
    palette = tmp_path / "palette.yaml"
    palette.write_text("'#000000': background\n'#010101': thing\n")
    split = tmp_path / "split.txt"
    split.write_text("pred test\n")
    (tmp_path / "p").mkdir()
    (tmp_path / "t").mkdir()
    (tmp_path / "p/a.tif").write_bytes(pred.read_bytes())
    (tmp_path / "t/a.tif").write_bytes(truth.read_bytes())
    before = {p: p.read_bytes() for p in (palette, split, tmp_path / "t/a.tif")}
    for args, output in ((["--palette", palette], palette), (["--split-file", split], split),
                         ([], tmp_path / "t/a.tif")):
        source, target = (tmp_path / "p", tmp_path / "t") if not args else (pred, truth)
        result = _invoke("evaluate", source, target, *args, "-o", output, "--overwrite")
        _assert_one_line_error(result, "is the same file as the input")
    assert {p: p.read_bytes() for p in before} == before


def test_an_output_name_ending_in_a_slash_is_refused(odd_rgb, checkpoint, tmp_path):
    """`-o out/` became a file named `out`: refused in one line, nothing written."""
    before = sorted(tmp_path.iterdir())
    for args in (["predict", odd_rgb, "-m", checkpoint, "-o", f"{tmp_path}/newout/"],
                 ["vectorize", odd_rgb, "-o", f"{tmp_path}/out.gpkg/"],
                 ["predict", odd_rgb, "-m", checkpoint, "--vector", f"{tmp_path}/v.gpkg/"]):
        result = _invoke(*args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "names a folder" in lines[0], result.stderr
    assert sorted(tmp_path.iterdir()) == before


def test_outputs_named_as_another_kind_of_file_are_refused(odd_rgb, checkpoint, tmp_path):
    """predict wrote GeoTIFFs named m.gpkg or p.png, preview a PNG named p.tif."""
    for args, said in ((["predict", odd_rgb, "-m", checkpoint, "-o", tmp_path / "m.gpkg"],
                        "name it m.tif"),
                       (["predict", odd_rgb, "-m", checkpoint, "--probabilities",
                         tmp_path / "p.png"], "name it p.tif"),
                       (["preview", odd_rgb, "-o", tmp_path / "p.tif"], "name it p.png")):
        _assert_one_line_error(_invoke(*args), said)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [odd_rgb.name, checkpoint.name])
