"""Class masks to polygons in raster pixel coordinates, block by block, joined exactly.

The mask is read in square blocks, row by row. Each block is polygonized with
:func:`rasterio.features.shapes` (GDAL's polygonizer) in pixel coordinates, where every vertex
is an integer pixel corner, and labelled with the same connectivity
(:func:`scipy.ndimage.label`): each polygon is one labelled component, found by its top-left
pixel. From the labels come, per polygon and without drawing it back, its pixel count, its
sum of probabilities, the corners where its rings touch (8-connectivity: repaired by
:func:`geounet.rings.repair`; GDAL writes 4-connected polygons valid), its pixels for a
centerline, and the pieces on each side of the block's inner edges.

A polygon with no pixel on an inner block edge is complete and is yielded at once. The others
are held as pieces; pieces of one class on either side of a block edge with pixels next to
each other (across the edge; also diagonally for 8-connectivity) belong to one feature. After
each row of blocks, features none of whose pieces reach the next row are complete: their
pieces are joined once, however many blocks they span (:func:`geounet.rings.stitch`, linear in
their vertices), and their sums and counts added, so a score is the exact pixel-weighted mean.
The result equals polygonizing the whole mask at once (same features, same areas, same
union), while one block of pixels per process and the pieces of features that are still open
are in memory.

On large masks, worker processes run GDAL's polygonizer (which holds the GIL) a few blocks
ahead while this process labels, measures and joins; they end before the last row of blocks
is joined, where a feature spanning the raster completes and this process needs the most
memory. On smaller ones, the centerline skeletons are asked of a helper process as soon as a
block is labelled, and computed there while this process polygonizes and measures
(:mod:`geounet.processes`).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import math
import multiprocessing
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.errors import RasterioError
from rasterio.windows import Window
from scipy import ndimage
from tqdm import tqdm

from geounet import rings
from geounet.centerline import Branches
from geounet.errors import InputError
from geounet.io import RasterInfo, fraction_in, georeferenced, open_raster
from geounet.outputs import first_line
from geounet.processes import Answer, helps, polygonizing_workers, serve, skeleton_helper

if TYPE_CHECKING:   # the helper process runs without pydantic (see processes._prefetched)
    from geounet.settings import VectorizeSettings

log = logging.getLogger(__name__)

MAX_CENTERLINE_PATCH_PX = 64_000_000   # a feature's bounding box, for its skeleton
GDAL_CACHE_MB = 32   # each block is read once: a large raster cache only holds memory
POLYGONIZE_DTYPES = ("uint8", "uint16", "int16", "int32")
CLASS_ID_RANGE = (-(2**31), 2**31 - 1)   # what GDAL's polygonizer and the class_id field hold
SHAPES_CHUNK = 2_000   # GeoJSON polygons turned into geometries at a time (bounds memory)
LARGE_RING_VERTICES = 2_000   # touching rings of polygons this large: rings.repair
HELP_MAX_OPEN_VERTICES = 1_000_000   # see _Joiner.holds_little
MAX_BLOCKS_AHEAD = 8   # blocks polygonized and held before the merge takes them
# GDAL >= 3.3.2 writes 4-connected polygons valid (a hole touching the exterior at a corner is
# its own ring; OSGeo/gdal#3337); 8-connected ones touch themselves by design (gdal#7369).
GDAL_VALID_4 = tuple(int(v) for v in rasterio.__gdal_version__.split(".")[:3]) >= (3, 3, 2)


@dataclass(frozen=True)
class PixelSettings:
    """Polygonizing settings in pixel units.

    Attributes:
        connectivity: 4 (edge neighbours) or 8 (edge and corner neighbours).
        block_size: edge of the square blocks read at a time (pixels).
        classes: class ids to polygonize; ``None``: every class except 0.
        skeleton_classes: class ids whose centerline branches are computed; ``None``: all.
        spur_px: prune skeleton branches shorter than this (pixels); ``None``: automatic.
        workers: processes polygonizing blocks ahead of the merge (1: in this process);
            0: for a mask of 32 Mpx or more, one per CPU but the one left to this process
            (which merges and writes), else in this process, with the centerline skeletons
            computed by a helper process (:mod:`geounet.processes`). Each worker holds its
            own block and libraries (about 200 MB with 2048 px blocks); they end before the
            last row of blocks is joined, where a feature spanning the raster completes.
    """

    connectivity: int = 4
    block_size: int = 2048
    classes: tuple[int, ...] | None = None
    skeleton_classes: tuple[int, ...] | None = ()
    spur_px: float | None = None
    workers: int = 1

    def skeletonized(self, class_id: int) -> bool:
        return self.skeleton_classes is None or class_id in self.skeleton_classes


def pixel_settings(settings: VectorizeSettings, transform: rasterio.Affine) -> PixelSettings:
    """``settings`` in pixel units of a raster with ``transform``."""
    skeleton: tuple[int, ...] | None = ()
    if settings.centerlines:
        skeleton = settings.linear_classes
    spur_px = None
    if settings.spur_length is not None:
        spur_px = settings.spur_length / math.sqrt(abs(transform.determinant))
    return PixelSettings(settings.connectivity, settings.block_size, settings.classes,
                         skeleton, spur_px, settings.workers)


@dataclass
class Pieces:
    """Features (or pieces of them) in raster pixel coordinates (x = column, y = row).

    Attributes:
        ids: class id of each.
        polygons: shapely Polygons or MultiPolygons (valid).
        score_sum: sum of the valid probabilities over its pixels (0 without
            probabilities).
        scored: how many of its pixels have a valid probability (not nodata, finite).
        pixels: its pixel count.
        seeds: ``row * width + column`` of its first pixel in raster order.
        branches: its centerline branches for skeletonized classes (a :class:`_Part`
            of a request's answer: :meth:`centerlines` waits for them), else ``None``.
    """

    ids: np.ndarray
    polygons: np.ndarray
    score_sum: np.ndarray
    scored: np.ndarray
    pixels: np.ndarray
    seeds: np.ndarray
    branches: np.ndarray

    @staticmethod
    def concat(parts: list[Pieces]) -> Pieces:
        return Pieces(*(np.concatenate([getattr(p, f.name) for p in parts])
                        for f in fields(Pieces)))

    def take(self, keep: np.ndarray) -> Pieces:
        return Pieces(*(getattr(self, f.name)[keep] for f in fields(Pieces)))

    def __len__(self) -> int:
        return len(self.ids)

    def centerlines(self) -> Branches:
        """The centerline branches of all of them, piece after piece (``shape``: the index
        of the piece; raster pixel coordinates); waits for those asked of the helper
        process. Pieces not skeletonized, or too large for a skeleton, have none."""
        requests: dict[int, tuple[_Skeletons, list[int], list[int]]] = {}
        for i, part in enumerate(self.branches):
            if part is not None:
                _, shapes, pieces = requests.setdefault(id(part.skeletons),
                                                        (part.skeletons, [], []))
                shapes.append(part.k)
                pieces.append(i)
        found = Branches.concat([skeletons.of(shapes, pieces)
                                 for skeletons, shapes, pieces in requests.values()])
        return found.take(np.argsort(found.shape, kind="stable"))


class _Skeletons:
    """The centerline branches of the shapes of one request (computed here or by the
    helper process)."""

    def __init__(self, answer: Answer, count: int) -> None:
        self.answer, self.count = answer, count

    def of(self, shapes: list[int], pieces: list[int]) -> Branches:
        """The branches of ``shapes`` (indexes in the request), each given the index of
        its piece in ``pieces``."""
        found = self.answer.result()
        piece = np.full(self.count, -1, np.int64)
        piece[shapes] = pieces
        owner = piece[found.shape]
        mine = np.flatnonzero(owner >= 0)
        return replace(found.take(mine), shape=owner[mine])


@dataclass(frozen=True)
class _Part:
    """The ``k``-th shape of a request (:class:`_Skeletons`)."""

    skeletons: _Skeletons
    k: int


def _ask_skeletons(patches: list[np.ndarray], corners: list[tuple[int, int]],
                   spur_px: float | None, helper: bool) -> list[_Part | None]:
    """Centerline branches of features given by their pixels in their bounding boxes, whose
    top-left pixels are ``corners`` (column, row): asked of the helper process when
    ``helper`` (and it runs), else computed now. None for a feature too large."""
    fit, request = _skeleton_request(patches, corners, spur_px)
    parts: list[_Part | None] = [None] * len(patches)
    if not fit:
        return parts
    process = skeleton_helper() if helper else None
    answer = process.submit(request) if process is not None else Answer(request)
    skeletons = _Skeletons(answer, len(fit))
    for j, k in enumerate(fit):
        parts[k] = _Part(skeletons, j)
    return parts


def _skeleton_request(patches: list[np.ndarray], corners: list[tuple[int, int]],
                      spur_px: float | None) -> tuple[list[int], tuple]:
    """(which of ``patches`` fit a skeleton, the arguments of
    :func:`geounet.centerline.skeleton_branches` for them)."""
    fit = [k for k, p in enumerate(patches) if not _too_large(*p.shape)]
    return fit, ([patches[k] for k in fit], spur_px,
                 np.array([corners[k] for k in fit], np.float64).reshape(-1, 2))


def first_block_request(mask_path: str | Path, settings: VectorizeSettings) -> tuple | None:
    """The skeleton request that vectorizing ``mask_path`` with ``settings`` makes for its
    first block (None: none), worked out from the file alone: what the helper process
    computes ahead while this process loads its libraries (:mod:`geounet.processes`)."""
    info = georeferenced(open_raster(mask_path))
    pixel = pixel_settings(settings, info.transform)
    window = Window(0, 0, min(pixel.block_size, info.width),
                    min(pixel.block_size, info.height))
    with rasterio.open(mask_path) as src:
        values, keep = _class_pixels(src, window, pixel.classes)
    if not keep.any():
        return None
    labels, classes = _labels(values, keep, pixel.connectivity)
    inner = _inner_sides(window, (info.height, info.width))
    wanted, patches, corners = _skeleton_patches(labels, classes, inner, pixel, (0, 0))
    fit, request = _skeleton_request(patches, corners, pixel.spur_px)
    return request if fit else None


@dataclass
class _Shapes:
    """GDAL's polygons of a block (raster pixel corners), their class ids and the top-left
    corner (x, y) of each; ``valid`` once rings touching at corners are repaired."""

    polygons: np.ndarray
    ids: np.ndarray
    top_left: np.ndarray
    valid: bool = False


@dataclass
class _Block:
    """One block's pieces, which of them reach an inner block edge, and along each inner
    edge (top, bottom, left, right) the piece index (-1: none) and class of each pixel."""

    pieces: Pieces
    on_edge: np.ndarray
    sides: dict[str, tuple[np.ndarray, np.ndarray]]


def check_same_grid(mask: RasterInfo, probabilities: RasterInfo) -> None:
    """Refuse a probability raster that is not on the mask's grid (size, transform, CRS),
    saying which differs."""
    differences = []
    if (probabilities.width, probabilities.height) != (mask.width, mask.height):
        differences.append(f"size {probabilities.width}x{probabilities.height} vs "
                           f"{mask.width}x{mask.height}")
    if probabilities.transform != mask.transform:
        differences.append(f"transform {tuple(probabilities.transform)[:6]} vs "
                           f"{tuple(mask.transform)[:6]}")
    if probabilities.crs != mask.crs:
        differences.append(f"CRS {_crs_name(probabilities)} vs {_crs_name(mask)}")
    if differences:
        raise InputError(f"{probabilities.path} is not on the grid of {mask.path} "
                         f"({'; '.join(differences)}); give the probabilities written with "
                         "this mask")


def _crs_name(info: RasterInfo) -> str:
    return repr(info.crs.to_string()) if info.crs is not None else "none"


def polygonize(mask_path: str | Path, settings: PixelSettings | None = None,
               probabilities: str | Path | None = None, progress: bool = False,
               ) -> Iterator[Pieces]:
    """Yield complete features in raster pixel coordinates, block by block (see the module
    docstring). Nodata pixels and class 0 are not polygonized."""
    settings = settings or PixelSettings()
    size = settings.block_size
    info = open_raster(mask_path)
    if probabilities is not None:
        check_same_grid(info, open_raster(probabilities))
    width, height = info.width, info.height
    windows = [Window(col, row, min(size, width - col), min(size, height - row))
               for row in range(0, height, size) for col in range(0, width, size)]
    bar = tqdm(total=len(windows), disable=not progress, file=sys.stderr, unit="block",
               desc="vectorize")
    helper = settings.skeleton_classes != () and helps(settings.workers, width * height)
    joiner = _Joiner(mask_path, settings, width, height, helper)
    try:
        blocks = _blocks(mask_path, probabilities, windows, settings, joiner.holds_little,
                         helper)
        for window, block in zip(windows, blocks):
            bar.update()
            release_memory()   # after the previous block's features were written
            complete = None
            if block is not None:
                complete = block.pieces.take(~block.on_edge)
            joiner.add(window, block)
            del block   # its features are held once, by ``complete`` and the joiner
            if complete is not None and len(complete):
                yield complete
            del complete
            if window.col_off + window.width == width:   # a row of blocks is done
                done = joiner.row_done(window.row_off + window.height)
                release_memory()
                if len(done):
                    yield done
                del done
    finally:
        joiner.close()
        bar.close()


# -- blocks: in this process or in worker processes ------------------------------------
def _blocks(mask_path, probabilities, windows: list[Window], settings: PixelSettings,
            may_help: Callable[[], bool] = lambda: False, helper: bool = False,
            ) -> Iterator[_Block | None]:
    """The polygonized blocks, in order: all in this process, or with ``settings.workers``
    processes running GDAL's polygonizer (which holds the GIL) a few blocks ahead while this
    process labels, measures and joins the blocks before them. While it would wait for one
    and ``may_help()``, this process polygonizes the next block that no worker has (up to
    :data:`MAX_BLOCKS_AHEAD` blocks held). ``helper``: skeletons are asked of the helper
    process (blocks polygonized here only)."""
    pixels = sum(w.width * w.height for w in windows)
    workers = polygonizing_workers(settings.workers, pixels, len(windows))
    shape = (windows[-1].row_off + windows[-1].height, windows[-1].col_off + windows[-1].width)
    # datasets of this call only: callers may run in several threads
    with rasterio.open(mask_path) as src, (
            rasterio.open(probabilities) if probabilities is not None
            else contextlib.nullcontext()) as prob_src:
        if not workers:
            for window in windows:
                yield _block(src, prob_src, window, settings, shape, helper=helper)
                release_memory()
            return
        context = multiprocessing.get_context("spawn")   # no fork of a threaded process
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_open_sources,
                                 initargs=(mask_path,)) as pool:
            waiting = collections.deque(windows)
            slots: collections.deque[_Slot] = collections.deque()

            def feed() -> None:   # each worker busy, one block queued behind it
                while waiting and sum(not slot.here for slot in slots) < 2 * workers:
                    window = waiting.popleft()
                    slots.append(_Slot(window, pool.submit(_worker_shapes, window, settings)))

            feed()
            while slots and waiting:
                head = slots[0]
                if not head.ready() and len(slots) < MAX_BLOCKS_AHEAD and may_help():
                    window = waiting.popleft()   # the next block no worker has: done here
                    slots.append(_Slot(window, None, _block(src, prob_src, window, settings,
                                                            shape)))
                    continue
                slots.popleft()
                yield head.finished(src, prob_src, settings, shape)
                release_memory()
                feed()
            for slot in slots:
                slot.wait()
        # the processes are gone before the last blocks are joined: features spanning the
        # raster complete there, the peak of this process's memory
        while slots:
            yield slots.popleft().finished(src, prob_src, settings, shape)


class _Slot:
    """A block on its way: polygonized by a worker process (``future``), or by this one
    (``block``)."""

    def __init__(self, window: Window, future: Future | None,
                 block: _Block | None = None) -> None:
        self.window, self.future, self.block = window, future, block
        self.here = future is None
        self.found: _Shapes | None = None

    def ready(self) -> bool:
        return self.here or (self.future is not None and self.future.done())

    def wait(self) -> None:
        if self.future is not None and self.found is None:
            self.found = self.future.result()

    def finished(self, src, prob_src, settings: PixelSettings, shape: tuple[int, int],
                 ) -> _Block | None:
        if self.here:
            return self.block
        self.wait()
        if self.found is None:   # an empty block
            return None
        return _block(src, prob_src, self.window, settings, shape, self.found)


_sources: dict[str, rasterio.DatasetReader] = {}   # of a worker process


def _open_sources(mask_path) -> None:
    """Open the mask once per worker process, with a small GDAL cache."""
    rasterio.env.set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_MB)
    _sources["mask"] = rasterio.open(mask_path)


def _worker_shapes(window: Window, settings: PixelSettings) -> _Shapes | None:
    """GDAL's polygons of one block (:func:`_shapes`), valid, in a worker process."""
    try:
        values, keep = _class_pixels(_sources["mask"], window, settings.classes)
        if not keep.any():
            return None
        found = _shapes(values, keep, window, settings.connectivity)
        if _needs_repair(settings.connectivity):   # labelled twice, but beside the merge
            labels, _ = _labels(values, keep, settings.connectivity, found.ids)
            label, piece = _polygon_labels(found, labels, window, _sources["mask"].name)
            found.polygons = _repaired(found.polygons, labels, label, piece,
                                       (window.col_off, window.row_off))
        found.valid = True
        return found
    finally:
        release_memory()


def _needs_repair(connectivity: int) -> bool:
    """Whether GDAL's polygons may have rings touching at corners (see :func:`_repaired`)."""
    return connectivity == 8 or not GDAL_VALID_4


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc only; a no-op elsewhere).

    GDAL's polygons reach Python as GeoJSON: millions of small tuples per block, freed in
    an order that leaves the heap fragmented, which glibc keeps unless asked."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):   # not glibc
        return None


_LIBC = _libc()


def _read(src, window: Window, band: int = 1) -> np.ndarray:
    """One band of ``window``; a read error named in one line (worker processes do not
    carry GDAL's cause)."""
    try:
        return src.read(band, window=window)
    except RasterioError as exc:
        raise InputError(f"{src.name}: cannot read pixels {window.col_off},{window.row_off} "
                         f"+{window.width}x{window.height}; the file looks truncated or corrupt "
                         f"(GDAL: {first_line(exc)})") from exc


def _class_pixels(src, window: Window, classes: tuple[int, ...] | None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(class ids as GDAL's polygonizer takes them, pixels to polygonize) of ``window``:
    not nodata, not 0, of ``classes``."""
    values = _read(src, window)
    try:
        keep = src.read_masks(1, window=window) > 0
    except RasterioError as exc:
        raise InputError(f"{src.name}: cannot read the valid-pixel mask of {window}; the file "
                         f"looks truncated or corrupt (GDAL: {first_line(exc)})") from exc
    if values.dtype.kind == "f":
        keep &= np.isfinite(values)
    if values.dtype.name not in POLYGONIZE_DTYPES:
        kept = values[keep & (values != 0)]
        if kept.size and (kept.min() < CLASS_ID_RANGE[0] or kept.max() > CLASS_ID_RANGE[1]):
            bad = kept.max() if kept.max() > CLASS_ID_RANGE[1] else kept.min()
            raise InputError(f"{src.name}: holds the value {bad:.15g}, beyond the class ids a "
                             f"vector layer holds ({CLASS_ID_RANGE[0]} to {CLASS_ID_RANGE[1]}); "
                             "give a class mask (small whole numbers per class) or set that "
                             "value as the raster's nodata")
        fraction = fraction_in(kept) if values.dtype.kind == "f" else None
        if fraction is not None:
            raise InputError(f"{src.name}: holds the value {fraction:.6g}, not a class id; "
                             "this looks like probabilities: vectorize the class mask "
                             "(predict -o), or threshold it first")
        values = np.where(keep, values, 0).astype(np.int32)
    keep &= values != 0
    if classes is not None:
        keep &= np.isin(values, classes)
    return values, keep


def _block(src, prob_src, window: Window, settings: PixelSettings, shape: tuple[int, int],
           found: _Shapes | None = None, helper: bool = False) -> _Block | None:
    """Polygonize (unless a worker process ``found`` the polygons) and label one block (see
    the module docstring); ``helper``: its skeletons are asked of the helper process before
    it is polygonized."""
    values, keep = _class_pixels(src, window, settings.classes)
    if not keep.any():
        return None
    x0, y0 = window.col_off, window.row_off
    height, width = shape
    inner = _inner_sides(window, shape)
    labels, classes = _labels(values, keep, settings.connectivity,
                              found.ids if found is not None else None)
    skeletons = _block_skeletons(labels, classes, inner, settings, (x0, y0), helper)
    if found is None:
        found = _shapes(values, keep, window, settings.connectivity)
    del keep
    classes_along = {side: _side(values, side).copy() for side in inner if inner[side]}
    del values
    polygons, ids, top_left = found.polygons, found.ids, found.top_left
    label, piece = _polygon_labels(found, labels, window, src.name)
    if not found.valid and _needs_repair(settings.connectivity):
        polygons = _repaired(polygons, labels, label, piece, (x0, y0))
    pixels = np.bincount(labels.ravel(), minlength=len(label) + 1)[label]
    sides = {side: (piece[_side(labels, side)], along)
             for side, along in classes_along.items()}
    on_edge = np.zeros(len(label), bool)
    for index, _ in sides.values():
        on_edge[index[index >= 0]] = True
    seeds = (top_left[:, 1] * width + top_left[:, 0]).astype(np.int64)
    branches = np.full(len(label), None, dtype=object)
    for i, lab in enumerate(label):
        branches[i] = skeletons.get(int(lab))
    pieces = Pieces(ids, polygons, *_score_sums(prob_src, window, labels, label, ids),
                    pixels, seeds, branches)
    return _Block(pieces, on_edge, sides)


def _inner_sides(window: Window, shape: tuple[int, int]) -> dict[str, bool]:
    """Which sides of ``window`` lie inside a raster of ``shape`` (rows, columns)."""
    x0, y0 = window.col_off, window.row_off
    return {"top": y0 > 0, "bottom": y0 + window.height < shape[0], "left": x0 > 0,
            "right": x0 + window.width < shape[1]}


def _polygon_labels(found: _Shapes, labels: np.ndarray, window: Window, name: str,
                ) -> tuple[np.ndarray, np.ndarray]:
    """(the label of each polygon's component, the polygon index of each label; -1: none),
    found at each polygon's top-left pixel."""
    x0, y0 = window.col_off, window.row_off
    label = labels[found.top_left[:, 1] - y0, found.top_left[:, 0] - x0]
    if not np.array_equal(np.sort(label), np.arange(1, len(label) + 1)):
        raise RuntimeError(f"{name}: the polygons of block {window} do not match its "
                           "connected components")
    piece = np.full(len(label) + 1, -1, np.int64)   # label -> polygon index
    piece[label] = np.arange(len(label))
    return label, piece


def _side(array: np.ndarray, side: str) -> np.ndarray:
    """The pixels of ``array`` along one side of it."""
    return {"top": array[0], "bottom": array[-1], "left": array[:, 0],
            "right": array[:, -1]}[side]


def _labels(values: np.ndarray, keep: np.ndarray, connectivity: int,
            ids: np.ndarray | None = None) -> tuple[np.ndarray, dict[int, range]]:
    """(connected components of equal class, 0 where not kept, with the connectivity of
    GDAL's polygonizer, which finds one polygon per component; the labels of each class, a
    range). 16 bits hold the labels of most blocks, else 32. ``ids``: the class of each of
    GDAL's polygons, when known (saves finding the classes)."""
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    if ids is not None:
        classes = np.unique(ids)
    elif values.dtype in (np.uint8, np.uint16):
        classes = np.flatnonzero(np.bincount(values[keep]))
    else:
        classes = np.unique(values[keep])
    pixels = np.empty(values.shape, bool)
    for dtype in (np.uint16, np.int32):
        limit = np.iinfo(dtype).max
        labels = np.zeros(values.shape, dtype)
        ranges: dict[int, range] = {}
        count = 0
        for class_id in classes:   # few: a mask has a handful of classes
            component = np.zeros(values.shape, dtype) if count else labels
            np.equal(values, class_id, out=pixels)
            pixels &= keep
            try:
                found_here = ndimage.label(pixels, structure, output=component)
            except RuntimeError:   # more components than the type holds
                break
            if count + found_here > limit:
                break
            if count:
                component[component > 0] += dtype(count)
                labels += component   # the classes' pixels do not overlap
            ranges[int(class_id)] = range(count + 1, count + found_here + 1)
            count += found_here
        else:
            return labels, ranges
    raise RuntimeError("more connected components in a block than 32-bit labels hold")


def _shapes(values: np.ndarray, keep: np.ndarray, window: Window, connectivity: int,
            ) -> _Shapes:
    """GDAL's polygons of one block (pixel corners of the raster), their class ids and the
    top-left corner of each (that of its first pixel in raster order)."""
    offset = rasterio.Affine.translation(window.col_off, window.row_off)
    parts: list[np.ndarray] = []
    corners: list[np.ndarray] = []
    ids: list[int] = []
    chunk: list[dict] = []
    for geometry, value in features.shapes(values, mask=keep, transform=offset,
                                           connectivity=connectivity):
        chunk.append(geometry)
        ids.append(value)
        if len(chunk) == SHAPES_CHUNK:
            parts.append(_polygons(chunk, corners))
            chunk = []
    if chunk:
        parts.append(_polygons(chunk, corners))
    return _Shapes(np.concatenate(parts), np.array(ids, dtype=np.int64),
                   np.concatenate(corners).astype(np.int64))


def _polygons(geojson: list[dict], corners: list[np.ndarray]) -> np.ndarray:
    """GeoJSON polygon dicts to an array of shapely Polygons, built in one vectorized call;
    appends to ``corners`` the top-left corner of each (its exterior's top row, leftmost)."""
    rings_ = [ring for g in geojson for ring in g["coordinates"]]
    coords = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(rings_)),
                         np.float64).reshape(-1, 2)
    ring_ends = np.concatenate([[0], np.cumsum([len(r) for r in rings_])])
    polygon_ends = np.concatenate([[0], np.cumsum([len(g["coordinates"]) for g in geojson])])
    start = ring_ends[polygon_ends[:-1]]   # each exterior's first vertex
    lengths = ring_ends[polygon_ends[:-1] + 1] - start
    owner = np.repeat(np.arange(len(geojson)), lengths)
    vertex = np.arange(lengths.sum()) + np.repeat(start - (np.cumsum(lengths) - lengths),
                                                  lengths)   # the exteriors' vertices
    order = np.lexsort((coords[vertex, 0], coords[vertex, 1], owner))
    corners.append(coords[vertex[order[np.searchsorted(owner[order], np.arange(len(geojson)))]]])
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords,
                                     (ring_ends, polygon_ends))


def _repaired(polygons: np.ndarray, labels: np.ndarray, label: np.ndarray, piece: np.ndarray,
              origin: tuple[int, int]) -> np.ndarray:
    """Polygons whose rings touch at a corner rebuilt valid.

    A ring touches itself or another at a pixel corner exactly where two diagonal pixels of
    the component meet and the other two are not of it: found on the labels, not by testing
    every polygon's validity (slow on large ones). Small polygons are rebuilt by GEOS at once
    (a zero buffer: such rings touch but never cross, so it is exact; ``make_valid`` where
    the area would change); large ones by :func:`geounet.rings.repair`, linear in their
    vertices where a buffer of a 266,000-vertex road network took 9 s."""
    a, b, c, d = labels[:-1, :-1], labels[:-1, 1:], labels[1:, :-1], labels[1:, 1:]
    found = []
    for mine, other, side1, side2 in ((a, d, b, c), (b, c, a, d)):
        rows, cols = np.nonzero((mine == other) & (mine != 0) & (side1 != mine)
                                & (side2 != mine))
        found.append((mine[rows, cols], cols + 1 + origin[0], rows + 1 + origin[1]))
    owner, x, y = (np.concatenate(v) for v in zip(*found))
    if not len(owner):
        return polygons
    order = np.argsort(owner, kind="stable")
    owner, corners = owner[order], np.column_stack([x, y])[order]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    touching = piece[owner[starts]]
    small = shapely.get_num_coordinates(polygons[touching]) < LARGE_RING_VERTICES
    if small.any():
        index = touching[small]
        rebuilt = shapely.buffer(polygons[index], 0)
        changed = shapely.area(rebuilt) != shapely.area(polygons[index])
        rebuilt[changed] = shapely.make_valid(polygons[index[changed]], method="structure",
                                              keep_collapsed=False)
        polygons[index] = shapely.orient_polygons(rebuilt, exterior_cw=True)   # as GDAL's
    for k in np.flatnonzero(~small):
        start, end = starts[k], (starts[k + 1] if k + 1 < len(starts) else len(owner))
        polygons[touching[k]] = rings.repair(polygons[touching[k]], corners[start:end])
    return polygons


def _score_sums(prob_src, window: Window, labels: np.ndarray, label: np.ndarray,
                ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the valid probabilities over each polygon's pixels, how many are valid): of
    band 1 for a binary model, else of the band of each polygon's own class (band = class
    id + 1). Nodata and non-finite probabilities are not counted."""
    sums, scored = np.zeros(len(label)), np.zeros(len(label), np.int64)
    if prob_src is None:
        return sums, scored
    flat = labels.ravel()
    for class_id in ([None] if prob_src.count == 1 else np.unique(ids)):
        band = 1 if class_id is None else int(class_id) + 1
        if not 1 <= band <= prob_src.count:
            raise InputError(f"{prob_src.name}: has {prob_src.count} bands but the mask has "
                             f"class {class_id} (its probability is band {band}); give the "
                             "probabilities written with this mask")
        prob = _read(prob_src, window, band).ravel()
        valid = np.isfinite(prob)
        if prob_src.nodata is not None and not np.isnan(prob_src.nodata):
            valid &= prob != prob_src.nodata
        total = np.bincount(flat, np.where(valid, prob, 0.0), len(label) + 1)[label]
        count = np.bincount(flat, valid, len(label) + 1)[label]
        mine = slice(None) if class_id is None else ids == class_id
        sums[mine], scored[mine] = total[mine], count[mine]
    return sums, scored


def _block_skeletons(labels: np.ndarray, classes: dict[int, range], inner: dict[str, bool],
                     settings: PixelSettings, origin: tuple[int, int], helper: bool,
                     ) -> dict[int, _Part | None]:
    """The centerline branches of the complete features of skeletonized classes (those on
    an inner block edge get theirs once joined), by label, from their labelled pixels, all
    in one request."""
    wanted, patches, corners = _skeleton_patches(labels, classes, inner, settings, origin)
    return dict(zip(wanted, _ask_skeletons(patches, corners, settings.spur_px, helper)))


def _skeleton_patches(labels: np.ndarray, classes: dict[int, range], inner: dict[str, bool],
                      settings: PixelSettings, origin: tuple[int, int],
                      ) -> tuple[list[int], list[np.ndarray], list[tuple[int, int]]]:
    """(labels, pixels in their bounding boxes, top-left pixels of the boxes) of the
    complete features of skeletonized classes of a block (see :func:`_block_skeletons`)."""
    wanted = [lab for class_id, found in classes.items() if settings.skeletonized(class_id)
              for lab in found]
    if not wanted:
        return [], [], []
    on_edge = np.zeros(max(wanted) + 1, bool)
    for side in (side for side, is_inner in inner.items() if is_inner):
        along = _side(labels, side)
        on_edge[along[along <= max(wanted)]] = True
    wanted = [lab for lab in wanted if not on_edge[lab]]
    boxes = ndimage.find_objects(labels, max(wanted) if wanted else 0)
    boxes = [boxes[lab - 1] for lab in wanted]
    corners = [(cols.start + origin[0], rows.start + origin[1]) for rows, cols in boxes]
    patches = [labels[box] == lab for lab, box in zip(wanted, boxes)]
    return wanted, patches, corners


def _too_large(rows: int, cols: int) -> bool:
    """Whether a feature's bounding box is too large for a centerline (says so)."""
    if rows * cols <= MAX_CENTERLINE_PATCH_PX:
        return False
    log.warning("a feature spans %dx%d px: too large for a centerline (limit %d px); its "
                "length and width are left empty", cols, rows, MAX_CENTERLINE_PATCH_PX)
    return True


# -- joining pieces across block edges ---------------------------------------------------
class _Joiner:
    """Pieces on inner block edges, grouped into features by pixel contacts across the
    edges, and joined once a feature is complete (see the module docstring)."""

    def __init__(self, mask_path, settings: PixelSettings, width: int, height: int,
                 helper: bool = False) -> None:
        self.mask_path, self.settings, self.helper = mask_path, settings, helper
        self.width, self.height = width, height
        self.diagonal = settings.connectivity == 8
        self.pending: list[Pieces] = []
        self.gids: list[np.ndarray] = []    # a global id per pending piece
        self.groups = np.zeros(0, np.int64)   # feature of each earlier pending piece
        self.next_gid = 0
        self.pairs: list[np.ndarray] = []   # (gid, gid) in contact, found in this row
        self.above = self._line()           # the last pixel row of the row of blocks above
        self.below = self._line()           # the last pixel row of this row of blocks
        self.left: tuple[np.ndarray, np.ndarray] | None = None   # right side, block before
        self.src = None

    def holds_little(self) -> bool:
        """Whether the open features are small (under :data:`HELP_MAX_OPEN_VERTICES`): then
        this process may polygonize a block itself. A feature spanning the raster, where this
        process's memory peaks, stops it."""
        return sum(int(shapely.get_num_coordinates(p.polygons).sum())
                   for p in self.pending) < HELP_MAX_OPEN_VERTICES

    def _line(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(self.width, -1, np.int64), np.zeros(self.width, np.int32)

    def add(self, window: Window, block: _Block | None) -> None:
        """Record the pieces of ``block`` on inner edges and their contacts with the blocks
        above and to the left."""
        x0, w = window.col_off, window.width
        if block is None:
            self.left = None
            return
        gid = np.full(len(block.pieces) + 1, -1, np.int64)   # index -1 -> gid -1
        edge = np.flatnonzero(block.on_edge)
        gid[edge] = self.next_gid + np.arange(len(edge))
        self.next_gid += len(edge)
        self.pending.append(block.pieces.take(edge))
        self.gids.append(gid[edge])
        sides = {k: (gid[index], value) for k, (index, value) in block.sides.items()}
        if "top" in sides:
            self._contacts(sides["top"], self.above, x0)
        if "left" in sides and self.left is not None:
            self._contacts(sides["left"], self.left, 0)
        self.left = sides.get("right")
        if "bottom" in sides:
            self.below[0][x0:x0 + w], self.below[1][x0:x0 + w] = sides["bottom"]

    def _contacts(self, side: tuple[np.ndarray, np.ndarray],
                  line: tuple[np.ndarray, np.ndarray], start: int) -> None:
        """Pairs of pieces of one class with pixels next to each other across an edge:
        ``side[k]`` faces ``line[start + k]`` (and its neighbours with 8-connectivity)."""
        (gid, value), (other, other_value) = side, line
        k = np.flatnonzero(gid >= 0)
        for shift in (-1, 0, 1) if self.diagonal else (0,):
            j = k + start + shift
            ok = (j >= 0) & (j < len(other))
            a, b = k[ok], j[ok]
            touch = (other[b] >= 0) & (other_value[b] == value[a])
            self.pairs.append(np.column_stack([gid[a[touch]], other[b[touch]]]))

    def row_done(self, bottom: int) -> Pieces:
        """The features complete after the row of blocks ending at pixel row ``bottom``."""
        self.left, self.above, self.below = None, self.below, self._line()
        pieces = Pieces.concat([_empty(), *self.pending])
        gids = np.concatenate([np.zeros(0, np.int64), *self.gids])
        n = len(gids)
        if not n:
            self.pairs = []
            return pieces
        sorter = np.argsort(gids)
        pairs = np.concatenate(self.pairs or [np.zeros((0, 2), np.int64)])
        pairs = sorter[np.searchsorted(gids, pairs, sorter=sorter)]   # gid -> position
        earlier = np.flatnonzero(self.groups[1:] == self.groups[:-1])   # same feature before
        links = np.concatenate([pairs, np.column_stack([earlier, earlier + 1])])
        feature = _components(n, links[:, 0], links[:, 1])
        open_ = np.zeros(feature.max() + 1, bool)
        if bottom < self.height:
            open_[feature[np.isin(gids, self.above[0])]] = True
        still = open_[feature]
        order = np.argsort(feature[still], kind="stable")   # members of a feature together
        self.pending = [pieces.take(np.flatnonzero(still)[order])]
        self.gids = [gids[still][order]]
        self.groups = feature[still][order]
        self.pairs = []
        return self._joined(pieces.take(~still), feature[~still])

    def _joined(self, pieces: Pieces, feature: np.ndarray) -> Pieces:
        """One feature per value of ``feature``: pieces stitched, sums added."""
        if not len(pieces):
            return _empty()
        order = np.argsort(feature, kind="stable")
        pieces, feature = pieces.take(order), feature[order]
        starts = np.flatnonzero(np.r_[True, feature[1:] != feature[:-1]])
        polygons = np.empty(len(starts), dtype=object)
        skeletonized, patches, corners = [], [], []
        for k, (start, end) in enumerate(zip(starts, np.r_[starts[1:], len(feature)])):
            if end - start == 1:
                polygons[k] = pieces.polygons[start]
            else:
                polygons[k] = rings.stitch(pieces.polygons[start:end],
                                           self.settings.block_size, self.width, self.height)
            class_id = int(pieces.ids[start])
            if self.settings.skeletonized(class_id):
                found = self._pixels(polygons[k], class_id, int(pieces.seeds[start:end].min()))
                if found is not None:
                    skeletonized.append(k)
                    patches.append(found[0])
                    corners.append(found[1])
        branches = np.full(len(starts), None, dtype=object)
        for k, part in zip(skeletonized, _ask_skeletons(patches, corners,
                                                        self.settings.spur_px, self.helper)):
            branches[k] = part
        return Pieces(pieces.ids[starts], polygons, np.add.reduceat(pieces.score_sum, starts),
                      np.add.reduceat(pieces.scored, starts),
                      np.add.reduceat(pieces.pixels, starts),
                      np.minimum.reduceat(pieces.seeds, starts), branches)

    def _pixels(self, polygon, class_id: int, seed: int,
                ) -> tuple[np.ndarray, tuple[int, int]] | None:
        """(the pixels of a joined feature in its bounding box, read back from the mask: the
        component of its class around its first pixel; the box's top-left pixel); None for
        a feature too large for a skeleton."""
        x0, y0, x1, y1 = (int(v) for v in shapely.bounds(polygon))
        if _too_large(y1 - y0, x1 - x0):
            return None
        window = Window(x0, y0, x1 - x0, y1 - y0)
        if self.src is None:
            self.src = rasterio.open(self.mask_path)
        values, keep = _class_pixels(self.src, window, self.settings.classes)
        structure = ndimage.generate_binary_structure(2, 2 if self.diagonal else 1)
        component, _ = ndimage.label(keep & (values == class_id), structure)
        row, col = divmod(seed, self.width)
        return component == component[row - y0, col - x0], (x0, y0)

    def close(self) -> None:
        if self.src is not None:
            self.src.close()


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes joined by the edges ``a[k]``-``b[k]``: a dense
    label per node (hooking roots onto smaller roots, then path halving, until no edge
    joins two roots)."""
    parent = np.arange(n)
    while True:
        while True:   # every node points to its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        low, high = np.minimum(parent[a], parent[b]), np.maximum(parent[a], parent[b])
        joins = low != high
        if not joins.any():
            return np.unique(parent, return_inverse=True)[1]
        np.minimum.at(parent, high[joins], low[joins])


def _empty() -> Pieces:
    return Pieces(np.zeros(0, np.int64), np.empty(0, dtype=object), np.zeros(0),
                  np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                  np.empty(0, dtype=object))


if __name__ == "__main__":   # the skeleton helper process (geounet.processes)
    serve(first_block_request)
