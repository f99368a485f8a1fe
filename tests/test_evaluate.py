"""Evaluation of mask and probability rasters, folders, vector labels, and of a model."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from shapely.geometry import box

from geounet.cli import main
from geounet.errors import InputError
from geounet.evaluate import EvaluateConfig, evaluate_model, evaluate_pairs
from geounet.metrics import Counts, count, ods_ois, threshold_sweep


def _line_truth() -> np.ndarray:
    truth = np.zeros((1, 40, 50), np.uint8)
    truth[0, 5:35, 20] = 255       # a 30 px line in a 0/255 mask
    return truth


def test_probability_raster_gets_ods_ois_and_per_class_scores(make_raster, tmp_path):
    truth = make_raster(_line_truth(), name="truth.tif")
    prob = np.zeros((1, 40, 50), np.float32)
    prob[0, 5:35, 21] = 0.7        # 1 px off the line: tolerated at 2 px
    prob[0, 5:15, 40] = 0.4        # false alarms only above a 0.4 threshold
    prob[0, 0, 0] = np.nan         # nodata
    pred = make_raster(prob, name="prob.tif", nodata=float("nan"))
    report = evaluate_pairs([(pred, truth)], EvaluateConfig(thresholds=9))
    assert report["prediction"] == "probability" and report["images"] == 1
    crack = report["classes"]["class 1"]
    assert crack["tolerant"]["f1"] == 1.0 and crack["pixel"]["iou"] == 0.0
    assert report["classes"]["class 0"]["pixel"]["recall"] == pytest.approx(
        (40 * 50 - 1 - 30 - 30) / (40 * 50 - 1 - 30))
    ods = report["ods_ois"]
    assert ods["ods_f1"] == 1.0 and 0.4 <= ods["ods_threshold"] < 0.7
    assert ods["ois_f1"] == 1.0
    # At a 0.3 cut the false alarms count: precision 30/40.
    low = evaluate_pairs([(pred, truth)], EvaluateConfig(threshold=0.3, thresholds=0))
    assert low["classes"]["class 1"]["tolerant"]["precision"] == pytest.approx(30 / 40)
    assert "ods_ois" not in low


def test_ods_pools_counts_and_ois_averages_images():
    thresholds = np.array([0.25, 0.5, 0.75])
    truth = np.zeros((20, 20), bool)
    truth[5:15, 10] = True
    a = np.where(truth, 0.6, 0.0)                  # found above 0.25 and 0.5 only
    b = np.where(truth, 0.9, 0.0)
    b[0:10, 0] = 0.4                               # false alarms at 0.25 only
    sweeps = [threshold_sweep(p, truth, thresholds) for p in (a, b)]
    assert [c.tolerant().f1 for c in sweeps[0]] == [1.0, 1.0, 0.0]
    assert [c.tolerant().f1 for c in sweeps[1]] == pytest.approx([2 * 0.5 / 1.5, 1.0, 1.0])
    scores = ods_ois(sweeps, thresholds)
    assert scores["ods_threshold"] == 0.5 and scores["ods_f1"] == 1.0
    assert scores["ois_f1"] == 1.0
    pooled = Counts()
    pooled += count(a > 0.25, truth)
    pooled += count(b > 0.25, truth)
    assert (pooled.pred, pooled.truth, pooled.pred_near) == (30, 20, 20)


def test_folders_of_masks_with_vector_labels_and_class_ids(make_raster, tmp_path):
    preds, labels = tmp_path / "preds", tmp_path / "labels"
    for i in range(2):
        mask = np.zeros((1, 30, 30), np.uint8)
        mask[0, 10:20, 10:20] = 1
        mask[0, 0:2, 0:2] = 255                      # nodata (geounet's mask nodata)
        make_raster(mask, name=f"preds/{i}.tif", nodata=255)
        # Labels: the same square, as a polygon in map coordinates (0.5 m pixels).
        left, top = 500000.0 + 10 * 0.5, 5000000.0 - 10 * 0.5
        labels.mkdir(exist_ok=True)
        shift = 0.5 * 5 * i                          # the second label is 5 px to the right
        gpd.GeoDataFrame(geometry=[box(left + shift, top - 5, left + 5 + shift, top)],
                         crs="EPSG:32633").to_file(labels / f"{i}.geojson")
    result = CliRunner().invoke(main, ["evaluate", str(preds), str(labels), "--json",
                                       "-o", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 2 and "per_image" not in report
    # 200 predicted and 200 true pixels, 100 + 50 of them in common (nodata left out).
    assert report["pixel"]["precision"] == pytest.approx(150 / 200)
    assert report["pixel"]["iou"] == pytest.approx(150 / 250)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [item["class 1"]["pixel"]["iou"] for item in saved["per_image"]] == pytest.approx(
        [1.0, 50 / 150])
    # The printed table names every row in full and lines the figures up.
    table = CliRunner().invoke(main, ["evaluate", str(preds), str(labels)]).stdout.splitlines()
    row = next(line for line in table if line.startswith("class 1 tolerant (2 px) "))
    tolerant = report["classes"]["class 1"]["tolerant"]
    assert row.split()[-4:] == [f"{tolerant[k]:.4f}" for k in ("precision", "recall", "f1",
                                                                 "iou")]
    lined_up = [line for line in table if line.startswith(("scores ", "pixel ", "tolerant ",
                                                            "class "))]
    assert len(lined_up) == 6 and len({len(line) for line in lined_up}) == 1


def test_evaluate_runs_a_model_on_images(scene_for_model, tmp_path):
    image, label, checkpoint = scene_for_model
    report = evaluate_model(checkpoint, [(image, label)], EvaluateConfig(thresholds=4))
    assert report["model"] == str(checkpoint)
    assert set(report["classes"]) == {"background", "thing"}
    assert set(report["ods_ois"]) == {"ods_f1", "ods_threshold", "ods_iou", "ois_f1"}
    result = CliRunner().invoke(main, ["evaluate", "-m", str(checkpoint), "--images",
                                       str(image), "--labels", str(label), "--thresholds",
                                       "4"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split() == ["scores", "precision", "recall", "F1",
                                                     "IoU"]
    assert "ODS tolerant F1" in result.stdout and "images: 1" in result.stdout
    bad = CliRunner().invoke(main, ["evaluate", "-m", str(checkpoint), "--images",
                                    str(image)])
    assert bad.exit_code == 1 and "--labels" in bad.output


@pytest.fixture
def scene_for_model(make_raster, checkpoint):
    rng = np.random.default_rng(0)
    image = make_raster(rng.integers(0, 255, (3, 50, 70), dtype=np.uint8), name="img.tif")
    truth = np.zeros((1, 50, 70), np.uint8)
    truth[0, 20:30, :] = 1
    return image, make_raster(truth, name="lab.tif"), checkpoint


def test_evaluate_with_tta_scores_what_predict_tta_writes(scene_for_model, tmp_path):
    """`evaluate -m --tta` scores the probabilities `predict --tta` writes, and says so."""
    image, label, checkpoint = scene_for_model
    prob = tmp_path / "prob.tif"
    done = CliRunner().invoke(main, ["predict", str(image), "-m", str(checkpoint),
                                     "--probabilities", str(prob), "--tta", "-q"])
    assert done.exit_code == 0, done.output
    config = EvaluateConfig(threshold=0.444, thresholds=4, class_names=("background", "thing"))
    direct = evaluate_pairs([(prob, label)], config)
    result = CliRunner().invoke(main, ["evaluate", "-m", str(checkpoint), "--images",
                                       str(image), "--labels", str(label), "--tta", "--json",
                                       "--threshold", "0.444", "--thresholds", "4"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tta"] is True
    assert report["pixel"] == direct["classes"]["thing"]["pixel"]
    plain = evaluate_model(checkpoint, [(image, label)], config)
    assert plain["tta"] is False
    assert plain["classes"]["thing"]["pixel"] != report["pixel"]


# -- vector labels with a class attribute (issue 17) --------------------------------------------
LAND_COVER = ("background", "building", "road", "water")
PIXEL = 0.5                                   # conftest's grid: 0.5 m pixels from (500000, 5e6)


def _cells(rows: slice, cols: slice):
    """The map-coordinate box of pixel rows x cols on conftest's grid."""
    left, top = 500000.0 + cols.start * PIXEL, 5000000.0 - rows.start * PIXEL
    return box(left, top - (rows.stop - rows.start) * PIXEL,
               left + (cols.stop - cols.start) * PIXEL, top)


PARTS = {"building": (slice(5, 15), slice(5, 20)), "road": (slice(20, 24), slice(0, 60)),
         "water": (slice(30, 38), slice(40, 55))}


@pytest.fixture
def land_cover(make_raster, tmp_path):
    """A 4-class prediction (names in its tags, as predict writes them) and vector truth
    layers of the same scene with the water 4 px to the right: class by name and by id."""
    from geounet.geotiff import CLASS_NAMES_TAG

    pred = np.zeros((1, 40, 60), np.uint8)
    truth = np.zeros((40, 60), np.uint8)
    geoms = []
    for k, name in enumerate(LAND_COVER[1:], start=1):
        rows, cols = PARTS[name]
        pred[0, rows, cols] = k
        if name == "water":
            cols = slice(cols.start + 4, cols.stop + 4)
        truth[rows, cols] = k
        geoms.append(_cells(rows, cols))
    path = make_raster(pred, name="pred.tif", nodata=255)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(**{CLASS_NAMES_TAG: json.dumps(LAND_COVER)})
    frame = gpd.GeoDataFrame({"kind": list(LAND_COVER[1:]), "code": [1, 2, 3]},
                             geometry=geoms, crs="EPSG:32633")
    frame.to_file(tmp_path / "truth.gpkg")
    return path, tmp_path / "truth.gpkg", pred[0], truth


def _iou(pred: np.ndarray, truth: np.ndarray, k: int) -> float:
    return ((pred == k) & (truth == k)).sum() / ((pred == k) | (truth == k)).sum()


@pytest.mark.parametrize("field", ["kind", "code"])
def test_vector_truth_with_a_class_field_by_name_or_id(land_cover, field):
    pred_path, truth_path, pred, truth = land_cover
    result = CliRunner().invoke(main, ["evaluate", str(pred_path), str(truth_path),
                                       "--class-field", field, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report["classes"]) == list(LAND_COVER)
    for k, name in enumerate(LAND_COVER):
        assert report["classes"][name]["pixel"]["iou"] == pytest.approx(_iou(pred, truth, k))
    assert report["classes"]["water"]["pixel"]["iou"] < 1   # the shifted water counts
    assert report["mean_iou"] == pytest.approx(np.mean([_iou(pred, truth, k)
                                                        for k in (1, 2, 3)]))
    assert report["confusion"]["classes"] == list(LAND_COVER)
    # Without the field every feature is class 1: roads and water count as "buildings".
    plain = CliRunner().invoke(main, ["evaluate", str(pred_path), str(truth_path), "--json"])
    assert json.loads(plain.stdout)["classes"]["building"]["pixel"]["recall"] == pytest.approx(
        (pred == 1).sum() / (truth > 0).sum())


def test_unknown_class_names_are_one_line_listing_them(land_cover, tmp_path):
    pred_path, truth_path, _, _ = land_cover
    frame = gpd.read_file(truth_path)
    frame.loc[0, "kind"], frame.loc[2, "kind"] = "forest", "lake"
    frame.to_file(tmp_path / "odd.gpkg")
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["evaluate", str(pred_path), str(tmp_path / "odd.gpkg"),
                                       "--class-field", "kind", "-o", str(report)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geounet: error:"), result.stderr
    assert "'forest', 'lake'" in lines[0] and "building, road, water" in lines[0]
    assert not report.exists()
    missing = CliRunner().invoke(main, ["evaluate", str(pred_path), str(truth_path),
                                        "--class-field", "landuse"])
    assert missing.exit_code == 1 and "no attribute 'landuse'" in missing.stderr
    raster = CliRunner().invoke(main, ["evaluate", str(pred_path), str(pred_path),
                                       "--class-field", "kind"])
    assert raster.exit_code == 1 and "vector labels" in raster.stderr


def test_model_evaluation_looks_classes_up_in_the_models_names_before_running_it(
        land_cover, make_raster, make_metadata, make_unet, tmp_path, monkeypatch):
    from dataclasses import replace

    from geounet.checkpoint import save_checkpoint
    from geounet.errors import InputError
    from geounet.labels import LabelConfig
    from geounet.model import UNetConfig

    _, truth_path, _, truth = land_cover
    arch = UNetConfig(3, 4, 4, 2)
    model = save_checkpoint(tmp_path / "lc.safetensors", make_unet(arch),
                            replace(make_metadata(arch), class_names=LAND_COVER))
    image = make_raster(np.random.default_rng(1).integers(0, 255, (3, 40, 60), np.uint8),
                        name="image.tif")
    config = EvaluateConfig(thresholds=0, labels=LabelConfig(class_field="kind"))
    report = evaluate_model(model, [(image, truth_path)], config, device="cpu")
    assert list(report["classes"])[0] == "background"
    pixels = {name: report["classes"].get(name, {}).get("pixel") for name in LAND_COVER[1:]}
    for k, name in enumerate(LAND_COVER[1:], start=1):   # every labelled class is scored
        assert pixels[name] is not None and (truth == k).any()
    frame = gpd.read_file(truth_path)
    frame.loc[1, "kind"] = "motorway"
    frame.to_file(tmp_path / "odd.gpkg")

    def not_now(*args, **kwargs):
        raise AssertionError("the model ran before the labels were checked")

    monkeypatch.setattr("geounet.predict.predict_raster", not_now)
    with pytest.raises(InputError, match="'motorway', not class names building, road, water"):
        evaluate_model(model, [(image, tmp_path / "odd.gpkg")], config, device="cpu")


COLOURS = {"background": "#ffffff", "building": "#0000ff", "road": "#00ffff", "water": "#ff0000"}


def _rgb(ids: np.ndarray, colours: dict[int, str]) -> np.ndarray:
    """(3, rows, cols) uint8 RGB mask painting each class id with its colour."""
    rgb = np.zeros((3, *ids.shape), np.uint8)
    for k, colour in colours.items():
        rgb[:, ids == k] = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])[:, None]
    return rgb


def test_rgb_truth_with_a_palette_is_scored_by_class(land_cover, make_raster, tmp_path):
    pred_path, _, pred, truth = land_cover
    ids = truth.copy()
    ids[0:3, 50:60] = 9                          # clutter, mapped to 'unlabelled'
    colours = {k: COLOURS[name] for k, name in enumerate(LAND_COVER)} | {9: "#808080"}
    mask = make_raster(_rgb(ids, colours), name="truth_rgb.tif")
    palette = ",".join(f"{name}={colour}" for name, colour in COLOURS.items())
    result = CliRunner().invoke(main, ["evaluate", str(pred_path), str(mask), "--json",
                                       "--palette", palette + ",unlabelled=#808080"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report["classes"]) == list(LAND_COVER)
    scored = ids != 9                            # the clutter is not scored
    for k, name in enumerate(LAND_COVER):
        assert report["classes"][name]["pixel"]["iou"] == pytest.approx(
            _iou(pred[scored], truth[scored], k))
    assert report["confusion"]["matrix"][0][0] == ((pred == 0) & (truth == 0) & scored).sum()
    # A YAML file with ids gives the same scores.
    (tmp_path / "palette.yaml").write_text("".join(
        f"'{colour}': {k}\n" for k, colour in enumerate(COLOURS.values())) +
        "'#808080': unlabelled\n")
    by_file = CliRunner().invoke(main, ["evaluate", str(pred_path), str(mask), "--json",
                                        "--palette", str(tmp_path / "palette.yaml")])
    assert json.loads(by_file.stdout)["classes"] == report["classes"]
    # Without the palette, an RGB mask is not class ids.
    plain = CliRunner().invoke(main, ["evaluate", str(pred_path), str(mask)])
    assert plain.exit_code == 1


def test_rgb_truth_with_an_unlisted_colour_is_the_training_error(land_cover, make_raster,
                                                                 tmp_path):
    pred_path, truth_path, _, truth = land_cover
    colours = {k: COLOURS[name] for k, name in enumerate(LAND_COVER)}
    rgb = _rgb(truth, colours)
    rgb[:, 30:32, 0:3] = np.array([0, 200, 0])[:, None, None]   # 6 px nobody listed
    mask = make_raster(rgb, name="truth_rgb.tif")
    palette = ",".join(f"{name}={colour}" for name, colour in COLOURS.items())
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["evaluate", str(pred_path), str(mask), "--palette",
                                       palette, "-o", str(report)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geounet: error:"), result.stderr
    assert ("truth_rgb.tif: colour #00c800 (6 px, first at row 30, col 0) is not in the "
            "palette; add it to the palette") in lines[0]
    assert not report.exists()
    forest = CliRunner().invoke(main, ["evaluate", str(pred_path), str(mask), "--palette",
                                       palette + ",forest=#00c800"])
    assert forest.exit_code == 1 and "#00c800 -> 'forest' is not a class" in forest.stderr
    bad = CliRunner().invoke(main, ["evaluate", str(pred_path), str(mask), "--palette",
                                    "building"])
    assert bad.exit_code == 1 and "--palette: " in bad.stderr
    vector = CliRunner().invoke(main, ["evaluate", str(pred_path), str(truth_path),
                                       "--palette", palette])
    assert vector.exit_code == 1 and "this is a vector file" in vector.stderr


def test_model_evaluation_checks_rgb_truth_before_running_the_model(
        land_cover, make_raster, make_metadata, make_unet, tmp_path, monkeypatch):
    from dataclasses import replace

    from geounet.checkpoint import save_checkpoint
    from geounet.errors import InputError
    from geounet.model import UNetConfig

    _, _, _, truth = land_cover
    arch = UNetConfig(3, 4, 4, 2)
    model = save_checkpoint(tmp_path / "lc.safetensors", make_unet(arch),
                            replace(make_metadata(arch), class_names=LAND_COVER))
    image = make_raster(np.zeros((3, 40, 60), np.uint8), name="image.tif")
    rgb = _rgb(truth, {k: COLOURS[name] for k, name in enumerate(LAND_COVER)})
    rgb[:, 0, 0] = 7                                  # one unlisted colour
    mask = make_raster(rgb, name="truth_rgb.tif")

    def not_now(*args, **kwargs):
        raise AssertionError("the model ran before the labels were checked")

    monkeypatch.setattr("geounet.predict.predict_raster", not_now)
    config = EvaluateConfig(thresholds=0, palette={c: n for n, c in COLOURS.items()})
    with pytest.raises(InputError, match="colour #070707 .* is not in the palette"):
        evaluate_model(model, [(image, mask)], config, device="cpu")


def test_linear_classes_alone_get_tolerant_scores(make_raster, tmp_path):
    """A road one pixel off its label scores ~0 exactly but 1 within the tolerance; a
    building (areal) is scored by its pixels only when roads alone are named linear."""
    truth = np.zeros((1, 40, 40), np.uint8)
    truth[0, 20, 5:35] = 2                      # road
    truth[0, 5:12, 5:12] = 1                    # building
    pred = truth.copy()
    pred[0, 20], pred[0, 21, 5:35] = 0, 2       # the road one pixel lower
    paths = (make_raster(pred, name="pred.tif"), make_raster(truth, name="truth.tif"))
    everything = evaluate_pairs([paths], EvaluateConfig(class_names=("bg", "building", "road")))
    assert set(everything["classes"]["building"]) == {"pixel", "tolerant"}
    roads_only = evaluate_pairs([paths], EvaluateConfig(
        class_names=("bg", "building", "road"), linear_classes=(2,)))
    road, building = roads_only["classes"]["road"], roads_only["classes"]["building"]
    assert road["pixel"]["f1"] == 0 and road["tolerant"]["f1"] == pytest.approx(1.0)
    assert set(building) == {"pixel"} and building["pixel"]["iou"] == 1.0
    result = CliRunner().invoke(main, ["evaluate", str(paths[0]), str(paths[1]),
                                       "--linear-classes", "2"])
    assert result.exit_code == 0, result.output
    assert "class 2 tolerant (2 px)" in result.output
    assert "class 1 tolerant" not in result.output and "class 1 pixel" in result.output


def test_a_multi_class_probability_raster_is_scored_by_its_largest_band(make_raster):
    """predict writes one probability band per class for a softmax model; evaluate read
    band 1 (the background's) against the threshold and scored every class 0, exit 0."""
    truth = np.zeros((10, 10), np.uint8)
    truth[0:5, 0:5], truth[6:10, 6:10] = 1, 2
    prob = np.full((3, 10, 10), 0.05, np.float32)
    for c in range(3):
        prob[c][truth == c] = 0.9
    prob[:, 9, 0] = np.nan   # nodata is left out
    report = evaluate_pairs([(make_raster(prob, "prob.tif"), make_raster(truth[None], "t.tif"))],
                            EvaluateConfig(tolerance=0))
    assert {k: v["pixel"]["iou"] for k, v in report["classes"].items()} == {
        "class 0": 1.0, "class 1": 1.0, "class 2": 1.0}
    assert report["mean_iou"] == 1.0 and "ods_ois" not in report


def test_labels_off_the_prediction_grid_or_fractional_are_refused(make_raster, tmp_path):
    """Truth 5 m away, in another UTM zone or holding 0.5 was scored pixel for pixel (or
    truncated to 0) without a word; a label without georeferencing is still taken on the
    prediction's pixels."""
    pred = np.zeros((1, 10, 10), np.uint8)
    pred[0, :5, :5] = 1
    shifted = rasterio.transform.from_origin(500005, 5000000, 1, 1)
    base = rasterio.transform.from_origin(500000, 5000000, 1, 1)
    path = make_raster(pred, "pred.tif", transform=base)
    cases = {"shifted.tif": ({"transform": shifted}, pred, "not on the grid"),
             "utm34.tif": ({"transform": base, "crs": "EPSG:32634"}, pred, "CRS 'EPSG:32634'"),
             "half.tif": ({"transform": base}, pred * np.float32(0.5),
                          "holds the value 0.5, not a class id")}
    for name, (options, array, said) in cases.items():
        with pytest.raises(InputError, match=said):
            evaluate_pairs([(path, make_raster(array, name, **options))])
    plain = make_raster(pred, "plain.tif", crs=None, transform=rasterio.Affine.identity())
    report = evaluate_pairs([(path, plain)], EvaluateConfig(tolerance=0))
    assert report["classes"]["class 1"]["pixel"]["iou"] == 1.0


def test_a_prediction_placed_by_ground_control_points_meets_vector_truth(tmp_path):
    """Vector truth was burnt onto a GCP-only prediction's pixel coordinates: nothing
    landed and the scores were 0."""
    from rasterio.control import GroundControlPoint as Gcp

    pred = np.zeros((1, 10, 10), np.uint8)
    pred[0, :5, :5] = 1
    path = tmp_path / "pred.tif"
    with rasterio.open(path, "w", driver="GTiff", width=10, height=10, count=1,
                       dtype="uint8") as dst:
        dst.write(pred)
        dst.gcps = ([Gcp(0, 0, 500000, 100000), Gcp(0, 10, 500010, 100000),
                     Gcp(10, 0, 500000, 99990), Gcp(10, 10, 500010, 99990)],
                    rasterio.crs.CRS.from_epsg(32633))
    truth = tmp_path / "truth.gpkg"
    gpd.GeoDataFrame({"c": [1]}, geometry=[box(500000, 99995, 500005, 100000)],
                     crs="EPSG:32633").to_file(truth)
    report = evaluate_pairs([(path, truth)], EvaluateConfig(tolerance=0))
    assert report["classes"]["class 1"]["pixel"]["iou"] == 1.0
