"""Inference engines (torch, ONNX Runtime) and `geounet export` (issue 16).

The onnx engine must give torch's probabilities within float noise through the whole
pipeline; the exported file must carry the metadata Deepness (QGIS) reads, run in Deepness's
own model wrapper, and run in `geounet predict MODEL.onnx`; bad files are one line.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from geounet.checkpoint import load_checkpoint, save_checkpoint
from geounet.cli import main
from geounet.engines import (
    METADATA_KEY,
    OPSET,
    OnnxModel,
    engine_description,
    export_onnx,
    load_onnx,
    prepare,
    read_model_metadata,
    resolve_engine,
)
from geounet.errors import ConfigError, ModelError, OutputError
from geounet.io import normalize
from geounet.model import UNetConfig, logits_to_probabilities
from geounet.predict import predict_raster

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

DEEPNESS = Path(__file__).resolve().parents[2] / "shared" / "clients" / "deepness"
# Float noise between two engines computing the same network (measured: max 1.8e-6 on the
# bundled road model over a 1200 x 1100 crop; ~1e-7 on the tiny models here).
NOISE = 1e-5


def _invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def _one_line_error(result, needle: str) -> str:
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geounet: error:"), result.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _predict(raster, model, tmp_path, quiet, name, **settings):
    mask, prob = tmp_path / f"{name}_m.tif", tmp_path / f"{name}_p.tif"
    result = predict_raster(raster, model, mask, prob, quiet(**settings))
    return result, _read(mask), _read(prob)


def _trained_like(tmp_path, make_unet, make_metadata, classes=1, tile=64, overlap=16,
                  **meta):
    """A tiny seeded 3-band checkpoint; ``meta`` replaces metadata fields."""
    arch = UNetConfig(3, classes, 4, 2)
    metadata = replace(make_metadata(arch, tile, overlap), **meta)
    return save_checkpoint(tmp_path / "m.safetensors", make_unet(arch, seed=3), metadata)


# -- the engines agree -------------------------------------------------------------------
@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("tta", [False, True])
def test_onnx_engine_gives_torch_probabilities(odd_rgb, tmp_path, quiet, make_unet,
                                               make_metadata, classes, tta):
    ckpt = _trained_like(tmp_path, make_unet, make_metadata, classes)
    torch_run, torch_mask, torch_prob = _predict(odd_rgb, ckpt, tmp_path, quiet, "t",
                                                 engine="torch", tta=tta)
    onnx_run, onnx_mask, onnx_prob = _predict(odd_rgb, ckpt, tmp_path, quiet, "o",
                                              engine="onnx", tta=tta)
    assert (torch_run.engine, onnx_run.engine) == ("torch", "onnx")
    assert onnx_prob.shape == torch_prob.shape == (1 if classes == 1 else classes, 137, 229)
    diff = np.abs(onnx_prob - torch_prob)
    assert diff.max() < NOISE and diff.mean() < 1e-6
    # Masks differ only where a probability lies within the noise of the cut (ties).
    if classes == 1:
        tie = np.abs(torch_prob[0] - 0.5) < NOISE
    else:
        top2 = np.sort(torch_prob, axis=0)[-2:]
        tie = (top2[1] - top2[0]) < NOISE
    assert np.array_equal(onnx_mask[0][~tie], torch_mask[0][~tie])


def test_auto_engine_is_onnx_on_the_cpu_and_torch_on_cuda():
    assert resolve_engine("auto", torch.device("cpu")) == "onnx"
    assert resolve_engine("auto", torch.device("cuda")) == "torch"
    assert resolve_engine("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ConfigError, match="CPU only"):
        resolve_engine("onnx", torch.device("cuda"))
    with pytest.raises(ConfigError, match="auto, torch, onnx"):
        resolve_engine("tensorrt", torch.device("cpu"))


def test_engine_is_said_by_predict_verbose_and_described_with_its_version(make_raster,
                                                                         checkpoint, tmp_path):
    import onnxruntime

    image = make_raster(np.zeros((3, 40, 50), np.uint8), name="small.tif")
    for engine in ("auto", "torch"):
        result = _invoke("predict", image, "-m", checkpoint, "-o", tmp_path / f"{engine}.tif",
                         "-v", "--engine", engine)
        assert result.exit_code == 0, result.output
        used = "onnx" if engine == "auto" else "torch"
        logged = [line for line in result.stderr.splitlines() if "INFO geounet.predict" in line]
        assert len(logged) == 1 and logged[0].endswith(f"engine {used}"), result.stderr
    assert engine_description("onnx", torch.device("cpu")) == (
        f"onnx (ONNX Runtime {onnxruntime.__version__}, CPU)")
    assert engine_description("torch", torch.device("cuda")).startswith("torch (PyTorch 2.")


def test_plain_predict_writes_nothing_beside_the_users_files(odd_rgb, checkpoint, quiet,
                                                             tmp_path, monkeypatch):
    """The session is built in memory from the checkpoint: no .onnx file anywhere near."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = {p for p in tmp_path.rglob("*")}
    result = predict_raster(odd_rgb, checkpoint, tmp_path / "m.tif", None, quiet())
    assert result.engine == "onnx"
    assert {p for p in tmp_path.rglob("*")} - before == {tmp_path / "m.tif"}


def test_engine_keeps_the_tile_grid_small_rasters_and_non_square_tta(make_raster, checkpoint,
                                                                     quiet, tmp_path):
    """A raster smaller than a tile is one tile of its own (odd) size; non-square tiles turn
    under TTA: the in-memory graph is traced per shape, equal to torch."""
    rng = np.random.default_rng(1)
    small = make_raster(rng.integers(0, 255, (3, 37, 53), dtype=np.uint8), name="small.tif")
    _, _, torch_prob = _predict(small, checkpoint, tmp_path, quiet, "t", engine="torch",
                                tta=True)
    _, _, onnx_prob = _predict(small, checkpoint, tmp_path, quiet, "o", engine="onnx",
                               tta=True)
    assert np.abs(onnx_prob - torch_prob).max() < NOISE


def test_torch_engine_runs_channels_last_on_the_cpu_with_the_same_outputs(checkpoint):
    net, meta = load_checkpoint(checkpoint)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        reference = logits_to_probabilities(net(x))
    prepared = prepare((net, meta), "torch", torch.device("cpu"))
    assert net.inc.block[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(prepared.forward(x), reference, atol=1e-6, rtol=0)


# -- export -------------------------------------------------------------------------------
def _props(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def test_export_writes_a_checked_graph_with_deepness_metadata(tmp_path, make_unet,
                                                              make_metadata):
    ckpt = _trained_like(tmp_path, make_unet, make_metadata, tile=96, overlap=24,
                         class_names=("background", "road"), threshold=0.4)
    out = tmp_path / "model.onnx"
    result = export_onnx(ckpt, out)
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= OPSET
    (inp,), (outp,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in outp.type.tensor_type.shape.dim]
    assert (inp.name, outp.name) == ("image", "probabilities")
    assert dims == ["batch", 3, 96, 96] and out_dims == ["batch", 1, 96, 96]
    assert "Sigmoid" in {n.op_type for n in model.graph.node}
    props = _props(model)
    assert json.loads(props["model_type"]) == "Segmentor"
    assert json.loads(props["class_names"]) == {"0": "background", "1": "road"}
    assert json.loads(props["tile_size"]) == 96
    assert json.loads(props["tiles_overlap"]) == 25            # 24 px of 96, in percent
    assert json.loads(props["seg_thresh"]) == pytest.approx(0.4)
    assert json.loads(props["standardization_mean"]) == pytest.approx([100 / 255] * 3)
    assert json.loads(props["standardization_std"]) == pytest.approx([50 / 255] * 3)
    assert "resolution" not in props                            # unknown: not invented
    _, meta = load_checkpoint(ckpt)
    embedded = json.loads(props[METADATA_KEY])["metadata"]
    assert embedded == {**json.loads(meta.to_json()), "tile_size": 96}
    assert result.notes == []


def test_export_to_another_tile_and_resolution(tmp_path, checkpoint):
    out = tmp_path / "m.onnx"
    result = export_onnx(checkpoint, out, tile=48, resolution_cm=50.0)
    props = _props(onnx.load(str(out)))
    assert json.loads(props["tile_size"]) == 48 == result.tile
    assert json.loads(props["resolution"]) == 50.0
    assert load_onnx(out).fixed == (48, 48)
    with pytest.raises(ConfigError, match="overlap of 16"):
        export_onnx(checkpoint, tmp_path / "small.onnx", tile=32)


def test_softmax_model_exports_softmax(tmp_path, make_unet, make_metadata):
    ckpt = _trained_like(tmp_path, make_unet, make_metadata, classes=3)
    export_onnx(ckpt, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert "Softmax" in {n.op_type for n in model.graph.node}
    names = json.loads(_props(model)["class_names"])
    assert names == {"0": "c0", "1": "c1", "2": "c2"}


def test_eleven_bit_model_exports_and_says_what_deepness_gets_wrong(tmp_path, make_unet,
                                                                    make_metadata):
    ckpt = _trained_like(tmp_path, make_unet, make_metadata, mean=(812.0,) * 3,
                         std=(301.5,) * 3, bands=(3, 2, 1))
    result = _invoke("export", ckpt, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("geounet: note:")]
    assert len(notes) == 2
    assert "not that of 8-bit imagery" in notes[0] and "3,2,1" in notes[1]
    assert (tmp_path / "m.onnx").is_file()


def test_exported_file_runs_in_predict_as_the_checkpoint_does(odd_rgb, checkpoint, quiet,
                                                              tmp_path):
    export_onnx(checkpoint, tmp_path / "m.onnx")
    _, ckpt_mask, ckpt_prob = _predict(odd_rgb, checkpoint, tmp_path, quiet, "c",
                                       engine="torch")
    run, file_mask, file_prob = _predict(odd_rgb, tmp_path / "m.onnx", tmp_path, quiet, "f")
    assert run.engine == "onnx"
    assert read_model_metadata(tmp_path / "m.onnx") == read_model_metadata(checkpoint)
    assert np.abs(file_prob - ckpt_prob).max() < NOISE
    assert np.array_equal(np.isnan(file_prob), np.isnan(ckpt_prob))


def test_exported_file_pads_a_raster_smaller_than_its_tile(make_raster, checkpoint, quiet,
                                                           tmp_path):
    rng = np.random.default_rng(2)
    small = make_raster(rng.integers(0, 255, (3, 40, 50), dtype=np.uint8), name="s.tif")
    export_onnx(checkpoint, tmp_path / "m.onnx")
    _, mask, prob = _predict(small, tmp_path / "m.onnx", tmp_path, quiet, "f")
    assert prob.shape == (1, 40, 50) and np.isfinite(prob).all()
    assert set(np.unique(mask)) <= {0, 1}


def test_cli_export_then_predict_and_evaluate_with_the_file(odd_rgb, checkpoint, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    result = _invoke("export", checkpoint, "-o", onnx_path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tile"] == 64 and summary["activation"] == "sigmoid"
    result = _invoke("predict", odd_rgb, "-m", onnx_path, "-o", tmp_path / "m.tif", "--json",
                     "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["engine"] == "onnx"
    result = _invoke("evaluate", "-m", onnx_path, "--images", odd_rgb, "--labels",
                     tmp_path / "m.tif", "--device", "cpu", "--json", "--thresholds", "3")
    assert result.exit_code == 0, result.output
    # The file's own mask scored against itself, through the same predict code.
    report = json.loads(result.stdout)
    assert report["images"] == 1
    assert all(scores["pixel"]["iou"] in (None, pytest.approx(1.0))
               for scores in report["classes"].values())
    assert report["classes"]["background"]["pixel"]["iou"] == pytest.approx(1.0)
    result = _invoke("predict", odd_rgb, "-m", checkpoint, "-o", tmp_path / "t.tif",
                     "--engine", "torch", "--json", "--device", "cpu")
    assert json.loads(result.stdout)["engine"] == "torch"


# -- Deepness, the QGIS plugin's own model wrapper ----------------------------------------
@pytest.fixture
def deepness_segmentor():
    if not (DEEPNESS / "deepness" / "processing" / "models" / "segmentor.py").is_file():
        pytest.skip(f"Deepness's model wrappers are not at {DEEPNESS} (see its SOURCE.md)")
    sys.path.insert(0, str(DEEPNESS))
    try:
        from deepness.processing.models.segmentor import Segmentor
    finally:
        sys.path.remove(str(DEEPNESS))
    return Segmentor


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
@pytest.mark.parametrize("classes", [1, 3])
def test_deepness_loads_the_export_and_gives_geounets_probabilities(
        deepness_segmentor, tmp_path, make_unet, make_metadata, classes):
    ckpt = _trained_like(tmp_path, make_unet, make_metadata, classes, tile=64, overlap=16,
                         mean=(101.5, 117.25, 66.0), std=(38.5, 29.5, 21.75))
    export_onnx(ckpt, tmp_path / "m.onnx", resolution_cm=25.0)
    seg = deepness_segmentor(str(tmp_path / "m.onnx"))   # Deepness's own checks pass
    net, meta = load_checkpoint(ckpt)
    names = list(meta.class_names)
    assert seg.get_outputs_channel_names() == [names]
    assert seg.get_metadata_model_type() == "Segmentor"
    assert seg.get_metadata_tile_size() == 64 and list(seg.get_input_size_in_pixels()) == [64, 64]
    assert seg.get_metadata_tiles_overlap() == 25
    assert seg.get_metadata_segmentation_threshold() == pytest.approx(meta.threshold)
    assert seg.get_metadata_resolution() == 25.0
    assert seg.get_model_batch_size() is None                      # dynamic batch
    assert seg.get_number_of_output_channels() == [2 if classes == 1 else classes]

    tiles = np.random.default_rng(5).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    (deepness,) = seg.process(tiles)
    data = tiles.transpose(0, 3, 1, 2).astype(np.float32)
    x = np.stack([normalize(d, np.ones(d.shape[1:], bool), meta.mean, meta.std) for d in data])
    with torch.inference_mode():
        ours = logits_to_probabilities(net(torch.from_numpy(x))).numpy()
    assert deepness.shape == ours.shape
    assert np.abs(deepness - ours).max() < 1e-4


# -- bad input ----------------------------------------------------------------------------
def test_truncated_or_corrupt_onnx_is_one_line(odd_rgb, checkpoint, tmp_path):
    export_onnx(checkpoint, tmp_path / "m.onnx")
    data = (tmp_path / "m.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model\xff" * 10)
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.onnx").write_bytes(b"")
    for bad in ("cut.onnx", "junk.onnx", "random.onnx", "empty.onnx"):
        result = _invoke("predict", odd_rgb, "-m", tmp_path / bad, "-o", tmp_path / "o.tif")
        line = _one_line_error(result, "not a readable ONNX model")
        assert "export it again with `geounet export" in line      # what to do
        assert not (tmp_path / "o.tif").exists()
    result = _invoke("predict", odd_rgb, "-m", tmp_path / "none.onnx", "-o", tmp_path / "o.tif")
    _one_line_error(result, "no such ONNX model file")


def test_onnx_without_geounet_metadata_is_refused(odd_rgb, checkpoint, tmp_path):
    export_onnx(checkpoint, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    result = _invoke("predict", odd_rgb, "-m", tmp_path / "foreign.onnx", "-o",
                     tmp_path / "o.tif")
    line = _one_line_error(result, "without geounet metadata")
    # What is missing, and what to do instead.
    assert "band order, normalization, classes, tiling" in line and "geounet export" in line
    assert not (tmp_path / "o.tif").exists()


def test_band_mismatch_and_engine_and_tile_conflicts_are_one_line(make_raster, odd_rgb,
                                                                  checkpoint, tmp_path):
    export_onnx(checkpoint, tmp_path / "m.onnx")
    one_band = make_raster(np.zeros((1, 40, 40), np.uint8), name="one.tif")
    two_band = make_raster(np.zeros((2, 40, 40), np.uint8), name="two.tif")
    _one_line_error(_invoke("predict", two_band, "-m", tmp_path / "m.onnx", "-o",
                            tmp_path / "o.tif"), "2 band(s) but the model expects 3")
    # With --bands: too few for the model, or a band the raster lacks.
    _one_line_error(_invoke("predict", two_band, "-m", tmp_path / "m.onnx", "-o",
                            tmp_path / "o.tif", "--bands", "1,2"), "the model expects 3")
    _one_line_error(_invoke("predict", two_band, "-m", tmp_path / "m.onnx", "-o",
                            tmp_path / "o.tif", "--bands", "1,2,3"), "has bands 1..2")
    assert not (tmp_path / "o.tif").exists()
    fixed = _invoke("predict", one_band, "-m", tmp_path / "m.onnx", "-o", tmp_path / "one_mask.tif",
                    "--bands", "1,1,1", "-q")                 # what the message suggests
    assert fixed.exit_code == 0 and (tmp_path / "one_mask.tif").exists(), fixed.output
    _one_line_error(_invoke("predict", odd_rgb, "-m", tmp_path / "m.onnx", "-o",
                            tmp_path / "o.tif", "--engine", "torch"), "--engine onnx")
    _one_line_error(_invoke("predict", odd_rgb, "-m", tmp_path / "m.onnx", "-o",
                            tmp_path / "o.tif", "--tile", "96"), "export again")
    assert not (tmp_path / "o.tif").exists()


def test_graph_that_does_not_fit_its_metadata_is_refused(checkpoint, tmp_path):
    export_onnx(checkpoint, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    prop = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    record = json.loads(prop.value)
    record["metadata"]["arch"]["in_channels"] = 4
    for key in ("bands", "mean", "std"):
        record["metadata"][key] = record["metadata"][key] + record["metadata"][key][:1]
    prop.value = json.dumps(record)
    onnx.save(model, str(tmp_path / "lying.onnx"))
    with pytest.raises(ModelError, match="does not fit|not the"):
        load_onnx(tmp_path / "lying.onnx")


def test_export_never_writes_over_its_input_or_partially(checkpoint, tmp_path):
    same = tmp_path / "same.onnx"
    os.link(checkpoint, same)          # the checkpoint under an .onnx name
    with pytest.raises(OutputError, match="same file as the input"):
        export_onnx(same, same, overwrite=True)
    with pytest.raises(ConfigError, match="ending in .onnx"):
        export_onnx(checkpoint, tmp_path / "m.safetensors")
    (tmp_path / "m.onnx").write_bytes(b"keep")
    _one_line_error(_invoke("export", checkpoint, "-o", tmp_path / "m.onnx"), "already exists")
    assert (tmp_path / "m.onnx").read_bytes() == b"keep"


def test_export_to_a_read_only_folder_is_one_line(checkpoint, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root may write anyway: the folder is made to read as read-only
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
            False if Path(path) == folder and mode & os.W_OK else access(path, mode, **kw)))
    try:
        _one_line_error(_invoke("export", checkpoint, "-o", folder / "m.onnx"), "not writable")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_failed_write_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    def refuse(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(OutputError, match="disk is full"):
        export_onnx(checkpoint, tmp_path / "m.onnx")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.name]


def test_onnx_model_from_a_net_and_from_a_file_run_alike(checkpoint, tmp_path):
    export_onnx(checkpoint, tmp_path / "m.onnx")
    net, meta = load_checkpoint(checkpoint)
    x = torch.randn(3, 3, 64, 64)
    traced = OnnxModel(meta, net).forward_function(1)(x)
    read = load_onnx(tmp_path / "m.onnx").forward_function(1)(x)
    assert torch.equal(traced, read)


def test_a_workflow_runs_an_exported_file(odd_rgb, checkpoint, tmp_path):
    """`model:` in a workflow may name an exported .onnx file: it runs, its classes name the
    outputs, and its mask equals predict's from the same file."""
    onnx_path = tmp_path / "m.onnx"
    assert _invoke("export", checkpoint, "-o", onnx_path).exit_code == 0
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(
        f"name: onnx\ninputs: {{list: [{odd_rgb}]}}\nmodel: {onnx_path}\n"
        f"outputs: {{folder: {tmp_path / 'out'}, vector: null, preview: null}}\n")
    (tmp_path / "out").mkdir()
    result = _invoke("run", workflow, "-q")
    assert result.exit_code == 0, result.output
    assert _invoke("predict", odd_rgb, "-m", onnx_path, "-o", tmp_path / "direct.tif",
                   "-q").exit_code == 0
    assert np.array_equal(_read(tmp_path / "out" / f"{odd_rgb.stem}_mask.tif"),
                          _read(tmp_path / "direct.tif"))
