"""Tiny training runs: complete checkpoints, reproducibility, resume, data paths, config."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from PIL import Image
from rasterio.transform import from_origin
from safetensors import safe_open
from safetensors.torch import save_file
from shapely.geometry import LineString, box

from geounet.checkpoint import load_checkpoint, read_metadata
from geounet.cli import main
from geounet.errors import ConfigError, InputError
from geounet.labels import IGNORE, LabelConfig, image_info, load_target
from geounet.model import UNetConfig
from geounet.predict import predict_raster
from geounet.train import TrainConfig, last_paths, train_model
from geounet.training import data, loop, sampler
from geounet.training.losses import loss as training_loss

SQUARES = ((10, 10), (20, 80), (70, 40), (90, 100), (100, 5))
TINY = dict(class_names=("ground", "roof"), width=4, depth=2, patch=32, batch_size=2,
            epochs=2, steps_per_epoch=5, lr=1e-2, seed=1, tile_size=64, overlap=16, threads=1)


def _config(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


@pytest.fixture
def scene(make_raster):
    """128x128 image with bright squares on a dark ground (the mask), and a nodata corner."""
    rng = np.random.default_rng(0)
    mask = np.zeros((128, 128), np.uint8)
    for r, c in SQUARES:
        mask[r : r + 18, c : c + 18] = 1
    image = rng.normal(60, 10, (3, 128, 128)) + 120 * mask
    image = np.clip(image, 1, 255).astype(np.uint8)
    image[:, 118:, :12] = 0  # nodata
    return (make_raster(image, name="image.tif", nodata=0),
            make_raster(mask[None], name="mask.tif"), image, mask)


def _weights(path):
    model, _ = load_checkpoint(path)
    return model.state_dict()


def test_tiny_training_writes_complete_usable_checkpoints(scene, quiet, tmp_path):
    image_path, mask_path, image, _ = scene
    out = tmp_path / "models" / "tiny.safetensors"
    result = train_model(_config(images=[image_path], labels=[mask_path]), out, progress=False)

    last, state = last_paths(out)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [out.name, last.name, state.name])
    assert result.epochs == 2 and result.steps == 10 and result.stopped == "epochs"
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert {"iou", "precision", "recall", "f1", "tolerant_f1", "loss"} <= set(result.history[0])
    assert result.best["epoch"] in (1, 2)

    model, meta = load_checkpoint(out)
    assert read_metadata(out) == meta
    assert meta.arch == UNetConfig(3, 1, 4, 2, True)
    assert meta.bands == (1, 2, 3)
    assert meta.class_names == ("ground", "roof")
    assert (meta.tile_size, meta.overlap, meta.nodata_policy) == (64, 16, "mask")
    # Normalization measured on the valid pixels only (the nodata corner is excluded).
    pixels = image[:, (image != 0).all(axis=0)].astype(np.float64)
    assert meta.mean == pytest.approx(tuple(pixels.mean(axis=1)), rel=1e-4)
    assert meta.std == pytest.approx(tuple(pixels.std(axis=1)), rel=1e-4)
    assert meta.source["seed"] == "1" and meta.source["config"]["patch"] == 32
    assert meta.source["epoch"] == result.best["epoch"]
    assert read_metadata(last).source["epoch"] == 2

    # Both checkpoints are all `predict` needs.
    for checkpoint in (out, last):
        mask_out = tmp_path / f"pred_{checkpoint.stem}.tif"
        predicted = predict_raster(image_path, checkpoint, mask_out, None, quiet())
        assert predicted.tiles == 9 and set(predicted.class_pixels) == {"ground", "roof"}
        with rasterio.open(mask_out) as dst, rasterio.open(image_path) as src:
            assert dst.crs == src.crs and dst.transform == src.transform
            values = dst.read(1)
        assert (values[118:, :12] == 255).all()
        assert set(np.unique(values[:118])) <= {0, 1}


def test_band_statistics_ignore_nan_and_internal_masks(make_raster, tmp_path):
    """Float NaN pixels and pixels hidden by an internal mask are not in the statistics."""
    rng = np.random.default_rng(3)
    image = rng.normal(50, 5, (1, 128, 128)).astype(np.float32)
    image[0, :20] = np.nan
    image[0, 100:] = 1e6                         # hidden by the internal mask below
    mask = np.zeros((1, 128, 128), np.uint8)
    for r, c in SQUARES:
        mask[0, r : r + 18, c : c + 18] = 1
    path = make_raster(image, name="float.tif")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
        valid = np.full((128, 128), 255, np.uint8)
        valid[100:] = 0
        dst.write_mask(valid)
    out = tmp_path / "f.safetensors"
    train_model(_config(images=[path], labels=[make_raster(mask, name="m.tif")], epochs=1,
                        steps_per_epoch=2), out, progress=False)
    kept = image[0, 20:100].astype(np.float64)
    meta = read_metadata(out)
    assert meta.mean == pytest.approx((kept.mean(),), rel=1e-5)
    assert meta.std == pytest.approx((kept.std(),), rel=1e-4)


def test_same_seed_gives_identical_weights_and_metrics(scene, tmp_path):
    image_path, mask_path, _, _ = scene
    runs, results = {}, {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.safetensors"
        results[name] = train_model(_config(images=[image_path], labels=[mask_path],
                                            seed=seed), out, progress=False)
        runs[name] = _weights(last_paths(out)[0])
    for key in runs["a"]:
        assert torch.equal(runs["a"][key], runs["b"][key]), key
    drop = ("seconds",)
    assert ([{k: v for k, v in h.items() if k not in drop} for h in results["a"].history]
            == [{k: v for k, v in h.items() if k not in drop} for h in results["b"].history])
    # Another seed does give other weights: the comparison above can fail.
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


@pytest.mark.parametrize("hard_fraction", [0.0, 0.5])
def test_a_killed_run_resumes_to_the_same_result(scene, tmp_path, monkeypatch, hard_fraction):
    """Killed during epoch 3 of 4, resumed from the epoch-2 checkpoint: same as unbroken.

    With hard-example mining the resumed run mines the same pixels again from the epoch-2
    weights, so its windows and weights are still those of the unbroken run.
    """
    image_path, mask_path, _, _ = scene
    config = _config(images=[image_path], labels=[mask_path], epochs=4,
                     hard_fraction=hard_fraction)
    unbroken = train_model(config, tmp_path / "whole.safetensors", progress=False)

    validate, calls = loop.validate, []

    def killed_in_epoch_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return validate(*args, **kwargs)

    out = tmp_path / "broken.safetensors"
    monkeypatch.setattr(loop, "validate", killed_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        train_model(config, out, progress=False)
    monkeypatch.setattr(loop, "validate", validate)
    assert read_metadata(last_paths(out)[0]).source["epoch"] == 2
    if not hard_fraction:  # a state saved before hard_fraction existed still resumes
        _drop_from_saved_config(last_paths(out)[1], "hard_fraction")

    resumed = train_model(config, out, resume=True, progress=False)
    assert resumed.epochs == 4 and [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for mine, theirs in zip(resumed.history, unbroken.history):
        assert mine["iou"] == pytest.approx(theirs["iou"], abs=1e-6)
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
    whole, again = _weights(last_paths(tmp_path / "whole.safetensors")[0]), _weights(
        last_paths(out)[0])
    for key in whole:
        assert torch.equal(whole[key], again[key]), key

    with pytest.raises(ConfigError, match="other lr"):
        train_model(config.model_copy(update={"lr": 0.5}), out, resume=True, progress=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train_model(config, tmp_path / "never.safetensors", resume=True, progress=False)


def test_vector_labels_and_plain_png_folders_train(tmp_path, quiet):
    """PNG images and GeoPackage labels in folders paired by name, a split file, no CRS."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        mask = np.zeros((64, 96), np.uint8)
        r, c = 10 + 8 * i, 20 + 10 * i
        mask[r : r + 20, c : c + 30] = 1
        pixels = np.clip(rng.normal(60, 10, (64, 96, 3)) + 120 * mask[..., None], 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(images / f"{i:03d}.png")
        # No CRS: vector coordinates are pixel coordinates (x right, y down).
        gpd.GeoDataFrame(geometry=[box(c, r, c + 30, r + 20)]).to_file(labels / f"{i:03d}.gpkg")
    split = tmp_path / "split.txt"
    split.write_text("000 train\n001 train\n002 train\n003 test\n")
    config = _config(image_dir=images, label_dir=labels, split_file=split, epochs=1,
                     val_fraction=0.34)
    assert [p[0].name for p in config.pairs()] == ["000.png", "001.png", "002.png"]
    out = tmp_path / "png.safetensors"
    result = train_model(config, out, progress=False)
    assert result.history[0]["iou"] >= 0.0
    assert read_metadata(out).bands == (1, 2, 3)
    predicted = predict_raster(images / "003.png", out, tmp_path / "p.tif", None, quiet())
    assert predicted.width == 96 and predicted.height == 64


def test_yaml_config_and_flags_share_one_schema(scene, tmp_path):
    image_path, mask_path, _, _ = scene
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        f"images: [{image_path}]\nlabels: [{mask_path}]\nwidth: 4\ndepth: 2\npatch: 32\n"
        "batch_size: 2\nepochs: 1\nsteps_per_epoch: 3\nthreads: 1\ntile_size: 64\n"
        "overlap: 16\n")
    config = TrainConfig.load(config_file, epochs=2)
    assert (config.epochs, config.patch, config.images) == (2, 32, [image_path])
    config_file.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match="run.yaml: epochz: Extra inputs"):
        TrainConfig.load(config_file)
    with pytest.raises(ConfigError, match="multiple of 2\\*\\*depth"):
        TrainConfig.build({**TINY, "patch": 30})


def test_cli_trains_from_a_config_with_flag_overrides(scene, tmp_path):
    image_path, mask_path, _, _ = scene
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        f"images: [{image_path}]\nlabels: [{mask_path}]\nwidth: 4\ndepth: 2\npatch: 32\n"
        "batch_size: 2\nepochs: 3\nsteps_per_epoch: 2\nthreads: 1\ntile_size: 64\n"
        "overlap: 16\n")
    out = tmp_path / "cli.safetensors"
    args = ["train", "--config", str(config_file), "--epochs", "1", "--hard-fraction", "0.25",
            "-o", str(out), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert read_metadata(out).source["config"]["epochs"] == 1
    assert read_metadata(out).source["config"]["hard_fraction"] == 0.25
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already exists" in again.output
    verbose = CliRunner().invoke(main, [*args[:-1], "--overwrite"])
    assert verbose.exit_code == 0, verbose.output
    summary = json.loads(verbose.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and summary["checkpoint"] == str(out)


def test_training_arguments_are_checked(scene, make_raster, tmp_path):
    image_path, mask_path, _, _ = scene
    out = tmp_path / "m.safetensors"
    with pytest.raises(ConfigError, match="one label per image"):
        train_model(_config(images=[image_path], labels=[]), out, progress=False)
    small_mask = make_raster(np.zeros((1, 64, 64), np.uint8), name="small_mask.tif")
    with pytest.raises(InputError, match="does not match"):
        train_model(_config(images=[image_path], labels=[small_mask]), out, progress=False)
    with pytest.raises(InputError, match="too small for patch 80 with a validation strip"):
        train_model(_config(images=[image_path], labels=[mask_path], patch=80), out,
                    progress=False)
    empty = make_raster(np.zeros((1, 128, 128), np.uint8), name="empty_mask.tif")
    with pytest.raises(InputError, match="no foreground pixel"):
        train_model(_config(images=[image_path], labels=[empty]), out, progress=False)
    assert not out.exists()


def test_train_and_evaluate_select_the_same_split(make_raster, tmp_path):
    """A split file keeps the same names for training and for ``geounet evaluate``."""
    for i in range(4):
        mask = np.zeros((1, 32, 32), np.uint8)
        mask[0, 4 * i : 4 * i + 8, 8:20] = 1
        make_raster(mask, name=f"masks/{i:03d}.tif")
        make_raster(mask, name=f"labels/{i:03d}.tif")
    split = tmp_path / "split.txt"  # 004 has no file: ignored by both
    split.write_text("000 train\n001 train\n002 test\n003 test\n004 test\n")
    masks, labels = tmp_path / "masks", tmp_path / "labels"
    trained = _config(image_dir=masks, label_dir=labels, split_file=split).pairs()
    assert [p[0].name for p in trained] == ["000.tif", "001.tif"]
    tested = _config(image_dir=masks, label_dir=labels, split_file=split, split="test").pairs()
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["evaluate", str(masks), str(labels), "--split-file",
                                       str(split), "-o", str(report), "-q"])
    assert result.exit_code == 0, result.output
    scored = json.loads(report.read_text())["per_image"]
    assert [Path(s["prediction"]).name for s in scored] == [p[0].name for p in tested] \
        == ["002.tif", "003.tif"]


def test_geographic_image_with_vector_lines_in_pixel_widths(make_raster, tmp_path):
    """An EPSG:4326 raster (degrees) with road centrelines buffered to 4 px."""
    transform = from_origin(-115.3, 36.2, 3e-6, 3e-6)
    mask = np.zeros((128, 128), np.uint8)
    mask[62:66, :] = 1
    rng = np.random.default_rng(9)
    image = (rng.normal(300, 30, (1, 128, 128)) + 900.0 * mask).astype(np.uint16)
    image_path = make_raster(image, name="geo.tif", crs="EPSG:4326", transform=transform)
    y = 36.2 - 64 * 3e-6   # the edge between rows 63 and 64: 4 px cover rows 62..65
    roads = tmp_path / "roads.geojson"
    gpd.GeoDataFrame(geometry=[LineString([(-115.3, y), (-115.3 + 128 * 3e-6, y)])],
                     crs="EPSG:4326").to_file(roads)
    info = image_info(image_path)
    np.testing.assert_array_equal(load_target(roads, info, LabelConfig(line_width=4)), mask)
    out = tmp_path / "geo.safetensors"
    train_model(_config(images=[image_path], labels=[roads], line_width=4, epochs=1),
                out, progress=False)
    assert read_metadata(out).bands == (1,)


@pytest.mark.parametrize("kind", ["bce_dice", "focal_dice", "bce"])
def test_losses_ignore_unlabelled_pixels(kind):
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 8, 8) > 0.7).to(torch.uint8)
    target[:, :3] = 255                                   # unlabelled rows
    changed = logits.clone()
    changed[:, :, :3] = 50.0                              # whatever the model says there
    loss = training_loss(logits, target, kind)
    assert torch.isfinite(loss) and loss > 0
    assert training_loss(changed, target, kind) == pytest.approx(loss.item(), rel=1e-6)
    perfect = torch.where(target[:, None] == 1, 20.0, -20.0)
    assert training_loss(perfect, target, kind) < loss


def _drop_from_saved_config(state_path, key):
    with safe_open(str(state_path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a mapping)
    state = json.loads(header["state"])
    del state["config"][key]
    save_file(tensors, state_path, metadata={**header, "state": json.dumps(state)})


class _FixedLogits(torch.nn.Module):
    """Stands in for a U-Net: the top-left part of one logit map, whatever the input."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)

    def forward(self, x):
        return self.logits[None, None, : x.shape[2], : x.shape[3]]


def _memory_scene(target, held_rows=(0, 0), value=0.0):
    rows, cols = target.shape
    return data.Scene(Path(f"scene{value}"), None, (1,), target,
                               np.full((1, rows, cols), value, np.float32),
                               np.ones((rows, cols), bool), held_rows)


def test_hard_pixels_are_the_errors_beyond_the_tolerance():
    target = np.zeros((64, 64), np.uint8)
    target[:, 10] = 1
    target[0:4, 30:34] = IGNORE
    pred = np.zeros((64, 64), bool)
    pred[:50, 11] = True          # one pixel beside the truth: within the 2 px tolerance
    pred[40:44, 40:44] = True     # a false positive far from any truth
    pred[0:4, 30:34] = True       # unlabelled pixels are never wrong
    scene = _memory_scene(target, held_rows=(56, 64))  # rows 56-63 are for validation
    model = _FixedLogits(np.where(pred, 5.0, -5.0))
    sampler.mine_hard_pixels(model, [scene], (0.0,), (1.0,), _config(), torch.device("cpu"),
                             epoch=1)
    blob = {(r, c) for r in range(40, 44) for c in range(40, 44)}
    # Truth from row 51 on is more than 2 px from the last predicted pixel (49, 11).
    missed = {(r, 10) for r in range(51, 56)}
    assert {tuple(p) for p in scene.hard.tolist()} == blob | missed


def test_hard_pixel_mining_of_large_images_looks_at_a_pixel_budget(monkeypatch):
    """Beyond MINE_PIXELS an epoch, mining looks at random windows (other ones next epoch)."""
    pred = np.ones((64, 64), bool)            # wrong everywhere: every mined pixel is hard
    scene = _memory_scene(np.zeros((64, 64), np.uint8))
    model = _FixedLogits(np.where(pred, 5.0, -5.0))
    monkeypatch.setattr(data, "VAL_TILE", 32)
    monkeypatch.setattr(sampler, "MINE_PIXELS", 2 * 32 * 32)
    seen = []
    for epoch in (1, 2, 3):
        sampler.mine_hard_pixels(model, [scene], (0.0,), (1.0,), _config(),
                                 torch.device("cpu"), epoch)
        windows = {(r // 32, c // 32) for r, c in scene.hard.tolist()}
        assert len(scene.hard) == 2 * 32 * 32 and len(windows) == 2
        seen.append(windows)
    assert len(set().union(*seen)) > 2


def test_hard_windows_hold_a_hard_pixel_of_the_images_that_have_them():
    bright, dark = np.zeros((96, 96), np.uint8), np.zeros((96, 96), np.uint8)
    bright[60:63, 70:73] = 1
    scenes = [_memory_scene(dark, value=0.0), _memory_scene(bright, value=1.0)]
    scenes[1].hard = np.array([[60, 70]])
    config = _config(hard_fraction=1.0, scale_range=(1.0, 1.0), batch_size=16)
    x, y = sampler.training_batch(scenes, (0.0,), (1.0,), config, np.random.default_rng(0))
    assert (x.reshape(16, -1).min(axis=1) > 0.5).all()   # all from the bright image
    assert (y.reshape(16, -1).sum(axis=1) >= 1).all()     # each holds the hard pixel
    for _ in range(200):
        r0, c0 = sampler.window_origin(scenes[1], 32, scenes[1].hard,
                                       np.random.default_rng(_))
        assert r0 <= 60 < r0 + 32 and c0 <= 70 < c0 + 32


def test_time_limit_stops_before_an_epoch_that_would_overrun(scene, tmp_path):
    image_path, mask_path, _, _ = scene
    result = train_model(_config(images=[image_path], labels=[mask_path], epochs=5,
                                 max_minutes=1e-6), tmp_path / "t.safetensors", progress=False)
    assert result.epochs == 1 and result.stopped.startswith("time limit")
    assert last_paths(tmp_path / "t.safetensors")[0].exists()
    # With every planned epoch done, the run ended because its epochs did, not the clock.
    done = train_model(_config(images=[image_path], labels=[mask_path], epochs=1,
                               max_minutes=1e-6), tmp_path / "u.safetensors", progress=False)
    assert done.epochs == 1 and done.stopped == "epochs"


def test_windowed_reads_of_large_images_train_exactly_like_in_memory(scene, tmp_path,
                                                                     monkeypatch):
    """Images above the in-memory limit are read window by window: same batches, weights."""
    image_path, mask_path, _, _ = scene
    config = _config(images=[image_path], labels=[mask_path], epochs=1)
    train_model(config, tmp_path / "memory.safetensors", progress=False)
    monkeypatch.setattr(data, "IN_MEMORY_PIXELS", 0)
    train_model(config, tmp_path / "windows.safetensors", progress=False)
    memory, windows = _weights(tmp_path / "memory.last.safetensors"), _weights(
        tmp_path / "windows.last.safetensors")
    for key in memory:
        assert torch.equal(memory[key], windows[key]), key


def test_early_stopping_after_patience_epochs_without_improvement(scene, tmp_path):
    image_path, mask_path, _, _ = scene
    frozen = _config(images=[image_path], labels=[mask_path], epochs=6, patience=2, lr=1e-12)
    result = train_model(frozen, tmp_path / "p.safetensors", progress=False)
    assert result.epochs == 3 and result.best["epoch"] == 1
    assert result.stopped.startswith("early stop")


def test_relative_paths_in_a_yaml_recipe_are_from_its_folder(tmp_path, monkeypatch):
    """As in workflows: a recipe names its data relative to itself, wherever it is run from;
    flags stay relative to the working directory."""
    recipes, data = tmp_path / "recipes", tmp_path / "data"
    recipes.mkdir()
    data.mkdir()
    (recipes / "run.yaml").write_text(
        "images: [../data/a.tif]\nlabels: [../data/a_mask.tif]\nimage_dir: ../data\n"
        "split_file: ~/split.txt\nval_images: [v.tif]\n")
    monkeypatch.chdir(data)
    config = TrainConfig.load(Path("..") / "recipes" / "run.yaml", labels=[Path("b.tif")])
    assert [p.resolve() for p in config.images] == [(data / "a.tif").resolve()]
    assert config.image_dir.resolve() == data.resolve()
    assert config.val_images[0].resolve() == (recipes / "v.tif").resolve()
    assert config.split_file == Path.home() / "split.txt"
    assert config.labels == [Path("b.tif")]   # a flag: relative to the working directory
