"""Running workflow items on a Dask cluster (``executor: dask``).

Each input file is one task (:func:`geounet.runner.attempt_item`), so a batch spreads over the
workers. A raster of at least ``executor.split_min_pixels`` pixels is instead split into row
regions of the global tile grid (``executor.region_block_rows`` block rows each): every region
is a task that computes its tiles plus the halo tiles it shares with the region above (see
:mod:`geounet.predict`) and writes its rows to a hidden temporary GeoTIFF; one final task
stacks the regions into the output, atomically, and vectorizes it. No two tasks ever write the
same file, so there are no races, and the result equals a whole-raster run bit for bit.

Workers run one task at a time with ``workflow.threads`` torch threads (1 by default; GDAL
compresses outputs with as many), so ``workers x threads`` never oversubscribes the cores, and
results are reproducible: torch's CPU kernels give bit-identical results only at equal thread
counts. Each worker also gets glibc's malloc heuristics back (:func:`restore_malloc_heuristics`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import rasterio
from rasterio.windows import Window

from geounet.errors import ConfigError, GeoUNetError
from geounet.geotiff import MODEL_SOURCE_TAG, describe, finish, open_output, read_class_names
from geounet.io import open_raster
from geounet.outputs import atomic_path, temporary_sibling
from geounet.runner import (
    PERMANENT,
    Item,
    ItemResult,
    attempt_item,
    cached_model,
    failure_reason,
    finish_item,
    predict_config,
    remove_stale_temporaries,
)
from geounet.workflow import Workflow

log = logging.getLogger(__name__)
COPY_ROWS = 512   # rows copied at a time when stacking regions
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # mallopt parameters of glibc's malloc.h


def prepare_worker(threads: int) -> None:
    """Set up a (worker) process: torch's CPU threads, GDAL's compression threads, and
    glibc's malloc heuristics (see :func:`restore_malloc_heuristics`)."""
    import rasterio
    import torch

    torch.set_num_threads(threads)
    rasterio.env.set_gdal_config("GDAL_NUM_THREADS", str(threads))
    restore_malloc_heuristics()


def restore_malloc_heuristics() -> bool:
    """Let glibc reuse freed array memory again in a process started with
    ``MALLOC_TRIM_THRESHOLD_`` set (Dask's nanny sets 65536 by default).

    Setting that variable also fixes glibc's mmap threshold at 128 KiB, so every array over
    128 KiB (a 1024^2 float32 block is 4 MiB) is mmapped fresh and zero-filled by the kernel,
    then unmapped when freed: 25-30 % more CPU per item here, and more when two workers
    fault pages at once. This sets the limits glibc's own dynamic rule reaches (mmap above
    32 MiB, trim above 64 MiB free). Returns whether anything was changed (glibc only)."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and
                libc.mallopt(M_TRIM_THRESHOLD, 64 << 20))


@contextlib.contextmanager
def dask_executor(workflow: Workflow) -> Iterator:
    """Start (or connect to) a cluster; yield ``(items, workflow, model_sha256) -> results``."""
    from dask.distributed import Client, LocalCluster

    config = workflow.executor
    cluster = None
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # Dask's INFO chatter only with -vv
        logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        if config.scheduler:
            client = Client(config.scheduler, timeout="20s")
        else:
            cluster = LocalCluster(n_workers=config.workers, threads_per_worker=1,
                                   processes=config.processes, dashboard_address=None,
                                   silence_logs=logging.WARNING)
            client = Client(cluster)
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise ConfigError(f"executor.scheduler: cannot reach the Dask scheduler "
                          f"{config.scheduler or 'LocalCluster'} ({exc})") from None
    try:
        client.run(prepare_worker, workflow.threads)
        yield partial(_execute, client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _execute(client, items: list[Item], workflow: Workflow,
             model_sha256: str) -> Iterator[ItemResult]:
    """Submit every item (split ones as region tasks + an assembly task); yield results."""
    from dask.distributed import as_completed

    owners, futures, start = {}, [], time.perf_counter()
    for item in items:
        regions = split_regions(item, workflow)
        if len(regions) > 1:
            parts = [client.submit(predict_region, item, workflow, model_sha256, region,
                                   pure=False) for region in regions]
            future = client.submit(assemble_regions, item, workflow, parts, pure=False)
        else:
            future = client.submit(attempt_item, item, workflow, model_sha256, pure=False)
        owners[future.key] = item
        futures.append(future)
    for future in as_completed(futures):
        item = owners[future.key]
        try:
            yield future.result()
        except Exception as exc:  # a region that failed all its attempts
            remove_stale_temporaries([item])
            yield ItemResult(item.input, "failed", failure_reason(exc), 1 + workflow.retries,
                             time.perf_counter() - start, item.outputs, None)


def split_regions(item: Item, workflow: Workflow) -> list[tuple[int, int]]:
    """Block-row ranges of ``item`` to compute as separate tasks (one range: no split)."""
    from geounet.checkpoint import read_metadata
    from geounet.predict import block_row_extents
    from geounet.tiling import TileGrid

    threshold = workflow.executor.split_min_pixels
    if threshold is None:
        return [(0, 1)]
    try:
        info = open_raster(item.input)
    except GeoUNetError:  # not split: the item's own task reports the error
        return [(0, 1)]
    if info.width * info.height < threshold:
        return [(0, 1)]
    meta = read_metadata(workflow.model)
    tile = workflow.tiling.tile_size or meta.tile_size
    overlap = meta.overlap if workflow.tiling.overlap is None else workflow.tiling.overlap
    rows = len(block_row_extents(TileGrid(info.height, info.width, tile, overlap),
                                 workflow.tiling.block_tiles))
    step = workflow.executor.region_block_rows
    return [(k, min(k + step, rows)) for k in range(0, rows, step)]


def predict_region(item: Item, workflow: Workflow, model_sha256: str,
                   region: tuple[int, int]) -> tuple[Path, Path | None, float]:
    """Compute one row region into hidden temporary GeoTIFFs beside the outputs (retried).

    Returns the mask and probabilities parts and the seconds spent."""
    start = time.perf_counter()
    from geounet.predict import predict_raster

    anchor = item.outputs["mask"] or item.outputs["vector"] or item.outputs["probabilities"]
    for attempt in range(workflow.retries + 1):
        mask = temporary_sibling(anchor, ".tif")
        prob = (temporary_sibling(item.outputs["probabilities"])
                if item.outputs["probabilities"] else None)
        try:
            model = cached_model(workflow.model, model_sha256)
            predict_raster(item.input, model, mask, prob,
                           predict_config(workflow, region=region, cog=False))
            return mask, prob, time.perf_counter() - start
        except Exception as exc:
            for path in (mask, prob):
                if path is not None:
                    path.unlink(missing_ok=True)
            if isinstance(exc, PERMANENT) or attempt == workflow.retries:
                raise
            log.info("%s rows %s: attempt %d failed: %s", item.input, region, attempt + 1,
                     failure_reason(exc))
    raise AssertionError("unreachable")


def assemble_regions(item: Item, workflow: Workflow,
                     parts: list[tuple[Path, Path | None, float]]) -> ItemResult:
    """Stack region rasters into the item's outputs (atomically), then vectorize.

    The item's seconds are those of its region tasks plus this one's."""
    start = time.perf_counter()
    try:
        info = open_raster(item.input)
        masks = [m for m, _, _ in parts]
        mask = item.outputs["mask"]
        with contextlib.ExitStack() as stack:
            if mask is None:   # only the vectors want it
                mask = temporary_sibling(item.outputs["vector"], ".tif")
                stack.callback(mask.unlink, missing_ok=True)
            stack_rows(masks, info, mask, "mask", workflow.outputs.cog)
            if item.outputs["probabilities"] is not None:
                stack_rows([p for _, p, _ in parts], info, item.outputs["probabilities"], "prob",
                           workflow.outputs.cog)
            summary = finish_item(item, workflow, mask)
        seconds = time.perf_counter() - start + sum(s for _, _, s in parts)
        return ItemResult(item.input, "done", None, 1, seconds, item.outputs, summary)
    finally:
        for mask_part, prob_part, _ in parts:
            for path in (mask_part, prob_part):
                if path is not None:
                    path.unlink(missing_ok=True)


def stack_rows(parts: list[Path], info, output: Path, kind: str, cog: bool) -> None:
    """Write the row regions ``parts`` (top to bottom) as one GeoTIFF on ``info``'s grid,
    described and finished as :mod:`geounet.predict` does a whole raster (same bytes)."""
    with rasterio.open(parts[0]) as first:
        count, dtype, nodata = first.count, first.dtypes[0], first.nodata
        names, source = read_class_names(first), first.tags().get(MODEL_SOURCE_TAG, "")
        descriptions = [d or "" for d in first.descriptions]
    with atomic_path(output) as tmp:
        with contextlib.ExitStack() as stack:
            dst = open_output(stack, tmp, info, count, dtype, nodata)
            describe(dst, names, source, descriptions)
            row = 0
            for part in parts:
                with rasterio.open(part) as src:
                    for r in range(0, src.height, COPY_ROWS):
                        h = min(COPY_ROWS, src.height - r)
                        data = src.read(window=Window(0, r, src.width, h))
                        dst.write(data, window=Window(0, row + r, src.width, h))
                    row += src.height
        if row != info.height:
            raise RuntimeError(f"regions cover {row} rows of {info.height}")
        finish(tmp, kind, cog)
