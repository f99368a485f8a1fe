"""Streaming tiled inference: GeoTIFF in, class mask and/or probabilities GeoTIFF out.

The raster is covered by the global tile grid of :mod:`geounet.tiling` and processed block by
block in row-major order. A background thread reads and normalizes the next block while the
model runs on the current one, and another blends and writes the previous one. Each tile's
probabilities are weighted by a blend window (:mod:`geounet.blend`) and summed, with the
weights, into the block's accumulator. When a block is done, its ``output`` region is final:
it is divided by the weights, thresholded, and written. The parts of the accumulator that
later blocks still add to are carried forward: to the right within the block row, and down in
a strip of the overlap's height across the raster's width. Peak memory is therefore set by
tile, batch and block size (plus a ``overlap x width`` strip), not by the raster's size.

A run can be limited to a ``region`` of block rows of the global grid: it computes the tiles
of those block rows plus the halo tiles of earlier block rows that reach into them (in the
same blocks and batches as a whole-raster run, so every pixel sums the same contributions in
the same order) and writes a raster of just the pixel rows the region completes. Regions that
partition the block rows, computed anywhere and stacked, equal the whole-raster run bit for bit.

Nodata travels: pixels that are nodata or not finite in any input band are written as nodata
(255 in the mask, NaN in probabilities), and tiles with no valid pixel are never computed.

With ``tta`` (test-time augmentation), each tile is run in its 8 orientations (4 quarter turns,
each also mirrored), every output is turned back, and the 8 probability maps are averaged
before blending: about 8x the model time, same memory, usually cleaner roads and fewer
isolated false detections on imagery whose content has no preferred orientation.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import rasterio
import torch
from rasterio import Affine
from rasterio.errors import RasterioError
from rasterio.windows import Window
from tqdm import tqdm

from geounet.blend import axis_overlaps, resolve_window, tile_weights
from geounet.checkpoint import ModelMetadata
from geounet.engines import Forward, OnnxModel, prepare
from geounet.errors import ConfigError, InputError
from geounet.geotiff import MASK_NODATA, describe, finish, open_output
from geounet.io import RasterInfo, normalize, open_raster, read_masked, select_bands
from geounet.model import UNet, resolve_device
from geounet.outputs import atomic_outputs, check_outputs, first_line
from geounet.settings import CallSettings, PredictSettings
from geounet.tiling import Block, Tile, TileGrid

log = logging.getLogger(__name__)

GDAL_CACHE_MB = 32


class PredictConfig(PredictSettings, CallSettings):
    """Inference settings (:class:`geounet.settings.PredictSettings`: tiling, blending,
    bands, device, engine, threads, tta) and the options of one call.

    Attributes:
        cog: write Cloud-Optimized GeoTIFFs with overviews.
        overwrite: replace existing outputs.
        progress: show a progress bar on stderr.
        region: ``(first, stop)`` block rows of the global grid to compute; the outputs then
            hold only the pixel rows these block rows complete (see the module docstring and
            :func:`block_row_extents`).
    """

    cog: bool = False
    overwrite: bool = False
    progress: bool = True
    region: tuple[int, int] | None = None


def block_row_extents(grid: TileGrid, block_tiles: int) -> list[tuple[int, int, int]]:
    """Per block row of ``grid``: (first output row, end output row, end of its tiles' rows).

    Output extents partition the raster's rows; the third value tells how far down the
    block row's tiles reach, i.e. which later rows they add to (their halo).
    """
    column = replace(grid, width=grid.tile_width)  # rows do not depend on the width
    return [(b.output.row_off, b.output.row_off + b.output.height,
             b.window.row_off + b.window.height) for b in column.blocks(block_tiles)]


@dataclass
class PredictResult:
    """What a prediction run did (for summaries and reports)."""

    input: Path
    mask: Path | None
    probabilities: Path | None
    width: int
    height: int
    tiles: int
    tiles_skipped: int
    device: str
    seconds: float
    class_pixels: dict[str, int] = field(default_factory=dict)
    engine: str = "torch"


def predict_raster(
    input_path: str | Path,
    model: str | Path | tuple[UNet, ModelMetadata] | OnnxModel,
    mask_path: str | Path | None = None,
    probabilities_path: str | Path | None = None,
    config: PredictConfig | None = None,
) -> PredictResult:
    """Segment ``input_path`` with a U-Net; write a class mask and/or probabilities.

    Args:
        input_path: GeoTIFF (or any GDAL raster) of any size, band count and numeric dtype.
        model: checkpoint or exported ``.onnx`` path, or a model loaded by
            :func:`geounet.engines.load_model`.
        mask_path: uint8 class mask output (nodata 255), same grid, CRS and transform.
        probabilities_path: float32 output (nodata NaN): the foreground probability for a
            binary model, one band per class otherwise.
        config: inference settings.
    """
    config = config or PredictConfig()
    if mask_path is None and probabilities_path is None:
        raise ConfigError("nothing to write: give a mask output and/or a probabilities output")
    mask_path = Path(mask_path) if mask_path is not None else None
    probabilities_path = Path(probabilities_path) if probabilities_path is not None else None
    info = open_raster(input_path)
    inputs = [input_path, model] if isinstance(model, (str, Path)) else [input_path]
    check_outputs([mask_path, probabilities_path], inputs, config.overwrite)

    device = resolve_device(config.device)
    prepared = prepare(model, config.engine, device, config.threads, config.amp,
                       config.tile_size)
    meta = prepared.meta
    if meta.arch.classes >= MASK_NODATA:
        raise ConfigError(f"the uint8 mask holds at most {MASK_NODATA - 1} classes (255 is "
                          f"nodata); this model has {meta.arch.classes}")
    bands = select_bands(info, meta.bands, config.bands)
    tile = config.tile_size or meta.tile_size
    overlap = meta.overlap if config.overlap is None else config.overlap
    grid = TileGrid(info.height, info.width, tile, overlap)
    if config.batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {config.batch_size}")
    if config.threads:
        torch.set_num_threads(config.threads)
    threshold = meta.threshold if config.threshold is None else config.threshold
    log.info(
        "%s: %dx%d px, %d tiles of %dx%d (overlap %d, %.2fx compute), bands %s, device %s, "
        "engine %s", info.path, info.width, info.height, grid.tile_count, grid.tile_height,
        grid.tile_width, overlap, grid.compute_overhead, bands, device, prepared.engine,
    )

    start = time.perf_counter()
    engine = _Engine(prepared.forward, meta, info, bands, grid, config, device, threshold)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        engine.run(mask_path, probabilities_path)
    return PredictResult(
        input=info.path, mask=mask_path, probabilities=probabilities_path,
        width=info.width, height=engine.out_info.height,
        tiles=engine.tile_total,
        tiles_skipped=engine.tiles_skipped, device=str(device),
        seconds=time.perf_counter() - start,
        class_pixels=dict(zip(engine.class_names, engine.class_pixels.tolist())),
        engine=prepared.engine,
    )


@dataclass
class _TileResult:
    """A tile of a block, its place in the block (rows, cols) and its probabilities
    (C, H, W; None: not run: ``empty``, without a valid pixel, or a halo tile adding nothing
    to a region's rows)."""

    tile: Tile
    r0: int
    c0: int
    empty: bool
    prob: np.ndarray | None = None


class _Engine:
    """State of one streaming run: forward pass, grid, carried accumulators, open outputs."""

    def __init__(self, forward: Forward, meta: ModelMetadata, info: RasterInfo,
                 bands: Sequence[int], grid: TileGrid, config: PredictConfig,
                 device: torch.device, threshold: float):
        self.forward, self.meta, self.info, self.bands = forward, meta, info, tuple(bands)
        self.grid, self.config, self.device, self.threshold = grid, config, device, threshold
        self.channels = meta.arch.classes
        self.profile = resolve_window(config.window)
        self.row_overlaps = axis_overlaps(grid.row_starts, grid.tile_height)
        self.col_overlaps = axis_overlaps(grid.col_starts, grid.tile_width)
        self.class_names = list(meta.class_names)
        self.class_pixels = np.zeros(len(self.class_names), dtype=np.int64)
        self.tiles_skipped = 0
        self.out_info = info
        self.block_rows, self.first_row, self.out_rows = range(10**9), 0, (0, info.height)
        if config.region is not None:
            self._limit_to_region(config.region)
        self.tile_total = grid.tile_count if config.region is None else self._region_tiles()

    def _limit_to_region(self, region: tuple[int, int]) -> None:
        """Compute block rows ``region`` and the earlier ones whose tiles reach into them."""
        extents = block_row_extents(self.grid, self.config.block_tiles)
        first, stop = region
        if not 0 <= first < stop <= len(extents):
            raise ConfigError(f"region {region} is outside the {len(extents)} block rows")
        top, bottom = extents[first][0], extents[stop - 1][1]
        start = first
        while start > 0 and extents[start - 1][2] > top:
            start -= 1
        self.block_rows, self.first_row, self.out_rows = range(start, stop), first, (top, bottom)
        self.out_info = replace(self.info, height=bottom - top, gcps=((), None),
                                transform=self.info.transform @ Affine.translation(0, top))

    # -- the block loop ---------------------------------------------------------------
    def run(self, mask_path: Path | None, prob_path: Path | None) -> None:
        with atomic_outputs([mask_path, prob_path]) as (mask_tmp, prob_tmp):
            with contextlib.ExitStack() as stack:
                mask_dst = self._open_output(stack, mask_tmp, 1, "uint8", MASK_NODATA)
                prob_bands = 1 if self.channels == 1 else self.channels
                prob_dst = self._open_output(stack, prob_tmp, prob_bands, "float32",
                                             float("nan"))
                self._describe(mask_dst, prob_dst)
                bar = stack.enter_context(tqdm(
                    total=self.tile_total, unit="tile", disable=not self.config.progress,
                    file=sys.stderr, desc=self.info.path.name, dynamic_ncols=True,
                    leave=False,
                ))
                self._stream(mask_dst, prob_dst, bar)
            # A region is one part of a raster: the assembled whole is finished instead.
            if self.config.region is None:
                for tmp, kind in ((mask_tmp, "mask"), (prob_tmp, "prob")):
                    if tmp is not None:
                        finish(tmp, kind, self.config.cog)

    def _stream(self, mask_dst, prob_dst, bar: tqdm) -> None:
        """Three stages, one block apart: a thread reads and normalizes, this thread runs the
        forward pass, a thread blends and writes (so the engine's threads are busy while the
        previous block is blended and written). The forward pass stays in the main thread,
        where signals land: Ctrl-C stops it between two of its operations."""
        with contextlib.closing(_prefetch(self._read_blocks())) as read, \
                _consumed_in_background(
                    lambda items: self._consume(items, mask_dst, prob_dst, bar)) as write:
            for item in self._inferred(read):
                write(item)

    def _consume(self, prefetched: Iterator, mask_dst, prob_dst, bar: tqdm) -> None:
        """Accumulate each block, carry what later blocks add to, write what is final."""
        width = self.info.width
        incoming: tuple[int, np.ndarray] | None = None   # (first row, (C+1, rows, width))
        outgoing: tuple[int, np.ndarray] | None = None
        left: np.ndarray | None = None                   # (C+1, block rows, carried cols)
        current_row = -1
        for block, valid, tiles in prefetched:
            if block.row != current_row:
                current_row, incoming, outgoing, left = block.row, outgoing, None, None
            win = block.window
            acc = np.zeros((self.channels + 1, win.height, win.width), dtype=np.float32)
            if left is not None:
                acc[:, :, : left.shape[2]] += left
            if incoming is not None:
                first, strip = incoming
                rows = slice(0, first + strip.shape[1] - win.row_off)
                cols = slice(win.col_off, win.col_off + win.width)
                acc[:, rows] += strip[:, :, cols]
                strip[:, :, cols] = 0.0
            self._accumulate(tiles, acc, bar)
            out = block.output
            oy, ox = out.row_off - win.row_off, out.col_off - win.col_off
            done_rows, done_cols = oy + out.height, ox + out.width
            left = acc[:, :, done_cols:].copy() if done_cols < win.width else None
            if done_rows < win.height:
                if outgoing is None:
                    rows_left = win.height - done_rows
                    outgoing = (out.row_off + out.height,
                                np.zeros((self.channels + 1, rows_left, width), np.float32))
                cols = slice(win.col_off, win.col_off + done_cols)
                outgoing[1][:, :, cols] += acc[:, done_rows:, :done_cols]
            region = acc[:, oy:done_rows, ox:done_cols]
            self._write(out, region, valid[oy:done_rows, ox:done_cols], mask_dst, prob_dst)

    def _read_blocks(self) -> Iterator[tuple[Block, np.ndarray, np.ndarray]]:
        with rasterio.open(self.info.path) as src:
            for block in self._blocks():
                try:
                    data, valid = read_masked(src, self.bands, block.window)
                except RasterioError as exc:
                    w = block.window
                    raise InputError(
                        f"{self.info.path}: reading pixels ({w.col_off}, {w.row_off}) to "
                        f"({w.col_off + w.width}, {w.row_off + w.height}) failed; the file is "
                        f"probably truncated or corrupt ({first_line(exc)})"
                    ) from exc
                yield block, normalize(data, valid, self.meta.mean, self.meta.std), valid

    def _region_tiles(self) -> int:
        column = replace(self.grid, width=self.grid.tile_width)
        rows = [len(b.tiles) for b in column.blocks(self.config.block_tiles)]
        return sum(rows[k] for k in self.block_rows) * len(self.grid.col_starts)

    def _blocks(self) -> Iterator[Block]:
        return (b for b in self.grid.blocks(self.config.block_tiles) if b.row in self.block_rows)

    # -- model and blending -----------------------------------------------------------
    def _inferred(self, blocks: Iterator[tuple[Block, np.ndarray, np.ndarray]],
                  ) -> Iterator[tuple[Block, np.ndarray, list[_TileResult]]]:
        """(block, valid pixels, its tiles with their probabilities; None: not run, as a
        tile without a valid pixel or a halo tile adding nothing to a region's rows)."""
        size = self.config.batch_size
        top = self.out_rows[0]
        for block, data, valid in blocks:
            wy, wx = block.window.row_off, block.window.col_off
            results = []
            for tile in block.tiles:
                w = tile.window
                r0, c0 = w.row_off - wy, w.col_off - wx
                empty = not valid[r0:r0 + w.height, c0:c0 + w.width].any()
                results.append(_TileResult(tile, r0, c0, empty))
            todo = [t for t in results if not t.empty]
            for i in range(0, len(todo), size):
                batch = todo[i:i + size]
                if block.row < self.first_row and all(
                        t.tile.window.row_off + t.tile.window.height <= top for t in batch):
                    continue
                probs = self._infer(np.stack([
                    data[:, t.r0:t.r0 + t.tile.window.height, t.c0:t.c0 + t.tile.window.width]
                    for t in batch]))
                for t, prob in zip(batch, probs):
                    t.prob = prob
            del data
            yield block, valid, results

    def _accumulate(self, tiles: list[_TileResult], acc: np.ndarray, bar: tqdm) -> None:
        """Add each tile's probabilities, weighted by the blending window, and the weights."""
        for t in tiles:
            height, width = t.tile.window.height, t.tile.window.width
            self.tiles_skipped += t.empty
            if t.prob is not None:
                weights = tile_weights(self.profile, height, width,
                                       self.row_overlaps[t.tile.row],
                                       self.col_overlaps[t.tile.col])
                view = acc[:, t.r0:t.r0 + height, t.c0:t.c0 + width]
                view[:-1] += t.prob * weights
                view[-1] += weights
        bar.update(len(tiles))

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, C, H, W) of a batch of normalized tiles, by the engine's
        forward pass (all of it that depends on the engine)."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        with torch.inference_mode():
            if not self.config.tta:
                return self.forward(x).cpu().numpy()
            probs = cast(torch.Tensor, sum(
                undo_orientation(self.forward(orient(x, turns, mirror)), turns, mirror)
                for turns in range(4) for mirror in (False, True)))
        return (probs / 8).cpu().numpy()

    # -- output -----------------------------------------------------------------------
    def _open_output(self, stack, path: Path | None, count: int, dtype: str, nodata: float):
        if path is None:
            return None
        return open_output(stack, path, self.out_info, count, dtype, nodata)

    def _describe(self, mask_dst, prob_dst) -> None:
        source = str(self.meta.source.get("name", ""))
        if mask_dst is not None:
            describe(mask_dst, self.class_names, source, ["class"], self.meta.colors)
        if prob_dst is not None:
            names = self.class_names[1:] if self.channels == 1 else self.class_names
            describe(prob_dst, self.class_names, source, [f"probability {n}" for n in names],
                     self.meta.colors)

    def _write(self, window, region: np.ndarray, valid: np.ndarray, mask_dst, prob_dst) -> None:
        top, bottom = self.out_rows
        if (top, bottom) != (0, self.info.height):  # a region: keep its rows, shifted
            r0 = max(window.row_off, top)
            r1 = min(window.row_off + window.height, bottom)
            if r1 <= r0:
                return
            rows = slice(r0 - window.row_off, r1 - window.row_off)
            region, valid = region[:, rows], valid[rows]
            window = Window(window.col_off, r0 - top, window.width, r1 - r0)
        weight = region[-1]
        valid = valid & (weight > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            probs = region[:-1] / weight
        if self.channels == 1:
            classes = (probs[0] >= self.threshold).astype(np.uint8)
        else:
            classes = probs.argmax(axis=0).astype(np.uint8)
        classes[~valid] = MASK_NODATA
        self.class_pixels += np.bincount(classes[valid], minlength=len(self.class_names))[
            : len(self.class_names)
        ]
        if mask_dst is not None:
            mask_dst.write(classes, 1, window=window)
        if prob_dst is not None:
            probs[:, ~valid] = np.nan
            prob_dst.write(probs, window=window)


def orient(x: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """``x`` (N, C, H, W) mirrored left-right if ``mirror``, then turned ``turns`` quarter
    turns counter-clockwise."""
    return torch.rot90(torch.flip(x, (3,)) if mirror else x, turns, (2, 3))


def undo_orientation(y: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """The inverse of :func:`orient`: ``undo_orientation(orient(x, t, m), t, m) == x``."""
    y = torch.rot90(y, -turns, (2, 3))
    return torch.flip(y, (3,)) if mirror else y


@contextlib.contextmanager
def _consumed_in_background(consume: Callable[[Iterator], None],
                            ) -> Generator[Callable[[Any], None], None, None]:
    """Run ``consume`` in a background thread over the items handed to the function this
    yields, which waits while one item is queued besides the one being consumed.

    A failure of ``consume`` is raised by the next hand-over or at the end. When the block
    ends by an exception (Ctrl-C), ``consume`` stops after its current item and the thread is
    joined before the exception goes on (so the caller may close what ``consume`` writes to).
    """
    q: queue.Queue = queue.Queue(maxsize=1)
    done, cancel = object(), threading.Event()
    failures: list[BaseException] = []

    def items() -> Iterator:
        while not cancel.is_set():
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is done:
                return
            yield item
            del item

    def run() -> None:
        try:
            consume(items())
        except BaseException as exc:  # handed to the producer, raised there
            failures.append(exc)

    def hand_over(item: Any) -> None:
        while not failures:
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise failures[0]

    thread = threading.Thread(target=run, name="geounet-writer", daemon=True)
    thread.start()
    try:
        yield hand_over
        hand_over(done)
    except BaseException:
        cancel.set()
        raise
    finally:
        thread.join()
    if failures:
        raise failures[0]


def _prefetch(items: Iterator, depth: int = 1) -> Generator[Any, None, None]:
    """Run ``items`` in a background thread, at most ``depth`` items ahead of the consumer.

    An item counts as held until the consumer asks for the next one, so at most
    ``depth + 1`` items (the current one and those read ahead) exist at any time.
    """
    q: queue.Queue = queue.Queue()
    slots = threading.Semaphore(depth + 1)  # the current item plus those read ahead
    stop = threading.Event()
    done = object()

    def produce() -> None:
        iterator = iter(items)
        try:
            while True:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                item = next(iterator, done)
                q.put(item)
                if item is done:
                    return
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put(exc)
        finally:  # close the source here, in its own thread (it may hold open datasets)
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="geounet-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            del item  # drop the finished item before the next is read
            slots.release()
    finally:
        stop.set()
        thread.join(timeout=5)
