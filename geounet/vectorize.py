"""Class masks to polygons (and centerlines), block by block, merged exactly across blocks.

The mask is read in square blocks, row by row. Each block is polygonized with
:func:`rasterio.features.shapes` (GDAL's polygonizer) in pixel coordinates, where every vertex
is an integer, so geometry operations on them are exact. A polygon that does not reach an
inner block edge is complete: it is finished (mapped through the raster's transform into its
CRS, measured) and written at once. A polygon that reaches one may continue in a neighbouring
block: such pieces are held back, grouped with the pieces they share a boundary with (an edge
for 4-connectivity, also a corner for 8-connectivity) and unioned; after each row of blocks,
groups that cannot reach the next row are complete and written. The result equals polygonizing
the whole mask at once (same features, same areas, same union), while only one block of pixels
and the pieces along one row of block edges are ever in memory.

Per feature: class id and name, area and perimeter (m^2 / m, geodesic in a geographic CRS),
the mean probability when a probability raster is given, and, with centerlines, the length,
mean width (area / length) and maximum width (m) of its skeleton (see
:mod:`geounet.centerline`), which is computed on the finished feature, so it is joined across
blocks by construction.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import rasterio
import shapely
from rasterio import features
from rasterio.errors import RasterioError
from rasterio.windows import Window
from tqdm import tqdm

from geounet.centerline import Centerline, centerlines
from geounet.errors import ConfigError, InputError
from geounet.export import (
    CENTERLINE_FIELDS,
    measure,
    measure_lines,
    polygon_fields,
    vector_format,
    write_layer,
)
from geounet.geotiff import read_class_names
from geounet.io import RasterInfo, open_raster
from geounet.outputs import check_outputs, first_line

log = logging.getLogger(__name__)

MAX_CENTERLINE_PATCH_PX = 64_000_000   # a feature's bounding box, for its skeleton
PARALLEL_MIN_PIXELS = 32_000_000   # below this, blocks are polygonized in-process
GDAL_CACHE_MB = 32   # each block is read once: a large raster cache only holds memory
POLYGONIZE_DTYPES = ("uint8", "uint16", "int16", "int32")


@dataclass(frozen=True)
class VectorizeConfig:
    """Polygonization settings.

    Attributes:
        connectivity: 4 (edge neighbours) or 8 (edge and corner neighbours).
        block_size: edge of the square blocks read at a time (pixels).
        classes: class ids to vectorize; ``None``: every class except 0 (background).
        min_area: drop polygons smaller than this, in square map units (after merging).
        min_pixels: drop polygons of fewer pixels than this.
        fill_holes: fill holes smaller than this, in square map units (0: keep all holes).
        simplify: topology-preserving simplification tolerance in map units (0: none).
        centerlines: measure skeleton length and width of the linear classes.
        linear_classes: class ids that get centerlines; ``None``: every vectorized class.
        spur_length: prune skeleton branches shorter than this (map units); ``None``: twice
            the feature's local radius.
        workers: processes polygonizing blocks ahead of the merge (1: in this process);
            0: one per CPU for masks of 32 Mpx or more, in-process for smaller ones. More
            than one needs multiprocessing's ``if __name__ == "__main__":`` guard in scripts.
    """

    connectivity: int = 4
    block_size: int = 2048
    classes: tuple[int, ...] | None = None
    min_area: float = 0.0
    min_pixels: int = 0
    fill_holes: float = 0.0
    simplify: float = 0.0
    centerlines: bool = False
    linear_classes: tuple[int, ...] | None = None
    spur_length: float | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if self.connectivity not in (4, 8):
            raise ConfigError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.block_size < 2:
            raise ConfigError(f"block size must be >= 2 pixels, got {self.block_size}")
        for name in ("min_area", "min_pixels", "fill_holes", "simplify", "workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 0")

    def is_linear(self, class_id: int) -> bool:
        return self.centerlines and (self.linear_classes is None
                                     or class_id in self.linear_classes)


@dataclass
class _Pieces:
    """Polygons in raster pixel coordinates with their class and probability sums."""

    ids: np.ndarray
    polygons: np.ndarray
    score_sum: np.ndarray
    score_count: np.ndarray

    @staticmethod
    def concat(parts: list[_Pieces]) -> _Pieces:
        return _Pieces(*(np.concatenate([getattr(p, f.name) for p in parts])
                         for f in fields(_Pieces)))

    def take(self, keep: np.ndarray) -> _Pieces:
        return _Pieces(*(getattr(self, f.name)[keep] for f in fields(_Pieces)))


def polygonize_blocks(mask_path: str | Path, config: VectorizeConfig | None = None,
                      probabilities: str | Path | None = None, progress: bool = False,
                      ) -> Iterator[_Pieces]:
    """Yield complete features in raster pixel coordinates, block by block (see the module
    docstring). Nodata pixels and class 0 are not vectorized."""
    config = config or VectorizeConfig()
    size = config.block_size
    info = open_raster(mask_path)
    if probabilities is not None:
        check_same_grid(info, open_raster(probabilities))
    width, height = info.width, info.height
    windows = [Window(col, row, min(size, width - col), min(size, height - row))
               for row in range(0, height, size) for col in range(0, width, size)]
    pending: list[_Pieces] = []
    bar = tqdm(total=len(windows), disable=not progress, file=sys.stderr, unit="block",
               desc="vectorize")
    blocks = _polygonized(mask_path, probabilities, windows, config)
    for window, pieces in zip(windows, blocks):
        bar.update()
        col, row = window.col_off, window.row_off
        if pieces is not None:
            x0, y0, x1, y1 = shapely.bounds(pieces.polygons).T
            right, bottom = col + window.width, row + window.height
            on_edge = ((col > 0) & (x0 == col)) | ((row > 0) & (y0 == row))
            on_edge |= (right < width) & (x1 == right)
            on_edge |= (bottom < height) & (y1 == bottom)
            pending.append(pieces.take(on_edge))
            yield pieces.take(~on_edge)
        if col + window.width == width and pending:   # a row of blocks is done
            merged = _merge_touching(_Pieces.concat(pending), config.connectivity)
            bottom = row + window.height
            reaches_next_row = (shapely.bounds(merged.polygons)[:, 3] == bottom) & (
                bottom < height)
            pending = [merged.take(reaches_next_row)]
            yield merged.take(~reaches_next_row)
    bar.close()


def _polygonized(mask_path, probabilities, windows: list[Window], config: VectorizeConfig,
                 ) -> Iterator[_Pieces | None]:
    """The pieces of each window, in order: in this process, or polygonized by
    ``config.workers`` processes a few blocks ahead (GDAL's polygonizer holds the GIL)."""
    workers = config.workers
    if workers == 0:   # auto: starting processes pays off on large masks only
        pixels = sum(w.width * w.height for w in windows)
        workers = len(os.sched_getaffinity(0)) if pixels >= PARALLEL_MIN_PIXELS else 1
    workers = min(workers, len(windows))
    if workers <= 1:   # datasets of this call only: callers may run in several threads
        with rasterio.open(mask_path) as src, (
                rasterio.open(probabilities) if probabilities is not None
                else contextlib.nullcontext()) as prob_src:
            yield from (_block_pieces(src, prob_src, w, config) for w in windows)
        return
    context = multiprocessing.get_context("spawn")   # no fork of a threaded process
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_open_sources,
                             initargs=(mask_path, probabilities)) as pool:
        ahead: collections.deque = collections.deque()
        for window in windows:
            ahead.append(pool.submit(_worker_block, window, config))
            if len(ahead) > 2 * workers:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


_sources: dict[str, rasterio.DatasetReader | None] = {}   # of a worker process


def _open_sources(mask_path, probabilities) -> None:
    """Open the mask (and probabilities) once per worker process, with a small GDAL cache."""
    rasterio.env.set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_MB)
    _sources["mask"] = rasterio.open(mask_path)
    _sources["prob"] = rasterio.open(probabilities) if probabilities is not None else None


def _worker_block(window: Window, config: VectorizeConfig) -> _Pieces | None:
    return _block_pieces(_sources["mask"], _sources["prob"], window, config)


def check_same_grid(mask: RasterInfo, probabilities: RasterInfo) -> None:
    """Refuse a probability raster that is not on the mask's grid."""
    if (probabilities.width, probabilities.height) != (mask.width, mask.height) or (
            probabilities.transform != mask.transform):
        raise InputError(f"{probabilities.path} is not on the grid of {mask.path} (size "
                         f"{probabilities.width}x{probabilities.height} vs "
                         f"{mask.width}x{mask.height}); give the probabilities written with "
                         "this mask")


def _block_pieces(src, prob_src, window: Window, config: VectorizeConfig) -> _Pieces | None:
    """All polygons of one block in raster pixel coordinates, with probability sums."""
    try:
        values = src.read(1, window=window)
        keep = src.read_masks(1, window=window) > 0
    except RasterioError as exc:   # named here: worker processes do not carry GDAL's cause
        raise InputError(f"{src.name}: cannot read pixels {window.col_off},{window.row_off} "
                         f"+{window.width}x{window.height}; the file looks truncated or corrupt "
                         f"(GDAL: {first_line(exc)})") from exc
    if values.dtype.kind == "f":
        keep &= np.isfinite(values)
    if values.dtype.name not in POLYGONIZE_DTYPES:   # class ids as GDAL's polygonizer takes
        values = np.where(keep, values, 0).astype(np.int32)
    keep &= values != 0
    if config.classes is not None:
        keep &= np.isin(values, config.classes)
    if not keep.any():
        return None
    offset = rasterio.Affine.translation(window.col_off, window.row_off)
    found = list(features.shapes(values, mask=keep, transform=offset,
                                 connectivity=config.connectivity))
    polygons = _repaired(_polygons([geom for geom, _ in found]))
    ids = np.array([value for _, value in found], dtype=np.int32)
    score_sum = np.zeros(len(ids))
    score_count = np.zeros(len(ids))
    if prob_src is not None:
        zones = features.rasterize(zip(polygons, range(1, len(ids) + 1)),
                                   out_shape=values.shape, transform=offset, dtype="int32")
        if prob_src.count == 1:   # a binary model: the foreground probability
            prob = prob_src.read(1, window=window)
            score_sum = np.bincount(zones.ravel(), np.nan_to_num(prob).ravel(), len(ids) + 1)[1:]
        else:                     # one band per class: each feature's own class
            for class_id in np.unique(ids):
                prob = np.nan_to_num(prob_src.read(int(class_id) + 1, window=window))
                sums = np.bincount(zones.ravel(), prob.ravel(), len(ids) + 1)[1:]
                score_sum[ids == class_id] = sums[ids == class_id]
        score_count = np.bincount(zones.ravel(), minlength=len(ids) + 1)[1:].astype(float)
    return _Pieces(ids, polygons, score_sum, score_count)


def _repaired(polygons: np.ndarray) -> np.ndarray:
    """GDAL's rings may touch themselves at a pixel corner (8-connected parts, holes touching
    the shell), which OGC calls invalid: split them there. Exact: every vertex is an integer.
    (Unions of valid pieces are valid by construction, so merged features need no repair.)

    Such rings touch but never cross, so a zero buffer rebuilds them exactly (3x faster than
    ``make_valid``); any whose area it would change goes through ``make_valid`` instead.
    """
    invalid = np.flatnonzero(~shapely.is_valid(polygons))
    if len(invalid):
        rebuilt = shapely.buffer(polygons[invalid], 0)
        changed = shapely.area(rebuilt) != shapely.area(polygons[invalid])
        rebuilt[changed] = shapely.make_valid(polygons[invalid[changed]], method="structure",
                                              keep_collapsed=False)
        polygons[invalid] = rebuilt
    return polygons


def _polygons(geojson: list[dict]) -> np.ndarray:
    """GeoJSON polygon dicts to an array of shapely Polygons, built in one vectorized call."""
    rings = [np.asarray(ring, dtype=np.float64) for g in geojson for ring in g["coordinates"]]
    ring_ends = np.cumsum([len(r) for r in rings])
    polygon_ends = np.cumsum([len(g["coordinates"]) for g in geojson])
    return shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, np.concatenate(rings),
        (np.concatenate([[0], ring_ends]), np.concatenate([[0], polygon_ends])),
    )


def _merge_touching(pieces: _Pieces, connectivity: int) -> _Pieces:
    """Union pieces of one class into connected groups: sharing an edge (4) or any point (8)."""
    tree = shapely.STRtree(pieces.polygons)
    left, right = tree.query(pieces.polygons, predicate="touches")
    same = pieces.ids[left] == pieces.ids[right]
    left, right = left[same], right[same]
    if connectivity == 4:  # corner-only contacts do not connect under 4-connectivity
        shared = shapely.intersection(pieces.polygons[left], pieces.polygons[right])
        edge = shapely.length(shared) > 0
        left, right = left[edge], right[edge]
    parent = np.arange(len(pieces.ids))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left.tolist(), right.tolist()):
        parent[find(a)] = find(b)
    roots = np.array([find(i) for i in range(len(parent))], dtype=np.intp)
    groups, group_of = np.unique(roots, return_inverse=True)
    polygons = np.empty(len(groups), dtype=object)
    for g in range(len(groups)):
        members = pieces.polygons[group_of == g]
        polygons[g] = members[0] if len(members) == 1 else shapely.union_all(members)
    first = np.unique(group_of, return_index=True)[1]
    return _Pieces(pieces.ids[first], polygons,
                   np.bincount(group_of, pieces.score_sum, len(groups)),
                   np.bincount(group_of, pieces.score_count, len(groups)))


@dataclass
class _Outputs:
    """Feature frames of the polygon and centerline layers, built block by block."""

    transform: rasterio.Affine
    crs: pyproj.CRS | None
    class_names: dict[int, str]
    config: VectorizeConfig
    scores: bool
    target_crs: str | None
    features: int = 0
    area_m2: float = 0.0
    centerline_length_m: float = 0.0
    lines: list[gpd.GeoDataFrame] = field(default_factory=list)

    def polygons(self, pieces: _Pieces) -> gpd.GeoDataFrame:
        """Finish complete pieces: filter, map to the CRS, repair, measure."""
        config = self.config
        keep = shapely.area(pieces.polygons) >= max(config.min_pixels, 1)
        pieces = pieces.take(keep)
        geometries = _to_map(pieces.polygons, self.transform)
        if config.fill_holes > 0:
            geometries = _fill_holes(geometries, config.fill_holes)
        if config.simplify > 0:
            geometries = shapely.simplify(geometries, config.simplify, preserve_topology=True)
        keep = shapely.area(geometries) >= config.min_area
        pieces, geometries = pieces.take(keep), geometries[keep]
        areas, perimeters = measure(geometries, self.crs)
        columns = {
            "feature_id": np.arange(self.features, self.features + len(geometries)),
            "class_id": pieces.ids,
            "class_name": self._names(pieces.ids),
            "area_m2": areas, "perim_m": perimeters,
        }
        if self.scores:
            with np.errstate(invalid="ignore", divide="ignore"):
                columns["score"] = pieces.score_sum / pieces.score_count
        if config.centerlines:
            columns.update(self._centerlines(pieces, columns["feature_id"], areas))
        self.features += len(geometries)
        self.area_m2 += float(areas.sum())
        frame = gpd.GeoDataFrame(columns, geometry=geometries, crs=self.crs)
        return frame.to_crs(self.target_crs) if self.target_crs else frame

    def _names(self, class_ids: np.ndarray) -> np.ndarray:
        """Class names of ``class_ids`` (the id as text when the mask names none)."""
        unique, index = np.unique(class_ids, return_inverse=True)
        names = np.array([self.class_names.get(int(c), str(c)) for c in unique], dtype=object)
        return names[index.reshape(-1)]

    def _centerlines(self, pieces: _Pieces, feature_ids: np.ndarray, areas: np.ndarray,
                     ) -> dict[str, np.ndarray]:
        """Skeleton branches of the linear features (kept in ``self.lines``) and the
        per-feature length (m), mean width (area / length, m) and maximum width (m)."""
        n = len(pieces.ids)
        length, max_width = np.full(n, np.nan), np.full(n, np.nan)
        rows: dict[str, list] = {name: [] for name in CENTERLINE_FIELDS}
        geometries = []
        for i in np.flatnonzero([self.config.is_linear(int(c)) for c in pieces.ids]):
            branches = _feature_centerlines(pieces.polygons[i], self.config, self.transform)
            if branches is None:
                continue
            class_id = int(pieces.ids[i])
            lines = _to_map(np.array([b.line for b in branches], dtype=object), self.transform)
            metres = measure_lines(lines, self.crs)
            scale = metres / np.array([b.length_px for b in branches])  # metres per pixel
            length[i] = metres.sum()
            max_width[i] = max(b.max_width_px * k for b, k in zip(branches, scale))
            geometries.extend(lines)
            rows["feature_id"] += [int(feature_ids[i])] * len(branches)
            rows["class_id"] += [class_id] * len(branches)
            rows["class_name"] += [self.class_names.get(class_id, str(class_id))] * len(branches)
            rows["length_m"] += metres.tolist()
            rows["mean_width_m"] += [b.mean_width_px * k for b, k in zip(branches, scale)]
            rows["max_width_m"] += [b.max_width_px * k for b, k in zip(branches, scale)]
        if geometries:
            frame = gpd.GeoDataFrame(rows, geometry=geometries, crs=self.crs)
            self.lines.append(frame.to_crs(self.target_crs) if self.target_crs else frame)
        self.centerline_length_m += float(np.nansum(length))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_width = np.where(length > 0, areas / length, np.nan)
        return {"length_m": length, "mean_width_m": mean_width, "max_width_m": max_width}


def _feature_centerlines(polygon_px, config: VectorizeConfig, transform: rasterio.Affine):
    """Centerline branches of one feature (raster pixel coordinates), from its own pixels
    rasterized in its bounding box; ``None`` when it has none or is too large."""
    x0, y0, x1, y1 = (int(v) for v in shapely.bounds(polygon_px))
    if (x1 - x0) * (y1 - y0) > MAX_CENTERLINE_PATCH_PX:
        log.warning("a feature spans %dx%d px: too large for a centerline (limit %d px); "
                    "its length and width are left empty", x1 - x0, y1 - y0,
                    MAX_CENTERLINE_PATCH_PX)
        return None
    patch = features.rasterize([(polygon_px, 1)], out_shape=(y1 - y0, x1 - x0),
                               transform=rasterio.Affine.translation(x0, y0), dtype="uint8")
    spur_px = None
    if config.spur_length is not None:
        spur_px = config.spur_length / math.sqrt(abs(transform.determinant))
    branches = centerlines(patch > 0, spur_px)
    if not branches:
        return None
    return [Centerline(shapely.transform(b.line, lambda xy: xy + (x0, y0)), b.length_px,
                       b.area_px, b.max_width_px) for b in branches]


def _to_map(geometries: np.ndarray, transform: rasterio.Affine) -> np.ndarray:
    """Pixel coordinates (x = column, y = row) to the raster's CRS."""
    a, b, c, d, e, f = transform[:6]
    if b == 0 and d == 0:   # north-up: scale and shift
        return shapely.transform(geometries, lambda xy: xy * (a, e) + (c, f))
    return shapely.transform(geometries, lambda xy: np.column_stack(
        [a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f]))


def _fill_holes(geometries: np.ndarray, max_area: float) -> np.ndarray:
    """Remove interior rings enclosing less than ``max_area`` (square map units)."""
    out = geometries.copy()
    for i in np.flatnonzero(shapely.get_num_interior_rings(geometries) > 0):
        parts = []
        for polygon in shapely.get_parts(geometries[i]):
            holes = [r for r in polygon.interiors if shapely.Polygon(r).area >= max_area]
            parts.append(shapely.Polygon(polygon.exterior, holes))
        out[i] = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    return out


@dataclass(frozen=True)
class VectorOutputs:
    """Checked vector outputs of one command: names, formats and the CRS asked for."""

    polygons: Path
    polygons_format: str
    centerlines: Path | None
    centerlines_format: str | None
    crs: pyproj.CRS | None


def check_vector_outputs(output: str | Path, centerlines: str | Path | None,
                         driver: str | None, crs: str | None,
                         inputs: list[str | Path], overwrite: bool) -> VectorOutputs:
    """Check the vector outputs of a command before any work: formats that agree with the
    names, every file (and Shapefile part) free to write, distinct from each other and
    from the inputs, and a CRS that pyproj knows."""
    output = Path(output)
    lines = Path(centerlines) if centerlines is not None else None
    check_outputs([output, lines], inputs, overwrite)
    fmt = vector_format(output, driver)
    lines_fmt = vector_format(lines, driver) if lines is not None else None
    requested = None
    if crs is not None:
        try:
            requested = pyproj.CRS.from_user_input(crs)
        except pyproj.exceptions.CRSError as exc:
            raise ConfigError(f"--crs {crs!r} is not a CRS pyproj knows ({first_line(exc)}); "
                              "give one like EPSG:32633") from None
    return VectorOutputs(output, fmt, lines, lines_fmt, requested)


@dataclass
class VectorizeResult:
    """What a vectorization run wrote."""

    output: Path
    features: int
    area_m2: float
    driver: str
    centerlines: Path | None = None
    centerline_features: int = 0
    centerline_length_m: float = 0.0
    seconds: float = 0.0


def vectorize_raster(mask_path: str | Path, output: str | Path,
                     config: VectorizeConfig | None = None, driver: str | None = None,
                     crs: str | None = None, pixel_coordinates: bool = False,
                     overwrite: bool = False, probabilities: str | Path | None = None,
                     centerlines_output: str | Path | None = None, progress: bool = False,
                     ) -> VectorizeResult:
    """Polygonize a class mask and write the features with their measurements.

    Args:
        mask_path: class mask raster (band 1; 0 is background, nodata is skipped).
        output: vector file; its format comes from ``driver`` or the extension.
        config: polygonization settings (``centerlines`` adds length and widths).
        driver: format name (gpkg, geojson, shapefile, parquet) overriding the extension.
        crs: reproject features to this CRS; for a raster without a CRS, declares its CRS.
        pixel_coordinates: accept a raster without a CRS and write pixel coordinates.
        overwrite: replace existing outputs.
        probabilities: probability raster on the mask's grid: adds each feature's mean
            probability (``score``).
        centerlines_output: also write the centerline branches (LineStrings) here; implies
            centerlines in ``config``.
        progress: show a progress bar on stderr.
    """
    started = time.perf_counter()
    config = config or VectorizeConfig()
    if centerlines_output is not None and not config.centerlines:
        config = replace(config, centerlines=True)
    output = Path(output)
    info = open_raster(mask_path)
    inputs = [mask_path] + ([probabilities] if probabilities is not None else [])
    if probabilities is not None:
        check_same_grid(info, open_raster(probabilities))
    plan = check_vector_outputs(output, centerlines_output, driver, crs, inputs, overwrite)
    fmt, lines_path, lines_fmt = plan.polygons_format, plan.centerlines, plan.centerlines_format
    source_crs = info.crs
    if source_crs is None:
        if crs is not None:
            source_crs, crs = rasterio.crs.CRS.from_user_input(plan.crs.to_wkt()), None
        elif not pixel_coordinates:
            raise InputError(f"{mask_path}: raster has no CRS; declare it with --crs EPSG:XXXX "
                             "or accept pixel coordinates with --pixel-coordinates")
    with rasterio.open(mask_path) as src:
        class_names = dict(enumerate(read_class_names(src)))
    pyproj_crs = pyproj.CRS.from_user_input(source_crs.to_wkt()) if source_crs else None
    target = plan.crs if crs else pyproj_crs
    outputs = _Outputs(info.transform, pyproj_crs, class_names, config,
                       probabilities is not None, crs)
    frames = (outputs.polygons(pieces) for pieces in polygonize_blocks(
        mask_path, config, probabilities, progress) if len(pieces.ids))
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        write_layer(frames, output, fmt, target, "MultiPolygon",
                    polygon_fields(probabilities is not None, config.centerlines))
    if lines_path is not None:
        write_layer(iter(outputs.lines), lines_path, lines_fmt, target, "LineString",
                    CENTERLINE_FIELDS)
    return VectorizeResult(output, outputs.features, outputs.area_m2, fmt, lines_path,
                           sum(len(f) for f in outputs.lines), outputs.centerline_length_m,
                           time.perf_counter() - started)
