"""Training and evaluation targets from raster masks or vector files, on an image's grid.

A target is a ``uint8`` array ``(rows, cols)`` on the image's pixel grid: the class id of each
pixel (0 background, 1 foreground for binary labels) and :data:`IGNORE` (255) where the label
says nothing (the mask's nodata). Raster masks must already be on the image's grid (same
width and height). Vector labels (GeoPackage, GeoJSON, Shapefile, anything GDAL reads) are
reprojected to the image's CRS and burned with :func:`rasterio.features.rasterize`, pixel
centres inside a polygon being foreground; polygon holes stay background. Lines (roads,
crack centrelines) have no area, so they are buffered first by ``line_width``, given in
pixels, in map units of the image's CRS, or in metres on the ground (lines are then
buffered in their local UTM zone, so a road keeps its width in an EPSG:4326 image).
Images without a CRS (plain PNG/JPEG) take vector coordinates as they are. With
``unlabelled_outside``, pixels outside every feature are :data:`IGNORE` instead of background
(labels that cover only part of the image, each feature with its class, background included).

RGB label masks (one colour per class, as many published datasets give them) become class ids
through a palette: ``('#rrggbb', class id)`` pairs; a colour missing from it is refused.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import shapely
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import rasterize

from geounet.errors import InputError
from geounet.inputs import require_regular_file
from geounet.io import (
    RasterInfo,
    fraction_in,
    georeferenced,
    open_raster,
    require_in_memory,
)
from geounet.outputs import check_vector_name

IGNORE = 255
# Largest plausible coordinate in any CRS: 25x the Earth's circumference in metres or feet.
MAX_COORDINATE = 1e9
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite")


@dataclass(frozen=True)
class LabelConfig:
    """How labels become targets.

    Attributes:
        line_width: full width given to line geometries before burning (0: lines are
            refused, as they would burn nothing).
        line_width_units: ``"pixels"`` (of the image grid), ``"map"`` (units of the
            image's CRS) or ``"metres"`` (on the ground, buffered in the local UTM zone: the
            choice for images in degrees).
        class_field: attribute holding each feature's class id (1..254) or, with
            ``class_names``, its class name; None: all features are class 1.
        class_names: names by class id (background first); when given, class ids must be
            below their count and names in ``class_field`` are looked up in them.
        palette: ``('#rrggbb', class id)`` pairs: raster labels are RGB masks whose colours
            are converted to class ids (every colour must be listed); empty: class ids.
        unlabelled_outside: vector labels: pixels outside every feature are IGNORE, not
            background, and features may be of class 0 (background).
    """

    line_width: float = 3.0
    line_width_units: Literal["pixels", "map", "metres"] = "pixels"
    class_field: str | None = None
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[str, int], ...] = ()
    unlabelled_outside: bool = False


def is_vector(path: str | Path) -> bool:
    """True for a file name that GDAL opens as vectors (by its suffix)."""
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


def load_target(label: str | Path, image: RasterInfo, config: LabelConfig = LabelConfig(),
                ) -> np.ndarray:
    """The ``uint8`` target of ``label`` (raster mask or vector file) on ``image``'s grid."""
    if is_vector(label):
        if config.palette:
            raise InputError(f"{label}: a palette converts the colours of RGB raster labels; "
                             "this is a vector file: give its classes with a class field, or "
                             "drop the palette")
        return rasterize_vector(label, image, config)
    if config.unlabelled_outside:
        raise InputError(f"{label}: unlabelled_outside applies to vector labels; this is a "
                         "raster: mark its unlabelled pixels as nodata or with ignore_value")
    if config.palette:
        return read_palette_target(label, image, config.palette)
    return read_raster_target(label, image)


def _label_info(mask: str | Path, image: RasterInfo) -> RasterInfo:
    """The raster label's info, refused unless it is on ``image``'s grid: the same size
    and, where both are georeferenced, the same CRS and transform (to a thousandth of a
    pixel). A label without georeferencing (a plain picture) is taken on the image's
    pixels."""
    info = image_info(mask)
    if (info.width, info.height) != (image.width, image.height):
        raise InputError(f"{mask}: {info.width}x{info.height} px does not match image "
                         f"{image.path} {image.width}x{image.height} px; labels must be on "
                         "the image's grid")
    differs = []
    if info.crs is not None and image.crs is not None and info.crs != image.crs:
        differs.append(f"CRS {info.crs.to_string()!r} vs {image.crs.to_string()!r}")
    pixel = min(abs(image.transform.a), abs(image.transform.e)) or 1.0
    if (not info.transform.is_identity and not image.transform.is_identity
            and not info.transform.almost_equals(image.transform, precision=pixel * 1e-3)):
        differs.append(f"origin {info.transform.c:.6g}, {info.transform.f:.6g} and pixel "
                       f"{info.transform.a:.6g} vs {image.transform.c:.6g}, "
                       f"{image.transform.f:.6g} and {image.transform.a:.6g}")
    if differs:
        raise InputError(f"{mask}: not on the grid of {image.path} ({'; '.join(differs)}); "
                         "labels must be on the image's grid: resample them onto it first "
                         "(e.g. gdalwarp with the image's -t_srs, -te and -tr)")
    return info


def read_raster_target(mask: str | Path, image: RasterInfo) -> np.ndarray:
    """Band 1 of a mask raster as class ids, its nodata (and masks) as :data:`IGNORE`.

    Values are class ids 0..254, except in a mask of only 0 and 255 (the usual 8-bit
    binary mask, where 255 is not nodata): there 255 is class 1.
    """
    info = _label_info(mask, image)
    require_in_memory(info, 12, "reading the labels")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(mask) as src:
            raw = src.read(1)
            valid = src.read_masks(1) > 0
    if raw.dtype.kind == "f":
        valid &= np.isfinite(raw)
    values = np.unique(raw[valid])
    fraction = fraction_in(values) if raw.dtype.kind == "f" else None
    if fraction is not None:
        raise InputError(f"{mask}: holds the value {fraction:.6g}, not a class id; give "
                         "labels of whole class ids (0 background)")
    if set(values.tolist()) <= {0, 255}:   # a 0/255 mask: 255 is the foreground
        target = (raw > 0).astype(np.uint8)
    elif values.min() >= 0 and values.max() < IGNORE:
        target = np.where(valid, raw, 0).astype(np.uint8)
    else:
        raise InputError(f"{mask}: values {values[:8].tolist()} are neither a 0/255 mask nor "
                         "class ids 0..254")
    target[~valid] = IGNORE
    return target


def read_palette_target(mask: str | Path, image: RasterInfo,
                        palette: Sequence[tuple[str, int]]) -> np.ndarray:
    """Bands 1-3 of an RGB mask (8 bits) as the class ids ``palette`` gives their colours;
    pixels masked in any of them (nodata, alpha) are :data:`IGNORE`.

    A colour not in ``palette`` is refused in one line naming it (the most frequent one if
    several), its pixel count and its first (row, col).
    """
    info = _label_info(mask, image)
    if info.count < 3 or info.dtype != "uint8":
        raise InputError(f"{mask}: palette labels are RGB masks (3 bands of uint8), this one "
                         f"has {info.count} band(s) of {info.dtype}; give class ids without "
                         "a palette, or the RGB mask")
    require_in_memory(info, 16, "reading the labels")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(mask) as src:
            rgb = src.read((1, 2, 3)).astype(np.int32)
            valid = (src.read_masks((1, 2, 3)) > 0).all(axis=0)
    code = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]    # 0xrrggbb per pixel
    del rgb
    colours = np.array([int(c[1:], 16) for c, _ in palette], np.int64)
    order = np.argsort(colours)
    keys, ids = colours[order], np.array([i for _, i in palette], np.uint8)[order]
    index = np.minimum(np.searchsorted(keys, code), len(keys) - 1)
    unknown = valid & (keys[index] != code)
    if unknown.any():
        values, counts = np.unique(code[unknown], return_counts=True)
        value = int(values[counts.argmax()])
        row, col = divmod(int(np.argmax(unknown & (code == value))), code.shape[1])
        others = f"; {len(values) - 1} other unlisted colour(s) too" if len(values) > 1 else ""
        raise InputError(f"{mask}: colour #{value:06x} ({counts.max()} px, first at row {row}, "
                         f"col {col}) is not in the palette{others}; add it to the palette "
                         "(with its class, or a class named 'unlabelled' to ignore it) or "
                         "mark those pixels as nodata")
    target = ids[index]
    target[~valid] = IGNORE
    return target


def rasterize_vector(path: str | Path, image: RasterInfo,
                     config: LabelConfig = LabelConfig()) -> np.ndarray:
    """Burn the features of ``path`` onto ``image``'s grid (see the module docstring)."""
    import geopandas as gpd  # heavy: loaded on use

    require_regular_file(path, "vector")  # a FIFO would wait forever
    check_vector_name(Path(path))
    image = georeferenced(image)   # placed by ground control points: where they say
    try:
        frame = gpd.read_file(path, fid_as_index=True)  # messages name features by FID
    except Exception as exc:  # pyogrio raises its own DataSourceError and others
        raise InputError(f"{path}: not a readable vector file ({exc})") from exc
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    _check_coordinates(frame, path)
    if image.crs is not None:
        if frame.crs is None:
            raise InputError(f"{path}: the vector labels have no CRS but {image.path} is in "
                             f"{image.crs}; assign one (e.g. ogr2ogr -a_srs)")
        if frame.crs.is_geographic and len(frame):
            west, south, east, north = frame.total_bounds
            if west < -360 or east > 360 or south < -90 or north > 90:
                raise InputError(f"{path}: coordinates {frame.total_bounds.round(1).tolist()} "
                                 f"are not longitudes/latitudes but the file says "
                                 f"{frame.crs} (GeoJSON's default when none is given); "
                                 "write the file with its real CRS")
        if config.line_width_units == "metres" and len(frame):
            # Buffer in the local UTM zone: metres on the ground whatever the image's CRS.
            local = frame.to_crs(frame.estimate_utm_crs())
            frame = local.set_geometry(_buffer_lines(local.geometry.to_numpy(),
                                                     config.line_width / 2, path))
        frame = frame.to_crs(image.crs)
        if len(frame) and not np.isfinite(frame.total_bounds).all():
            raise InputError(f"{path}: some features cannot be projected to {image.crs}")
    if config.class_field is not None and config.class_field not in frame.columns:
        raise InputError(f"{path}: no attribute {config.class_field!r}; it has "
                         f"{', '.join(map(str, frame.columns.drop('geometry')))}")
    classes = (np.ones(len(frame), np.int64) if config.class_field is None
               else class_ids(frame[config.class_field], path, config))
    geoms = frame.geometry.to_numpy()
    if config.line_width_units == "metres" and image.crs is None:
        raise InputError(f"{image.path} has no CRS: give the line width in pixels")
    if config.line_width_units != "metres":  # (metres: buffered above, before projecting)
        t = image.transform
        # Pixels: a pixel's size in map units is the geometric mean of its two sides.
        scale = float(np.sqrt(abs(t.a * t.e - t.b * t.d))) \
            if config.line_width_units == "pixels" else 1.0
        geoms = _buffer_lines(geoms, config.line_width / 2 * scale, path)
    target = np.full((image.height, image.width),
                     IGNORE if config.unlabelled_outside else 0, np.uint8)
    geoms = _clip_to_image(geoms, image)
    shapes = [(g, int(c)) for g, c in zip(geoms, classes) if not g.is_empty]
    if shapes:
        rasterize(shapes, out=target, transform=image.transform, all_touched=False)
    return target


def class_ids(column, path: str | Path, config: LabelConfig) -> np.ndarray:
    """Class ids (int64) of a vector attribute holding ids or, with ``config.class_names``,
    names (both may be mixed, ids written as text too); refuses unknown or empty values."""
    names = {name: i for i, name in enumerate(config.class_names)}
    top = len(names) if names else IGNORE
    low = 0 if config.unlabelled_outside else 1   # background features: outside unlabelled
    ids, unknown = np.zeros(len(column), np.int64), []
    for i, value in enumerate(column.to_numpy()):
        text = str(value).strip()
        if value is None or (isinstance(value, float) and np.isnan(value)):
            unknown.append("NULL")
        elif text in names:
            ids[i] = names[text]
        elif re.fullmatch(r"[0-9]+(\.0*)?", text) and low <= float(text) < top:
            ids[i] = int(float(text))
        else:
            unknown.append(text)
    if unknown:
        known = (f"class names {', '.join(config.class_names[low:])} or ids "
                 f"{low}..{top - 1}" if names else f"class ids {low}..254")
        raise InputError(f"{path}: {config.class_field!r} holds "
                         f"{', '.join(repr(u) for u in sorted(set(unknown))[:8])}, not "
                         f"{known}; fix those features or the class list")
    return ids


def check_class_ids(target: np.ndarray, count: int, path: str | Path) -> None:
    """Refuse a target value that is neither a class id below ``count`` nor IGNORE, in one
    line naming the value, how many pixels hold it and the first (row, col)."""
    bad = (target >= count) & (target != IGNORE)
    if bad.any():
        value = int(target[bad].min())
        rows, cols = np.nonzero(target == value)
        raise InputError(f"{path}: label value {value} (at row {rows[0]}, col {cols[0]}, "
                         f"{len(rows)} px) is not a class id 0..{count - 1}; give class_names "
                         "for every value, or mark it as unlabelled with ignore_value")


def _check_coordinates(frame, path: str | Path) -> None:
    """Refuse a feature with a coordinate that is not finite or beyond :data:`MAX_COORDINATE`
    (a corrupt vertex: no coordinate reference system reaches that far)."""
    coords, index = shapely.get_coordinates(frame.geometry.to_numpy(), return_index=True)
    bad = ~(np.abs(coords) <= MAX_COORDINATE).all(axis=1)  # NaN fails the test too
    if bad.any():
        x, y = coords[bad][0]
        raise InputError(f"{path}: feature {frame.index[index[bad][0]]} has a coordinate "
                         f"({x:g}, {y:g}) beyond the range of any coordinate reference system "
                         f"(|x|, |y| <= {MAX_COORDINATE:g}); fix or delete that feature")


def _clip_to_image(geoms: np.ndarray, image: RasterInfo) -> np.ndarray:
    """Geometries reaching beyond ``image`` cut to its footprint plus a pixel (map units).

    GDAL burns in 32-bit pixel coordinates: a vertex 2^31 px away (2000 km at 1 mm pixels)
    would make the whole feature burn wrong. Pixel centres on the image lie inside the cut,
    so what is burned there does not change.
    """
    corners = np.array([image.transform @ (col, row) for col in (-1, image.width + 1)
                        for row in (-1, image.height + 1)])
    (west, south), (east, north) = corners.min(axis=0), corners.max(axis=0)
    bounds = shapely.bounds(geoms)
    beyond = ((bounds[:, 0] < west) | (bounds[:, 1] < south) | (bounds[:, 2] > east)
              | (bounds[:, 3] > north))
    if not beyond.any():
        return geoms
    out = geoms.copy()
    out[beyond] = shapely.clip_by_rect(geoms[beyond], west, south, east, north)
    return out


def _buffer_lines(geoms: np.ndarray, radius: float, path: str | Path) -> np.ndarray:
    """Polygons as they are; lines and points buffered by ``radius`` (their CRS's units)."""
    kinds = shapely.get_type_id(geoms)
    linear = np.isin(kinds, (0, 1, 2, 4, 5))  # (multi)points and (multi)lines, linear rings
    if not linear.any():
        return geoms
    if radius <= 0:
        raise InputError(f"{path}: has line or point features; give a line width > 0")
    out = geoms.copy()
    out[linear] = shapely.buffer(geoms[linear], radius)
    collections = kinds == 7
    if collections.any():  # geometry collections: buffer their lines, keep their polygons
        out[collections] = [shapely.union_all(_buffer_lines(
            np.asarray(shapely.get_parts(g)), radius, path)) for g in geoms[collections]]
    return out


def image_info(path: str | Path) -> RasterInfo:
    """:func:`geounet.io.open_raster` without rasterio's warning on plain PNG/JPEG images."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return open_raster(path)


def read_split(path: str | Path) -> dict[str, str]:
    """``NAME SPLIT`` lines (CrackForest's ``split.txt``) as ``{name: split}``."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the split file ({exc.strerror})") from exc
    out = {}
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2:
            raise InputError(f"{path}:{number}: expected 'NAME SPLIT', got {line!r}")
        out[parts[0]] = parts[1]
    return out


def select_split(pairs: Sequence[tuple[Path, Path]], split_file: str | Path | None,
                 split: str) -> list[tuple[Path, Path]]:
    """The (image, label) pairs whose image stem ``split_file`` puts in ``split``.

    Without a split file every pair is kept. Training and ``geounet evaluate`` select their
    images this way, so a name is in the same split for both.
    """
    if split_file is None:
        return list(pairs)
    keep = {name for name, part in read_split(split_file).items() if part == split}
    return [pair for pair in pairs if pair[0].stem in keep]


def pair_folders(images: str | Path, labels: str | Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs of two folders matched by file stem, in name order.

    Images are files GDAL reads as rasters (.tif, .png, .jpg, ...); labels are rasters or
    vector files. Images without a label are refused, so that a typo cannot silently shrink
    the data set.
    """
    folders = {"image": Path(images), "label": Path(labels)}
    for kind, folder in folders.items():
        if not folder.is_dir():
            raise InputError(f"{folder}: no such {kind} folder")
    found = {kind: {p.stem: p for p in sorted(folder.iterdir())
                    if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() not in (".xml", ".aux", ".txt", ".md", ".ovr")}
             for kind, folder in folders.items()}
    missing = sorted(set(found["image"]) - set(found["label"]))
    if missing:
        raise InputError(f"{labels}: no label for image(s) {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''} of {images} (paired by name)")
    return [(found["image"][s], found["label"][s]) for s in sorted(found["image"])]
