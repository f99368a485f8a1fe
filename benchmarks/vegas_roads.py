"""SpaceNet Vegas roads: train on the western half of the tile, score the eastern half.

Cuts the 1300x1300 EPSG:4326 panchromatic tile (uint16, 11-bit) into its western and
eastern halves (same CRS and pixel grid, via rasterio windows), trains with
``workflows/train_vegas.yaml`` (vector labels: the road centrelines buffered to 4 m), then
runs ``geounet evaluate`` on the eastern half against the tile's raster mask and against the
buffered centrelines, plainly and with ``--tta`` (8 orientations per tile). Also reports how
far the vector labels and the raster mask agree, and the centreline lengths.
The labels are incomplete (a visible road in the centre is not labelled): IoU is capped below 1.

``--vectorize-messy N``: instead, vectorizing a messy real mask. The bundled road model (trained
on the aerial sample scene) run on the tile's one band given three times (``--bands 1,1,1``)
meets imagery it never saw and calls most of the tile road: one feature with tens of
thousands of holes. Times ``geounet vectorize --probabilities --centerlines`` against
``gdal_polygonize.py`` on that mask, alternately N times (and ``predict`` with and without
``--vector --probabilities``), and checks that the polygons equal those of a plain
``vectorize`` and of GDAL.

Usage: ``python -m benchmarks.vegas_roads [--skip-train] [--minutes 40] [--vectorize-messy 3]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import rasterio
import shapely
from rasterio.windows import Window

from benchmarks.common import ROOT, SAMPLE, WORK, tree_peak_rss, union_difference

DATA = ROOT.parent / "shared" / "data" / "spacenet_vegas_road"
CONFIG = ROOT / "workflows" / "train_vegas.yaml"
FOLDER = WORK / "vegas"


def cut_halves() -> dict[str, Path]:
    """West/east halves of the image and of the raster mask, georeferenced."""
    FOLDER.mkdir(parents=True, exist_ok=True)
    out = {}
    sources = (("image", "road_mask_input.tif"), ("mask", "sample_road_raster_mask.tif"))
    for kind, source in sources:
        with rasterio.open(DATA / source) as src:
            half = src.width // 2
            for side, window in (("west", Window(0, 0, half, src.height)),
                                 ("east", Window(half, 0, src.width - half, src.height))):
                path = FOLDER / f"{side}_{kind}.tif"
                profile = {**src.profile, "width": window.width, "height": window.height,
                           "transform": src.window_transform(window), "tiled": True,
                           "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(src.read(window=window))
                out[f"{side}_{kind}"] = path
    return out


def label_agreement() -> dict[str, float]:
    """Vector labels (centrelines buffered to 4 m) against the raster mask, whole tile."""
    from geounet.labels import LabelConfig, image_info, load_target

    info = image_info(DATA / "road_mask_input.tif")
    raster = load_target(DATA / "sample_road_raster_mask.tif", info) == 1
    vector = load_target(DATA / "sample_roads_for_masking.geojson", info,
                         LabelConfig(line_width=4, line_width_units="metres")) == 1
    return {"pixels": int(raster.size), "differing_pixels": int((raster != vector).sum()),
            "iou": float((raster & vector).sum() / (raster | vector).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--output", default=str(WORK / "vegas.safetensors"))
    parser.add_argument("--vectorize-messy", type=int, metavar="PAIRS")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"SpaceNet Vegas tile not found at {DATA}; see ../shared/data/README.md")
    if args.vectorize_messy:
        vectorize_messy(args.vectorize_messy)
        return
    halves = cut_halves()
    agreement = label_agreement()
    print(f"vector labels (4 m) vs raster mask: {agreement['differing_pixels']} of "
          f"{agreement['pixels']} pixels differ, IoU {agreement['iou']:.6f}")
    geounet = [sys.executable, "-m", "geounet"]
    if not args.skip_train:
        command = [*geounet, "train", "--config", str(CONFIG.relative_to(ROOT)), "-o",
                   args.output, "--max-minutes", f"{args.minutes:g}", "--overwrite"]
        print("$", " ".join(command[2:]), flush=True)
        start = time.perf_counter()
        with (WORK / "vegas_train.log").open("w") as stderr:
            done = subprocess.run([*command, "-v"], cwd=ROOT, check=True, text=True,
                                  stdout=subprocess.PIPE, stderr=stderr)
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        summary["wall_seconds"] = time.perf_counter() - start
        (WORK / "vegas_train.json").write_text(json.dumps(summary, indent=1))
    summary = json.loads((WORK / "vegas_train.json").read_text())
    print(f"trained {summary['train_seconds'] / 60:.1f} min, {summary['steps']} steps "
          f"({summary['steps_per_second']:.2f}/s), best epoch {summary['best']['epoch']} "
          f"(validation IoU {summary['best']['iou']:.3f}), stopped: {summary['stopped']}")
    labels = {"raster mask": (str(halves["east_mask"]), []),
              "centrelines buffered 4 m": (str(DATA / "sample_roads_for_masking.geojson"),
                                           ["--line-width", "4", "--line-width-units",
                                            "metres"])}
    for (name, (label, extra)), tta in itertools.product(labels.items(), (False, True)):
        command = [*geounet, "evaluate", "-m", args.output, "--images",
                   str(halves["east_image"]), "--labels", label, *extra, "--json", "-q",
                   "--thresholds", "19", "--threads", "1", *(["--tta"] if tta else [])]
        print("$", " ".join(command[2:]), flush=True)
        report = json.loads(subprocess.run(command, cwd=ROOT, check=True, capture_output=True,
                                           text=True).stdout)
        kind = "vector" if extra else "raster"
        (WORK / f"vegas_east_{kind}{'_tta' if tta else ''}.json").write_text(
            json.dumps(report, indent=1))
        p, t = report["pixel"], report["tolerant"]
        print(f"eastern half vs {name}{' (tta)' if tta else ''}: road IoU {p['iou']:.3f}, "
              f"P {p['precision']:.3f}, R {p['recall']:.3f}, F1 {p['f1']:.3f}; tolerant (2 px) "
              f"F1 {t['f1']:.3f}; ODS F1 {report['ods_ois']['ods_f1']:.3f} "
              f"(t={report['ods_ois']['ods_threshold']:.2f})")
    labelled = labelled_lengths(halves)   # the same for both predictions
    for tta in (False, True):
        lengths = {"predicted_m": predicted_length(Path(args.output), halves, tta), **labelled}
        print(f"eastern half centreline length{' (tta)' if tta else ''}: predicted mask "
              f"{lengths['predicted_m']:.0f} m, label mask (same skeleton code) "
              f"{lengths['label_mask_m']:.0f} m, labelled centrelines (GeoJSON clipped to the "
              f"half) {lengths['labelled_m']:.0f} m")
        (WORK / f"vegas_centerlines{'_tta' if tta else ''}.json").write_text(
            json.dumps(lengths, indent=1))


def skeleton_length(mask: Path) -> float:
    """Total centreline length (m) of a road mask, by ``geounet vectorize --centerlines``."""
    import geopandas as gpd

    from geounet.vectorize import VectorizeConfig, vectorize_raster

    polygons = FOLDER / f"{mask.stem}_roads.gpkg"
    vectorize_raster(mask, polygons, VectorizeConfig(centerlines=True), overwrite=True)
    return float(gpd.read_file(polygons)["length_m"].sum())


def predicted_length(checkpoint: Path, halves: dict[str, Path], tta: bool) -> float:
    """Skeleton length (m) of the road mask ``checkpoint`` predicts on the eastern half."""
    from geounet.predict import PredictConfig, predict_raster

    predicted = FOLDER / "east_predicted.tif"
    predict_raster(halves["east_image"], checkpoint, predicted, None,
                   PredictConfig(progress=False, overwrite=True, threads=1, tta=tta))
    return skeleton_length(predicted)


def labelled_lengths(halves: dict[str, Path]) -> dict[str, float]:
    """Eastern half: skeleton length (m) of the label mask, and length of the labelled
    centrelines clipped to it (measured in their UTM zone)."""
    import geopandas as gpd
    from shapely.geometry import box

    with rasterio.open(halves["east_image"]) as src:
        east = box(*src.bounds)
    lines = gpd.read_file(DATA / "sample_roads_for_masking.geojson").clip(east)
    return {"label_mask_m": skeleton_length(halves["east_mask"]),
            "labelled_m": float(lines.to_crs(lines.estimate_utm_crs()).length.sum())}


def vectorize_messy(pairs: int) -> None:
    """Vectorizing the bundled road model's mask of the tile (see the module docstring)."""
    import shutil

    import geopandas as gpd
    import numpy as np

    polygonize = shutil.which("gdal_polygonize.py") or shutil.which("gdal_polygonize")
    if polygonize is None:
        sys.exit("gdal_polygonize.py not found: install GDAL's tools (gdal-bin)")
    FOLDER.mkdir(parents=True, exist_ok=True)
    geounet = str(Path(sys.executable).with_name("geounet"))
    mask, prob = FOLDER / "messy_mask.tif", FOLDER / "messy_probabilities.tif"
    predict = [geounet, "predict", str(DATA / "road_mask_input.tif"), "-m",
               str(SAMPLE / "models" / "roads.safetensors"), "--bands", "1,1,1", "-o",
               str(mask), "--overwrite", "-q"]
    with_vectors = [*predict, "--probabilities", str(prob), "--vector",
                    str(FOLDER / "messy_predicted.gpkg")]
    ours = FOLDER / "messy.gpkg"
    vectorize = [geounet, "vectorize", str(mask), "-o", str(ours), "--overwrite", "-q",
                 "--probabilities", str(prob), "--centerlines", str(FOLDER / "messy_lines.gpkg")]
    gdal = [polygonize, "-q", "-mask", str(mask), str(mask), "-f", "GPKG",
            str(FOLDER / "messy_gdal.gpkg")]
    print(f"{'pair':<6}{'vectorize s':>13}{'gdal s':>9}{'ratio':>8}"
          f"{'predict s':>11}{'+vector s':>11}{'ratio':>8}")
    ratios, predict_ratios = [], []
    for pair in range(1, pairs + 1):
        (FOLDER / "messy_gdal.gpkg").unlink(missing_ok=True)
        p, pv = tree_peak_rss(predict).seconds, tree_peak_rss(with_vectors).seconds
        a, b = tree_peak_rss(vectorize).seconds, tree_peak_rss(gdal).seconds
        ratios.append(a / b)
        predict_ratios.append(pv / p)
        print(f"{pair:<6}{a:>13.2f}{b:>9.2f}{a / b:>8.2f}{p:>11.2f}{pv:>11.2f}{pv / p:>8.2f}",
              flush=True)
    print(f"median ratio vectorize --probabilities --centerlines / gdal_polygonize: "
          f"{float(np.median(ratios)):.2f}; predict --vector --probabilities / predict: "
          f"{float(np.median(predict_ratios)):.2f}")
    plain = FOLDER / "messy_plain.gpkg"
    subprocess.run([geounet, "vectorize", str(mask), "-o", str(plain), "--overwrite", "-q"],
                   check=True)
    a, p, g = (gpd.read_file(f) for f in (ours, plain, FOLDER / "messy_gdal.gpkg"))
    same = len(a) == len(p) and bool(a.geometry.geom_equals_exact(p.geometry, 0).all())
    rel, sym = union_difference(a.geometry.values, g.geometry.values)
    largest = a.geometry.values[a.area_m2.to_numpy().argmax()]
    print(f"{len(a)} features; the largest has "
          f"{sum(len(part.interiors) for part in largest.geoms)} holes and "
          f"{shapely.get_num_coordinates(largest)} vertices; same polygons as a plain "
          f"vectorize: {same}; vs gdal_polygonize: {len(g)} features, area relative "
          f"difference {rel:.1e}, union symmetric difference {sym:.6f} m2")


if __name__ == "__main__":
    main()
