"""Scoring predictions against labels, the way the segmentation literature reports them.

A prediction is a class-mask raster (uint8 class ids, nodata 255, as ``geounet predict -o``
writes) or a probability raster (float32 foreground probability, nodata NaN, as
``--probabilities`` writes). Labels are raster masks on the prediction's grid or vector
files rasterized onto it (:mod:`geounet.labels`, as training reads them); a vector file's
class attribute (``LabelConfig.class_field``) holds class ids or names, looked up in the
model's class names (those the prediction raster carries, or the checkpoint's). RGB label
masks take a palette (:func:`geounet.palette.parse_palette`, as in training): their colours
become those class ids, a colour of a class named ``unlabelled`` is not scored, an unlisted
colour is refused. Nodata in either is ignored.

Reported per class, counts pooled over all images: IoU, precision, recall, F1 (exact
pixels), and for the foreground classes (the linear ones, when they are named) the tolerant
precision/recall/F1 of the crack literature (a pixel counts as correct within ``tolerance``
pixels); with several foreground
classes also their mean IoU and the confusion matrix. For probability rasters,
ODS and OIS tolerant F1 over ``thresholds`` evenly spaced thresholds (see
:func:`geounet.metrics.ods_ois`). :func:`evaluate_model` runs a checkpoint through
``predict_raster`` first, so it scores exactly what ``geounet predict`` writes.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from tqdm import tqdm

from geounet.errors import ConfigError, InputError
from geounet.geotiff import read_class_names
from geounet.io import RasterInfo, require_in_memory
from geounet.labels import (
    IGNORE,
    LabelConfig,
    image_info,
    is_vector,
    load_target,
    read_raster_target,
)
from geounet.metrics import (
    Counts,
    count,
    ods_ois,
    pixel_scores,
    threshold_sweep,
    tolerant_scores,
)


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation settings.

    Attributes:
        tolerance: localisation tolerance in pixels for the tolerant scores (2 in the crack
            literature).
        threshold: probability above which a probability raster's pixel is foreground
            (None: the model's own threshold in :func:`evaluate_model`, else 0.5).
        thresholds: number of thresholds in (0, 1) swept for ODS/OIS (0: no sweep).
        labels: how vector labels are rasterized (with ``class_field``, its values are looked
            up in ``class_names`` unless ``labels.class_names`` gives others).
        class_names: names by class id (id 0 first); unset: those the first prediction
            raster carries (:func:`geounet.geotiff.read_class_names`); ``class N`` where no
            name is known.
        palette: raster labels are RGB masks of these colours (``{'#rrggbb': class name or
            id}``, :func:`geounet.palette.parse_palette`); names are looked up in
            ``class_names`` (:func:`label_palette`). None: labels hold class ids.
        linear_classes: class ids of linear features (roads, cracks) that get the tolerant
            scores; None: every foreground class. Areal classes (buildings, water) are
            scored by their pixels only.
    """

    tolerance: float = 2.0
    threshold: float | None = None
    thresholds: int = 99
    labels: LabelConfig = LabelConfig()
    class_names: tuple[str, ...] = ()
    palette: Mapping[str, str | int] | None = None
    linear_classes: tuple[int, ...] | None = None

    def tolerant(self, class_id: int) -> bool:
        """Whether ``class_id`` gets the tolerant scores (a linear foreground class)."""
        return class_id > 0 and (self.linear_classes is None
                                 or class_id in self.linear_classes)


def read_binary_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Foreground (value > 0 and not nodata) and valid pixels of band 1 of a mask raster."""
    image_info(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            values = src.read(1)
            valid = src.read_masks(1) > 0
    return (values > 0) & valid, valid


def evaluate_masks(prediction: str | Path, truth: str | Path, tolerance: float = 2.0
                   ) -> dict[str, dict[str, float]]:
    """Pixel and tolerant scores of the foreground; nodata in either raster is ignored."""
    pred, pred_valid = read_binary_mask(prediction)
    true, true_valid = read_binary_mask(truth)
    if pred.shape != true.shape:
        raise InputError(f"{prediction} is {pred.shape[1]}x{pred.shape[0]} px but {truth} is "
                         f"{true.shape[1]}x{true.shape[0]}; both must be on the same grid")
    valid = pred_valid & true_valid
    return {
        "pixel": pixel_scores(pred, true, valid).to_dict(),
        "tolerant": tolerant_scores(pred, true, tolerance, valid).to_dict(),
    }


def evaluate_pairs(pairs: Sequence[tuple[str | Path, str | Path]],
                   config: EvaluateConfig = EvaluateConfig(), progress: bool = False) -> dict:
    """Score (prediction raster, label) pairs; returns the JSON-ready report."""
    if not pairs:
        raise InputError("nothing to evaluate: no (prediction, label) pair was found")
    config = with_class_names(config, pairs)
    thresholds = np.linspace(0, 1, config.thresholds + 2)[1:-1]
    threshold = 0.5 if config.threshold is None else config.threshold
    per_class: dict[int, Counts] = {}
    confusion = np.zeros((IGNORE, IGNORE), np.int64)   # [true id, predicted id] pixels
    sweeps, images, kinds = [], [], set()
    for prediction, label in tqdm(pairs, disable=not progress, desc="evaluate", unit="image"):
        info = image_info(prediction)
        pred, prob = _read_prediction(info, threshold)
        kinds.add("probability" if np.issubdtype(np.dtype(info.dtype), np.floating)
                  else "mask")
        target = load_target(label, info, config.labels)
        valid = (target != IGNORE) & (pred != IGNORE)
        # The two paths, then the scores of each foreground class under its name.
        image: dict[str, str | dict[str, dict[str, float]]] = {
            "prediction": str(prediction), "label": str(label)}
        ids = np.union1d(np.unique(pred[valid]), np.unique(target[valid])).tolist()
        confusion += np.bincount(target[valid].astype(np.int64) * IGNORE + pred[valid],
                                 minlength=IGNORE * IGNORE).reshape(IGNORE, IGNORE)
        for class_id in sorted(set(ids) | ({0, 1} if prob is not None else set())):
            tolerant = config.tolerant(class_id)
            counts = count(pred == class_id, target == class_id,
                           config.tolerance if tolerant else 0, valid)
            per_class.setdefault(class_id, Counts())
            per_class[class_id] += counts
            if class_id:
                image[_name(class_id, config)] = _scores(counts, tolerant)
        if prob is not None and config.thresholds:
            sweeps.append(threshold_sweep(prob, target == 1, thresholds, config.tolerance,
                                          valid))
        images.append(image)
    report: dict = {
        "images": len(images), "prediction": "/".join(sorted(kinds)),
        "tolerance_px": config.tolerance, "threshold": threshold,
        "classes": {_name(c, config): _scores(per_class[c], config.tolerant(c))
                    for c in sorted(per_class)},
    }
    if len([c for c in per_class if c]) > 1:   # several foreground classes
        report.update(multi_class_summary(per_class, confusion, config))
    if sweeps and len(kinds) == 1:
        report["ods_ois"] = ods_ois(sweeps, thresholds)
    report["per_image"] = images
    return report


def evaluate_model(model: str | Path, pairs: Sequence[tuple[str | Path, str | Path]],
                   config: EvaluateConfig = EvaluateConfig(), device: str = "auto",
                   threads: int | None = None, progress: bool = False, tta: bool = False,
                   engine: str = "auto") -> dict:
    """Run ``model`` on each (image, label) pair with ``predict_raster`` (with test-time
    augmentation if ``tta``, by the inference ``engine``), then score it.

    A binary model is scored from its probabilities (so ODS/OIS are reported too), a
    multi-class one from its class mask. Predictions go to a temporary folder.
    """
    from geounet.engines import load_model, model_metadata
    from geounet.predict import PredictConfig, predict_raster

    loaded = load_model(model, "cpu")  # a checkpoint or an exported .onnx file
    meta = model_metadata(loaded)
    config = replace(config, class_names=config.class_names or tuple(meta.class_names))
    check_labels(pairs, with_class_names(config, pairs).labels)  # before the model runs
    binary = meta.arch.classes == 1
    settings = PredictConfig(device=device, engine=engine, threads=threads, progress=False,
                             tta=tta)
    with tempfile.TemporaryDirectory(prefix="geounet-evaluate-") as tmp:
        predicted = []
        for i, (image, label) in enumerate(tqdm(pairs, disable=not progress, desc="predict",
                                                unit="image")):
            out = Path(tmp) / f"{i:06d}.tif"
            with warnings.catch_warnings():  # plain PNG/JPEG images have no georeferencing
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                predict_raster(image, loaded, None if binary else out, out if binary else None,
                               settings)
            predicted.append((out, label))
        names = config.class_names or tuple(meta.class_names)
        threshold = meta.threshold if config.threshold is None else config.threshold
        config = replace(config, threshold=threshold, class_names=names)
        report = evaluate_pairs(predicted, config, progress)
    for item, (image, _) in zip(report["per_image"], pairs):
        item["prediction"] = f"{model} on {image}"
    report["model"], report["tta"] = str(model), tta
    return report


def with_class_names(config: EvaluateConfig,
                     pairs: Sequence[tuple[str | Path, str | Path]]) -> EvaluateConfig:
    """``config`` with its class names (unset: those the first prediction raster carries)
    also used to look up the class attribute of vector labels (unless the labels name their
    own) and the classes of its palette; refuses a class attribute when no label is a vector
    file."""
    names = config.class_names
    if not names and pairs and not is_vector(pairs[0][0]) and Path(pairs[0][0]).is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(pairs[0][0]) as src:
                names = tuple(read_class_names(src))
    labels = config.labels
    if labels.class_field is not None:
        if not any(is_vector(label) for _, label in pairs):
            raise ConfigError(f"--class-field {labels.class_field}: the labels are rasters; "
                              "a class attribute applies to vector labels (drop it)")
        if not labels.class_names:
            labels = replace(labels, class_names=names)
    if config.palette is not None:
        labels = replace(labels, palette=label_palette(config.palette, names))
    return replace(config, class_names=names, labels=labels)


def label_palette(palette: Mapping[str, str | int],
                  class_names: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """``('#rrggbb', class id)`` pairs of a palette, its class names looked up in
    ``class_names`` as training does (:func:`geounet.training.config.palette_ids`).

    Colours of a class named ``unlabelled`` (or of id 255) become :data:`IGNORE`: not scored,
    as in training. Without class names only class ids can be given.
    """
    from geounet.training.config import UNLABELLED, palette_ids

    ids = {colour: IGNORE if isinstance(cls, str) and cls.lower() == UNLABELLED else cls
           for colour, cls in palette.items()}
    if not class_names:   # classes by id only
        bad = [f"{colour} -> {cls!r}" for colour, cls in ids.items()
               if isinstance(cls, str) or not 0 <= cls <= IGNORE]
        if bad:
            raise ConfigError(f"palette: {', '.join(bad)}: the predictions carry no class "
                              "names to look names up in; give class ids 0..254")
        return tuple((colour, int(cls)) for colour, cls in ids.items())
    try:
        return palette_ids(ids, tuple(class_names), IGNORE)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_labels(pairs: Sequence[tuple[str | Path, str | Path]], labels: LabelConfig) -> None:
    """Read each vector label (and, with a palette, each RGB label) onto its image's grid as
    evaluation will, so a missing class attribute, an unknown class name or a colour missing
    from the palette is refused before any model runs."""
    for image, label in pairs:
        if is_vector(label) or labels.palette:
            load_target(label, image_info(image), labels)


def _read_prediction(info: RasterInfo, threshold: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Class ids (IGNORE where nodata) and, for a binary model's probability raster (one
    float band), its probabilities. A float raster of several bands is a multi-class
    model's (band = class id + 1, as predict writes it): each pixel is the class of its
    largest probability, as ``evaluate -m`` decides.

    Integer rasters are read like label masks (a 0/255 mask is binary).
    """
    require_in_memory(info, 24 + 8 * (info.count - 1), "evaluate")
    if not np.issubdtype(np.dtype(info.dtype), np.floating):
        return read_raster_target(info.path, info), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(info.path) as src:
            values = src.read()
            valid = (src.read_masks() > 0).all(axis=0) & np.isfinite(values).all(axis=0)
    if info.count > 1:
        pred = np.argmax(np.where(valid, values, 0), axis=0).astype(np.uint8)
        pred[~valid] = IGNORE
        return pred, None
    prob = np.where(valid, values[0], 0).astype(np.float32)
    pred = (prob > threshold).astype(np.uint8)
    pred[~valid] = IGNORE
    return pred, prob


def multi_class_summary(per_class: dict[int, Counts], confusion: np.ndarray,
                        config: EvaluateConfig) -> dict:
    """Mean IoU over the foreground classes (those labelled or predicted) and the confusion
    matrix of the classes seen: ``matrix[i][j]`` pixels of true class ``classes[i]``
    predicted as ``classes[j]``."""
    ious = [per_class[c].pixel().iou for c in sorted(per_class) if c]
    seen = sorted(per_class)
    return {"mean_iou": float(np.nanmean(ious)) if not np.all(np.isnan(ious)) else float("nan"),
            "confusion": {"classes": [_name(c, config) for c in seen],
                          "matrix": confusion[np.ix_(seen, seen)].tolist()}}


def _scores(counts: Counts, tolerant: bool) -> dict[str, dict[str, float]]:
    out = {"pixel": counts.pixel().to_dict()}
    if tolerant:
        out["tolerant"] = counts.tolerant().to_dict()
    return out


def _name(class_id: int, config: EvaluateConfig) -> str:
    names = config.class_names
    return names[class_id] if class_id < len(names) else f"class {class_id}"
