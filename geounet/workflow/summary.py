"""What an item's outputs hold, read back from the written files: features, area, lengths and
widths per class (:class:`ItemSummary`, a row of the run report and of the manifest).

Read back rather than carried from the vectorizer so that a summary always describes the file
on disk, and so that an item skipped by a later run keeps the summary its manifest entry holds.
Areas are in square metres and lengths in metres (map units converted with the raster's CRS;
``None`` where the CRS has no known unit).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import numpy as np


class ClassSummary(TypedDict):
    """One class of an item (``None``: not measured, e.g. no centerlines asked for)."""

    features: int | None          # polygons; None when summarized from mask pixels
    area_m2: float | None
    length_m: float | None        # centerline length of its features
    mean_width_m: float | None    # length-weighted mean of the features' mean widths
    max_width_m: float | None


class ItemSummary(TypedDict):
    """An item's totals and its classes by name."""

    features: int | None
    area_m2: float | None
    centerline_length_m: float | None
    classes: dict[str, ClassSummary]


def vector_summary(vector: Path, centerlines: Path | None = None) -> ItemSummary:
    """Feature count, area, lengths and widths per class, read back from the written file."""
    import pyogrio

    from geounet.export import SHAPEFILE_NAMES

    # a Shapefile holds some columns under shorter names
    long_names = {short: name for name, short in SHAPEFILE_NAMES.items()}
    frame = pyogrio.read_dataframe(vector, read_geometry=False)
    frame.columns = [long_names.get(c, c) for c in frame.columns]
    lines = (pyogrio.read_dataframe(centerlines, read_geometry=False)
             if centerlines is not None and centerlines.exists() else None)

    def total(values) -> float | None:
        return None if values is None else round(float(np.nansum(values)), 3)

    def width_stats(group) -> tuple[float | None, float | None]:
        """(length-weighted mean of mean widths, max width) in metres, when measured."""
        if "mean_width_m" not in group:
            return None, None
        weights = group["length_m"].to_numpy() if "length_m" in group else None
        widths = group["mean_width_m"].to_numpy()
        ok = np.isfinite(widths) & (np.isfinite(weights) if weights is not None else True)
        if not ok.any():
            return None, None
        w = weights[ok] if weights is not None and weights[ok].sum() > 0 else None
        mean = float(np.average(widths[ok], weights=w))
        return round(mean, 3), round(float(np.nanmax(group["max_width_m"])), 3)

    classes: dict[str, ClassSummary] = {}
    for name, group in frame.groupby("class_name", sort=True):
        mean_width, max_width = width_stats(group)
        classes[str(name)] = {
            "features": len(group), "area_m2": total(group["area_m2"]),
            "length_m": total(group.get("length_m")), "mean_width_m": mean_width,
            "max_width_m": max_width,
        }
    if lines is not None:
        centerline_length = total(lines["length_m"])
    else:
        centerline_length = total(frame["length_m"]) if "length_m" in frame else None
    return {"features": len(frame), "area_m2": total(frame["area_m2"]),
            "centerline_length_m": centerline_length, "classes": classes}


def pixel_summary(mask: Path | None) -> ItemSummary | None:
    """Area per class from mask pixel counts (when no vector file is written)."""
    import rasterio

    if mask is None:
        return None
    from geounet.geotiff import metres_per_unit, read_class_names

    with rasterio.open(mask) as src:
        names = read_class_names(src)
        counts = np.zeros(256, np.int64)
        for _, window in src.block_windows(1):
            counts += np.bincount(src.read(1, window=window).ravel(), minlength=256)
        t = src.transform
        unit = metres_per_unit(src.crs)
    pixel_m2 = abs(t.a * t.e - t.b * t.d) * unit**2 if unit else None
    classes: dict[str, ClassSummary] = {(names[i] if i < len(names) else str(i)): {
        "features": None, "area_m2": round(float(counts[i] * pixel_m2), 3) if pixel_m2 else None,
        "length_m": None, "mean_width_m": None, "max_width_m": None,
    } for i in range(1, 255) if counts[i]}
    area = sum(c["area_m2"] or 0.0 for c in classes.values()) if pixel_m2 else None
    return {"features": None, "area_m2": area, "centerline_length_m": None, "classes": classes}

