"""Multi-class training: softmax models, class-id and vector class labels, checkpoints."""

from __future__ import annotations

import shutil
import subprocess

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from shapely.geometry import LineString, box

from geounet.checkpoint import load_checkpoint, read_metadata
from geounet.errors import ConfigError, InputError
from geounet.labels import IGNORE, LabelConfig, image_info, load_target
from geounet.predict import PredictConfig, predict_raster
from geounet.train import TrainConfig, train_model
from geounet.training import data, loop, sampler
from geounet.training.losses import loss as training_loss
from geounet.vectorize import vectorize_raster

NAMES = ("background", "building", "road", "water")
COLOURS = np.array([[70, 110, 60], [200, 90, 70], [130, 130, 130], [40, 60, 160]])
TINY = dict(class_names=NAMES, width=8, depth=2, patch=32, batch_size=4, epochs=3,
            steps_per_epoch=8, lr=1e-2, seed=1, tile_size=64, overlap=16, threads=1)


def _classes(size: int = 96) -> np.ndarray:
    """Class ids: building squares, a road stripe, a water pond, background elsewhere."""
    ids = np.zeros((size, size), np.uint8)
    for r, c in ((8, 8), (60, 20), (20, 60), (70, 70)):
        ids[r : r + 14, c : c + 14] = 1
    ids[44:50, :] = 2
    ids[2:20, 34:54] = 3
    return ids


@pytest.fixture
def scene(make_raster):
    """96x96 RGB scene whose colour says the class (plus noise), and its class-id mask."""
    ids = _classes()
    rng = np.random.default_rng(0)
    image = np.clip(np.moveaxis(COLOURS[ids], -1, 0) + rng.normal(0, 12, (3, 96, 96)), 1, 255)
    return (make_raster(image.astype(np.uint8), name="image.tif"),
            make_raster(ids[None], name="classes.tif"), ids)


def test_softmax_model_learns_every_class(scene, tmp_path):
    image, mask, _ = scene
    out = tmp_path / "lc.safetensors"
    config = TrainConfig(images=[image], labels=[mask], val_images=[image], val_labels=[mask],
                         monitor="miou", **{**TINY, "epochs": 3, "steps_per_epoch": 20})
    result = train_model(config, out, progress=False)
    model, meta = load_checkpoint(out)
    assert meta.arch.classes == 4 and meta.class_names == NAMES
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    # Chance for a 3-of-4 class guess is ~0.25 IoU at best; colour makes the task easy.
    assert result.best["miou"] > 0.5
    assert {f"iou/{n}" for n in NAMES[1:]} <= set(result.best)
    assert result.best["miou"] == pytest.approx(np.mean([result.best[f"iou/{n}"]
                                                         for n in NAMES[1:]]))


def test_softmax_loss_ignores_unlabelled_pixels_and_weighs_classes():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8), dtype=torch.uint8)
    target[:, :4] = IGNORE
    value = training_loss(logits, target, "bce_dice")
    value.backward()
    assert torch.isfinite(value) and (logits.grad[:, :, :4] == 0).all()
    changed = logits.detach().clone()
    changed[:, :, :4] = 100  # unlabelled pixels: any logits give the same loss
    assert training_loss(changed, target, "bce_dice") == pytest.approx(value.item())
    plain = training_loss(logits.detach(), target, "bce")
    ones = training_loss(logits.detach(), target, "bce", torch.ones(3))
    assert ones == pytest.approx(plain.item())
    heavy = training_loss(logits.detach(), target, "bce", torch.tensor([1.0, 1.0, 5.0]))
    assert heavy != pytest.approx(plain.item())


def test_label_value_outside_the_classes_is_refused(scene, make_raster, tmp_path):
    image, _, ids = scene
    bad = ids.copy()
    bad[90, 7] = 6
    mask = make_raster(bad[None], name="bad.tif")
    with pytest.raises(InputError, match=r"bad.tif: label value 6 \(at row 90, col 7, 1 px\)"):
        train_model(TrainConfig(images=[image], labels=[mask], **TINY), tmp_path / "m.st",
                    progress=False)


def test_unlabelled_value_is_ignored_not_learned(scene, make_raster):
    image, _, ids = scene
    labels = ids.copy()
    labels[:10] = 9
    mask = make_raster(labels[None], name="partial.tif")
    config = TrainConfig(images=[image], labels=[mask], ignore_value=9, **TINY)
    loaded = data.open_scene(image, mask, config, LabelConfig())
    assert (loaded.target[:10] == IGNORE).all()
    np.testing.assert_array_equal(loaded.target[10:], ids[10:])
    with pytest.raises(ConfigError, match="ignore_value 2 is the id of class 'road'"):
        TrainConfig.build({**TINY, "ignore_value": 2})


def _vector_layer(tmp_path, values):
    """Overlapping polygons and a line, each with a class value, in the scene's CRS."""
    with rasterio.open(tmp_path / "image.tif") as src:
        t, crs = src.transform, src.crs
    x0, y0, px = t.c, t.f, t.a

    def rect(c0, r0, c1, r1):
        return box(x0 + c0 * px, y0 - r1 * px, x0 + c1 * px, y0 - r0 * px)

    geoms = [rect(5, 5, 40.5, 30), rect(30.3, 20, 60, 61.7),
             LineString([(x0, y0 - 70.2 * px), (x0 + 96 * px, y0 - 80 * px)]),
             rect(50, 50, 90, 90)]
    frame = gpd.GeoDataFrame({"kind": values}, geometry=geoms, crs=crs)
    path = tmp_path / "labels.gpkg"
    frame.to_file(path)
    return path


def test_class_field_by_name_equals_gdal_rasterize_by_id(scene, tmp_path):
    image, _, _ = scene
    info = image_info(image)
    by_name = _vector_layer(tmp_path, ["building", "water", "road", "building"])
    config = LabelConfig(line_width=0.5, line_width_units="map", class_field="kind",
                         class_names=NAMES)
    target = load_target(by_name, info, config)
    assert set(np.unique(target)) == {0, 1, 2, 3}
    ids = _vector_layer(tmp_path, [1, 3, 2, 1])
    np.testing.assert_array_equal(load_target(ids, info, config), target)
    if shutil.which("gdal_rasterize") is None:
        pytest.skip("gdal_rasterize is not installed")
    gpd.read_file(ids).iloc[[0, 1, 3]].to_file(tmp_path / "polygons.gpkg")
    reference = tmp_path / "reference.tif"
    with rasterio.open(image) as src:
        bounds, res = src.bounds, src.res
    subprocess.run(["gdal_rasterize", "-q", "-a", "kind", "-init", "0", "-ot", "Byte",
                    "-te", *map(str, bounds), "-tr", *map(str, res),
                    str(tmp_path / "polygons.gpkg"), str(reference)], check=True)
    with rasterio.open(reference) as src:
        expected = src.read(1)
    polygons_only = load_target(tmp_path / "polygons.gpkg", info, config)
    np.testing.assert_array_equal(polygons_only, expected)


def test_unknown_class_names_are_listed(scene, tmp_path):
    image, _, _ = scene
    path = _vector_layer(tmp_path, ["building", "lake", "road", "forest"])
    config = LabelConfig(line_width=1, class_field="kind", class_names=NAMES)
    with pytest.raises(InputError, match=r"'kind' holds 'forest', 'lake', not class names "
                                         r"building, road, water"):
        load_target(path, image_info(image), config)


def test_rare_classes_get_their_share_of_windows(scene):
    image, mask, ids = scene
    config = TrainConfig(images=[image], labels=[mask], pos_fraction=1.0, **TINY)
    loaded = data.open_scene(image, mask, config, LabelConfig())
    assert [len(p) for p in loaded.class_pixels] == [(ids == k).sum() for k in (1, 2, 3)]
    rng = np.random.default_rng(0)
    picks = [id(sampler._centres(loaded, False, config, rng)) for _ in range(300)]
    counts = [picks.count(id(p)) for p in loaded.class_pixels]
    assert min(counts) > 70   # each of 3 classes about a third, whatever its area
    weights = loop.class_weights(TrainConfig(**{**config.__dict__, "class_weights": "auto"}),
                                 [loaded])
    share = np.bincount(ids.ravel(), minlength=4) / ids.size
    expected = 1 / np.sqrt(share)
    np.testing.assert_allclose(weights, expected / expected.mean())


def test_checkpoint_carries_classes_colours_and_ignore_value(scene, tmp_path):
    image, mask, _ = scene
    colours = ("#000000", "#ff0000", "#808080", "#0000ff")
    out = tmp_path / "lc.safetensors"
    train_model(TrainConfig(images=[image], labels=[mask], class_colors=colours,
                            ignore_value=200, **{**TINY, "epochs": 1, "steps_per_epoch": 1}),
                out, progress=False)
    meta = read_metadata(out)
    assert (meta.class_names, meta.class_colors, meta.ignore_value) == (NAMES, colours, 200)
    with pytest.raises(ConfigError, match="class_colors: gives 2 colours for 4 classes"):
        TrainConfig.build({**TINY, "class_colors": ["#000000", "#ffffff"]})


def test_binary_names_stay_a_sigmoid_model(scene, tmp_path):
    image, mask, _ = scene
    out = tmp_path / "bin.safetensors"
    train_model(TrainConfig(images=[image], labels=[mask],
                            **{**TINY, "class_names": ("background", "road"), "epochs": 1,
                               "steps_per_epoch": 1}), out, progress=False)
    meta = read_metadata(out)
    assert meta.arch.classes == 1 and meta.colors[0] == "#282828"


def test_predicted_classes_vectorize_with_their_names(scene, tmp_path):
    image, mask, ids = scene
    out = tmp_path / "lc.safetensors"
    train_model(TrainConfig(images=[image], labels=[mask], **TINY), out, progress=False)
    predicted = tmp_path / "pred.tif"
    predict_raster(image, out, predicted, None, PredictConfig(device="cpu", progress=False))
    result = vectorize_raster(predicted, tmp_path / "pred.gpkg")
    frame = gpd.read_file(result.output if hasattr(result, "output") else tmp_path / "pred.gpkg")
    with rasterio.open(predicted) as src:
        found = {NAMES[k] for k in np.unique(src.read(1)) if 0 < k < len(NAMES)}
    assert set(frame["class_name"]) == found and found


def test_evaluate_reports_mean_iou_and_confusion_matrix(scene, make_raster, tmp_path):
    import json

    from click.testing import CliRunner

    from geounet.cli import main

    _, mask, ids = scene
    pred = ids.copy()
    pred[44:50, :48] = 0          # half the road missed: 288 road pixels called background
    pred[2:20, 34:44] = 1         # part of the water called building: 180 pixels
    predicted = make_raster(pred[None], name="pred.tif")
    result = CliRunner().invoke(main, ["evaluate", str(predicted), str(mask), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    names = report["confusion"]["classes"]
    matrix = np.array(report["confusion"]["matrix"])
    assert names == ["class 0", "class 1", "class 2", "class 3"]
    assert matrix[2, 0] == 288 and matrix[3, 1] == 180 and matrix.sum() == ids.size
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(ids.ravel()))
    ious = [report["classes"][n]["pixel"]["iou"] for n in names[1:]]
    assert report["mean_iou"] == pytest.approx(np.mean(ious))
    assert ious[1] == pytest.approx(0.5)
    table = CliRunner().invoke(main, ["evaluate", str(predicted), str(mask)]).output
    assert "mean IoU over foreground classes" in table and "confusion" in table


# RGB palette masks ------------------------------------------------------------------------

PALETTE = {"#000000": "background", "#ff0000": "building", "#808080": "road", "#0000ff": 3}
RGB = np.array([[0, 0, 0], [255, 0, 0], [128, 128, 128], [0, 0, 255]], np.uint8)


def test_palette_masks_become_class_ids_from_a_recipe_file(scene, make_raster, tmp_path,
                                                           monkeypatch):
    image, _, ids = scene
    rgb = np.moveaxis(RGB[ids], -1, 0).copy()
    rgb[:, 90:, :3] = 7                       # nodata: ignored whatever the palette says
    make_raster(rgb, name="recipe/rgb_mask.tif", nodata=7)
    (tmp_path / "recipe" / "palette.yaml").write_text(
        "".join(f"'{colour}': {cls}\n" for colour, cls in PALETTE.items()))
    recipe = tmp_path / "recipe" / "run.yaml"
    recipe.write_text(f"images: [{image}]\nlabels: [rgb_mask.tif]\npalette: palette.yaml\n"
                      f"class_names: [{', '.join(NAMES)}]\npatch: 32\n")
    monkeypatch.chdir(tmp_path)               # paths are from the recipe's folder, not here
    config = TrainConfig.load(recipe)
    assert config.palette_ids == (("#000000", 0), ("#ff0000", 1), ("#808080", 2),
                                  ("#0000ff", 3))
    train, _ = data.load_data(config)
    expected = ids.copy()
    expected[90:, :3] = IGNORE
    np.testing.assert_array_equal(train[0].target, expected)
    # The same palette inline (name=colour pairs, ids allowed) gives the same target.
    inline = TrainConfig.build({**config.__dict__, "palette": "background=#000000,"
                                "building=#FF0000,road=#808080,3=#0000ff"})
    assert inline.palette == config.palette


def test_palette_colour_not_listed_is_one_clear_error(scene, make_raster, tmp_path):
    from click.testing import CliRunner

    from geounet.cli import main

    image, _, ids = scene
    rgb = np.moveaxis(RGB[ids], -1, 0).copy()
    rgb[:, 30:32, 70:73] = [[[0]], [[200]], [[0]]]   # 6 px of a green nobody listed
    rgb[:, 95, 95] = [1, 2, 3]                         # and one other stray colour
    mask = make_raster(rgb, name="rgb.tif")
    palette = ",".join(f"{cls}={colour}" for colour, cls in PALETTE.items())
    result = CliRunner().invoke(main, ["train", "--image", str(image), "--label", str(mask),
                                       "--palette", palette, "--classes", ",".join(NAMES),
                                       "--width", "4", "--depth", "2", "--patch", "32",
                                       "--epochs", "1", "--steps-per-epoch", "1",
                                       "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code != 0
    message = result.output.strip()
    assert len(message.splitlines()) == 1, message
    assert ("rgb.tif: colour #00c800 (6 px, first at row 30, col 70) is not in the palette; "
            "1 other unlisted colour(s) too; add it to the palette") in message
    assert not (tmp_path / "m.safetensors").exists()
    with pytest.raises(InputError, match="palette labels are RGB masks .* 1 band"):
        load_target(make_raster(ids[None], name="ids.tif"), image_info(image),
                    LabelConfig(palette=(("#000000", 0),)))
    with pytest.raises(ConfigError, match=r"#00ff00 -> 'forest' is not a class"):
        TrainConfig.build({**TINY, "palette": {"#00ff00": "forest"}})
    with pytest.raises(ConfigError, match="an unquoted # starts a comment"):
        (tmp_path / "p.yaml").write_text("#ff0000: building\n")
        TrainConfig.build({**TINY, "palette": str(tmp_path / "p.yaml")})


# Unlabelled outside the vector labels ---------------------------------------------------

def test_unlabelled_outside_ignores_pixels_no_feature_covers(scene, tmp_path):
    image, _, _ = scene
    labels = LabelConfig(2, "pixels", "kind", NAMES)
    footprint = load_target(_vector_layer(tmp_path, [1, 1, 1, 1]), image_info(image),
                            labels) > 0
    layer = _vector_layer(tmp_path, ["building", "water", "road", "background"])
    everywhere = load_target(layer, image_info(image), labels)
    config = TrainConfig(images=[image], labels=[layer], class_field="kind", line_width=2,
                         unlabelled_outside=True, val_images=[image], val_labels=[layer],
                         **TINY)
    train, _ = data.load_data(config)     # the recipe key / --unlabelled-outside
    target = train[0].target
    # Where a feature lies the classes are those of the usual burn (the background square
    # included, as 0); everywhere else the pixels are unlabelled.
    np.testing.assert_array_equal(target[footprint], everywhere[footprint])
    assert (target[~footprint] == IGNORE).all() and (~footprint).sum() > 1000
    assert (target[60:88, 60:88] == 0).all()   # inside the background square
    assert (everywhere[~footprint] == 0).all()   # without the option: background
    by_id = _vector_layer(tmp_path, [1, 3, 2, 0])   # id 0 is accepted for background here
    np.testing.assert_array_equal(load_target(by_id, image_info(image), LabelConfig(
        2, "pixels", "kind", NAMES, unlabelled_outside=True)), target)


def test_unlabelled_outside_is_refused_where_it_cannot_apply(scene, tmp_path):
    image, mask, _ = scene
    from click.testing import CliRunner

    from geounet.cli import main

    with pytest.raises(ConfigError, match="unlabelled_outside needs class_field"):
        TrainConfig.build({**TINY, "unlabelled_outside": True})
    result = CliRunner().invoke(main, ["train", "--image", str(image), "--label", str(mask),
                                       "--unlabelled-outside", "-o", str(tmp_path / "m.st")])
    assert result.exit_code != 0 and "unlabelled_outside needs class_field" in result.output
    assert len(result.output.strip().splitlines()) == 1
    config = TrainConfig(images=[image], labels=[mask], class_field="kind",
                         unlabelled_outside=True, **TINY)
    with pytest.raises(InputError, match="classes.tif: unlabelled_outside applies to vector "
                                         "labels; this is a raster"):
        data.load_data(config)


# Two-class softmax on request -----------------------------------------------------------

def test_two_class_softmax_on_request_runs_through_predict_vectorize_evaluate(
        scene, make_raster, tmp_path):
    from geounet.engines import export_onnx, onnxruntime_available
    from geounet.evaluate import EvaluateConfig, evaluate_model

    image, _, ids = scene
    mask = make_raster((ids > 0).astype(np.uint8)[None], name="built.tif")
    two = {**TINY, "class_names": ("background", "built"), "epochs": 2, "steps_per_epoch": 10}
    out = tmp_path / "soft.safetensors"
    config = TrainConfig(images=[image], labels=[mask], softmax=True, **two)
    result = train_model(config, out, progress=False)
    meta = read_metadata(out)
    assert meta.arch.classes == 2 and meta.class_names == ("background", "built")
    assert {"iou/built", "f1/built", "miou"} <= set(result.best)
    assert result.best["miou"] == result.best["iou/built"] > 0.3
    # Without the switch the same names train the binary sigmoid model, as before.
    plain = TrainConfig(**{**config.__dict__, "softmax": False, "epochs": 1,
                           "steps_per_epoch": 1})
    assert plain.classes == 1 and TrainConfig(**two).classes == 1
    predicted, probs = tmp_path / "mask.tif", tmp_path / "prob.tif"
    predict_raster(image, out, predicted, probs, PredictConfig(device="cpu", progress=False))
    with rasterio.open(predicted) as src, rasterio.open(probs) as psrc:
        classes, prob = src.read(1), psrc.read()
    assert prob.shape[0] == 2 and np.allclose(prob.sum(axis=0), 1, atol=1e-5)
    np.testing.assert_array_equal(classes, prob.argmax(axis=0))
    assert set(np.unique(classes)) == {0, 1}
    vectorize_raster(predicted, tmp_path / "pred.gpkg")
    assert set(gpd.read_file(tmp_path / "pred.gpkg")["class_name"]) == {"built"}
    report = evaluate_model(out, [(image, mask)], EvaluateConfig(), progress=False)
    truth, pred = ids > 0, classes == 1
    iou = (truth & pred).sum() / (truth | pred).sum()
    assert report["classes"]["built"]["pixel"]["iou"] == pytest.approx(iou)
    if onnxruntime_available():   # the exported model: softmax over the two channels
        exported = export_onnx(out, tmp_path / "soft.onnx")
        assert (exported.classes, exported.activation) == (2, "softmax")
        predict_raster(image, exported.output, tmp_path / "onnx.tif", None,
                       PredictConfig(device="cpu", progress=False, engine="onnx"))
        with rasterio.open(tmp_path / "onnx.tif") as src:
            assert (src.read(1) == classes).mean() > 0.999


# Resume and reproducibility of multi-class runs on the sample land-cover scene -----------

@pytest.fixture(scope="module")
def landcover(tmp_path_factory):
    """``geounet sample landcover`` at 256 px (seed 0: every class present), its files."""
    from click.testing import CliRunner

    from geounet.cli import main
    from geounet.sample_data import LANDCOVER_CLASSES

    folder = tmp_path_factory.mktemp("landcover")
    result = CliRunner().invoke(main, ["sample", "landcover", "--size", "256", "--seed", "0",
                                       "-o", str(folder), "-q"])
    assert result.exit_code == 0, result.output
    names = tuple(LANDCOVER_CLASSES)
    with rasterio.open(folder / "landcover_mask.tif") as src:
        assert (np.bincount(src.read(1).ravel(), minlength=len(names)) > 0).all()
    return folder / "landcover_image.tif", folder / "landcover_mask.tif", names


def _landcover_config(landcover, **changes) -> TrainConfig:
    image, mask, names = landcover
    return TrainConfig(**{**TINY, "images": [image], "labels": [mask], "class_names": names,
                          "monitor": "miou", "epochs": 4, "steps_per_epoch": 12, **changes})


def _per_class(result) -> list[dict[str, float]]:
    """Each epoch's validation scores (per class and means), to 3 decimals."""
    return [{k: round(v, 3) for k, v in h.items() if k not in ("seconds", "epoch")}
            for h in result.history]


def test_multiclass_same_seed_gives_the_same_per_class_metrics(landcover, tmp_path):
    config = _landcover_config(landcover)
    runs = [train_model(_landcover_config(landcover, seed=seed), tmp_path / f"{i}.st",
                        progress=False) for i, seed in enumerate((1, 1, 2))]
    assert {f"iou/{n}" for n in config.class_names[1:]} <= set(runs[0].history[-1])
    assert max(runs[0].history[-1][f"iou/{n}"] for n in config.class_names[1:]) > 0.5
    assert _per_class(runs[0]) == _per_class(runs[1])
    assert _per_class(runs[0]) != _per_class(runs[2])   # another seed: the check can fail
    first, second = (load_checkpoint(tmp_path / f"{i}.st")[0].state_dict() for i in (0, 1))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_multiclass_killed_run_resumes_to_the_same_per_class_metrics(landcover, tmp_path,
                                                                      monkeypatch):
    """Killed in epoch 3 of 4 (hard pixels mined per class), resumed: as if never killed."""
    from geounet.train import last_paths

    config = _landcover_config(landcover, hard_fraction=0.5)
    unbroken = train_model(config, tmp_path / "whole.st", progress=False)
    validate, calls = loop.validate, []

    def killed_in_epoch_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return validate(*args, **kwargs)

    out = tmp_path / "broken.st"
    monkeypatch.setattr(loop, "validate", killed_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        train_model(config, out, progress=False)
    monkeypatch.setattr(loop, "validate", validate)
    assert read_metadata(last_paths(out)[0]).source["epoch"] == 2
    resumed = train_model(config, out, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert _per_class(resumed) == _per_class(unbroken)
    assert unbroken.best["miou"] > 0.1            # scores that can differ, not all zero
    assert resumed.best == pytest.approx(unbroken.best, abs=1e-6)
    whole = load_checkpoint(last_paths(tmp_path / "whole.st")[0])[0].state_dict()
    again = load_checkpoint(last_paths(out)[0])[0].state_dict()
    assert all(torch.equal(whole[k], again[k]) for k in whole)


def test_multiclass_model_runs_through_a_workflow(scene, tmp_path):
    """A workflow with a softmax model: a mask of class ids with the names and colours, one
    probability band per class, features named by class, and per-class summaries."""
    import json

    from geounet.geotiff import read_class_colors, read_class_names
    from geounet.workflow import REPORT, load_workflow, run_workflow

    image, mask, _ = scene
    model = tmp_path / "lc.safetensors"
    train_model(TrainConfig(images=[image], labels=[mask], **TINY), model, progress=False)
    _, meta = load_checkpoint(model)
    (tmp_path / "in").mkdir()
    shutil.copy(image, tmp_path / "in" / "a.tif")
    path = tmp_path / "wf.yaml"
    path.write_text(f"name: lc\ninputs: {{folder: in}}\nmodel: {model}\n"
                    "outputs: {folder: out, probabilities: '{stem}_prob.tif'}\n")
    report = run_workflow(load_workflow(path), progress=False)
    assert [r.status for r in report.items] == ["done"]
    out = tmp_path / "out"
    with rasterio.open(out / "a_mask.tif") as src:
        classes = src.read(1)
        assert read_class_names(src) == list(NAMES)
        assert read_class_colors(src) == list(meta.class_colors)
    with rasterio.open(out / "a_prob.tif") as src:
        probs = src.read()
        assert probs.shape == (len(NAMES), *classes.shape)
        assert np.allclose(probs.sum(axis=0), 1, atol=1e-4)
        assert np.array_equal(probs.argmax(axis=0), classes)
    found = {NAMES[k] for k in np.unique(classes) if k > 0}
    assert len(found) >= 2
    frame = gpd.read_file(out / "a.gpkg")
    assert set(frame["class_name"]) == found
    summary = json.loads((out / REPORT).read_text())["items"][0]["summary"]
    assert set(summary["classes"]) == found
    for name in found:
        assert summary["classes"][name]["features"] == int((frame["class_name"] == name).sum())
