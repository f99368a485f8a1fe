"""Running workflow items on a Dask cluster (``executor: dask``).

Each input file is one task (:func:`run_item`: the item's pipeline,
:func:`geounet.workflow.pipeline.attempt_item`), so a batch spreads over the workers. A raster
of at least ``executor.split_min_pixels`` pixels is instead split into row regions of the
global tile grid (``executor.region_block_rows`` block rows each): every region is a task that
computes its tiles plus the halo tiles it shares with the region above (see
:mod:`geounet.predict`) and writes its rows to a hidden temporary GeoTIFF; one final task
stacks the regions into the output, atomically, and finishes the item as the pipeline does
(:func:`geounet.workflow.pipeline.finish_item`); region tasks follow its retry policy.
No two tasks ever write the same file, so there are no races, and the result equals a
whole-raster run byte for byte.

Tasks write only into this run's staging folder (:class:`Staging`); the run, which holds the
output folder's lock, moves an item's outputs into place and then records it. So a task that
outlives its run (``geounet run`` killed, the scheduler lost) never writes a final output, and
what it leaves is deleted by the next run. A task restarted after its worker died counts as
another attempt (:class:`Attempts`); an item the cluster lost is reported in one line.

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
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import CancelledError
from functools import partial
from pathlib import Path

import rasterio
from rasterio.windows import Window

from geounet.errors import ConfigError, GeoUNetError, OutputError
from geounet.geotiff import (
    MODEL_SOURCE_TAG,
    describe,
    finish,
    open_output,
    read_class_colors,
    read_class_names,
)
from geounet.io import open_raster
from geounet.outputs import atomic_path, rename_parts, temporary_sibling
from geounet.workflow.config import Workflow
from geounet.workflow.manifest import STAGING
from geounet.workflow.pipeline import (
    ItemResult,
    attempt_item,
    cached_model,
    failure_reason,
    finish_item,
    mask_for_vectors,
    predict_config,
    retry,
)
from geounet.workflow.plan import Item

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
    """Start (or connect to) a cluster; yield ``(items, workflow, model_sha256) -> results``.

    Dask's own log lines (reconnection attempts, with tracebacks) are silenced below ``-v``
    and shown at ``-v`` as warnings: the run reports each item a fault cost in one line."""
    from dask.distributed import Client, LocalCluster

    config = workflow.executor
    cluster = None
    root = logging.getLogger()
    dask_level = (logging.DEBUG if root.isEnabledFor(logging.DEBUG) else logging.WARNING
                  if root.isEnabledFor(logging.INFO) else logging.CRITICAL + 1)
    # Dask's logging config gives some loggers their own level and handler: set them all.
    dask_logs = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
                 if name.split(".")[0] == "distributed"]
    previous = [(logger, logger.level) for logger in dask_logs]
    for logger in dask_logs:
        if logger.level != logging.NOTSET or logger.name == "distributed":
            logger.setLevel(dask_level)
    try:
        try:
            if config.scheduler:
                client = Client(config.scheduler, timeout="20s")
            else:
                cluster = LocalCluster(n_workers=config.workers, threads_per_worker=1,
                                       processes=config.processes, dashboard_address=None,
                                       silence_logs=max(dask_level, logging.WARNING))
                client = Client(cluster)
        except (OSError, TimeoutError) as exc:
            if cluster is not None:
                cluster.close()
            raise ConfigError(f"executor.scheduler: cannot reach the Dask scheduler "
                              f"{config.scheduler or 'LocalCluster'} ({exc})") from None
        try:
            client.run(prepare_worker, workflow.threads)
            with Staging(workflow.outputs.folder) as staging:
                yield partial(_execute, client, staging)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    finally:
        for logger, level in previous:
            logger.setLevel(level)


class Staging:
    """This run's folder for the outputs Dask tasks write (``OUTPUTS/.geounet.staging/ID``).

    Workers write an item's outputs there under their final file names (a GeoPackage's
    layer is named after its file), and only this process, which holds the output folder's
    lock, renames them into place once the item's result is back, then records it. A task
    that outlives its run (the run was killed, the scheduler lost) can therefore only write
    into a staging folder, which the next run deletes before it starts (and this run when
    it ends); once deleted, such a task can write nothing at all, as no task makes folders.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.root = folder / STAGING / f"{os.getpid()}-{secrets.token_hex(4)}"

    def __enter__(self) -> Staging:
        self.root.mkdir(parents=True)
        return self

    def __exit__(self, *exc: object) -> None:
        # What failed or lost tasks left; a task still running on a lost cluster may add to
        # it afterwards: the next run removes the whole staging folder first.
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.parent.rmdir()

    def item(self, item: Item) -> Item:
        """``item`` with its outputs in the staging folder (folders made)."""
        outputs: dict[str, Path | None] = {}
        for kind, path in item.outputs.items():
            staged = None if path is None else self.root / path.relative_to(self.folder)
            if staged is not None:
                staged.parent.mkdir(parents=True, exist_ok=True)
            outputs[kind] = staged
        return Item(item.input, outputs)

    def commit(self, staged: Item, item: Item) -> None:
        """Rename every staged output of a finished item onto its final name."""
        for kind, final in item.outputs.items():
            source = staged.outputs[kind]
            if final is None or source is None:
                continue
            if not source.is_file():
                raise OutputError(f"{final}: the Dask task that wrote it reported success but "
                                  f"{source} is missing; is {self.folder} on a file system "
                                  "every worker shares?")
            rename_parts(source, final)


class Attempts:
    """How many times each item's tasks were started, as the workers announce it (a task
    that a dead worker was running is started again elsewhere, unknown to the task)."""

    TOPIC = "geounet-attempt"

    def __init__(self, client) -> None:
        self.started: Counter[tuple[str, str]] = Counter()
        client.subscribe_topic(self.TOPIC, self._seen)

    def _seen(self, event: tuple[float, dict]) -> None:
        self.started[(event[1]["input"], event[1]["task"])] += 1

    def of(self, item: Item) -> int:
        """The most attempts any one task of ``item`` started (0: none started)."""
        name = str(item.input)
        return max((n for (i, _), n in list(self.started.items()) if i == name), default=0)


def announce_attempt(item: Item) -> None:
    """Tell the client that a task of ``item`` starts an attempt (see :class:`Attempts`)."""
    from distributed import get_worker

    with contextlib.suppress(ValueError):   # not on a worker (called directly)
        worker = get_worker()
        worker.log_event(Attempts.TOPIC, {"input": str(item.input),
                                          "task": str(worker.get_current_task())})


def run_item(item: Item, workflow: Workflow, model_sha256: str) -> ItemResult:
    """A Dask task: :func:`geounet.workflow.pipeline.attempt_item`, announcing each attempt."""
    return attempt_item(item, workflow, model_sha256, partial(announce_attempt, item))


def _execute(client, staging: Staging, items: list[Item], workflow: Workflow,
             model_sha256: str) -> Iterator[ItemResult]:
    """Submit every item (split ones as region tasks + an assembly task) writing into the
    ``staging`` folder; as each finishes, move its outputs into place; yield results."""
    from dask.distributed import as_completed

    attempts = Attempts(client)
    tasks, futures, start = {}, [], time.perf_counter()
    for item in items:
        staged = staging.item(item)
        regions = split_regions(item, workflow)
        parts = []
        if len(regions) > 1:
            parts = [client.submit(predict_region, staged, workflow, model_sha256, region,
                                   pure=False) for region in regions]
            future = client.submit(assemble_regions, staged, workflow, parts, pure=False)
        else:
            future = client.submit(run_item, staged, workflow, model_sha256, pure=False)
        tasks[future.key] = (item, staged, parts)
        futures.append(future)
    for future in as_completed(futures):
        item, staged, parts = tasks[future.key]
        try:
            result = future.result()
            if result.status == "done":
                staging.commit(staged, item)
        except Exception as exc:  # lost by the cluster, a failed region, a failed commit
            _drop_regions(parts)
            result = ItemResult(item.input, "failed", lost_reason(exc, workflow), 0,
                                time.perf_counter() - start, item.outputs, None)
        result.input, result.outputs = item.input, item.outputs
        result.attempts = max(result.attempts, attempts.of(item))
        yield result


def _drop_regions(parts: list) -> None:
    """Let the region tasks of a failed item end (they may still be writing), then delete
    the regions they wrote; with the cluster gone, the staging folder's removal does it."""
    from dask.distributed import wait

    with contextlib.suppress(Exception):   # cancelled or lost with the scheduler
        wait(parts)
    for part in parts:
        with contextlib.suppress(Exception):
            if part.status == "finished":
                for path in part.result()[:2]:
                    if path is not None:
                        path.unlink(missing_ok=True)


def lost_reason(exc: BaseException, workflow: Workflow) -> str:
    """One line for an item whose task did not return a result of its own."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return ("Dask workers died each time they ran it (out of memory or killed?); see "
                "the workers' logs, then rerun")
    if isinstance(exc, CancelledError):
        where = workflow.executor.scheduler or "LocalCluster"
        return (f"the Dask cluster lost it ({getattr(exc, 'reason', None) or 'cancelled'}, "
                f"scheduler {where}); rerun to redo it")
    return failure_reason(exc)


def split_regions(item: Item, workflow: Workflow) -> list[tuple[int, int]]:
    """Block-row ranges of ``item`` to compute as separate tasks (one range: no split)."""
    from geounet.engines import read_model_metadata
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
    meta = read_model_metadata(workflow.model)
    tile = workflow.tiling.tile_size or meta.tile_size
    overlap = meta.overlap if workflow.tiling.overlap is None else workflow.tiling.overlap
    rows = len(block_row_extents(TileGrid(info.height, info.width, tile, overlap),
                                 workflow.tiling.block_tiles))
    step = workflow.executor.region_block_rows
    return [(k, min(k + step, rows)) for k in range(0, rows, step)]


def predict_region(item: Item, workflow: Workflow, model_sha256: str,
                   region: tuple[int, int]) -> tuple[Path, Path | None, float]:
    """Compute one row region into hidden temporary GeoTIFFs beside the item's (staged)
    outputs (under the :func:`~geounet.workflow.pipeline.retry` policy; each attempt
    announced).

    Returns the mask and probabilities parts and the seconds spent."""
    start = time.perf_counter()
    from geounet.predict import predict_raster

    anchor = item.outputs["mask"] or item.outputs["vector"] or item.outputs["probabilities"]
    probabilities = item.outputs["probabilities"]
    if anchor is None:
        raise ValueError(f"{item.input}: the item writes no raster")

    def attempt() -> tuple[Path, Path | None]:
        announce_attempt(item)
        mask = temporary_sibling(anchor, ".tif")
        prob = temporary_sibling(probabilities) if probabilities else None
        try:
            model = cached_model(workflow.model, model_sha256)
            predict_raster(item.input, model, mask, prob,
                           predict_config(workflow, region=region, cog=False))
        except BaseException:
            for path in (mask, prob):
                if path is not None:
                    path.unlink(missing_ok=True)
            raise
        return mask, prob

    mask, prob = retry(attempt, workflow.retries, f"{item.input} rows {region}")
    return mask, prob, time.perf_counter() - start


def assemble_regions(item: Item, workflow: Workflow,
                     parts: list[tuple[Path, Path | None, float]]) -> ItemResult:
    """Stack region rasters into the item's outputs (atomically), then vectorize.

    The item's seconds are those of its region tasks plus this one's."""
    start = time.perf_counter()
    announce_attempt(item)
    try:
        info = open_raster(item.input)
        masks = [m for m, _, _ in parts]
        with mask_for_vectors(item.outputs["mask"], item.outputs["vector"]) as mask:
            if mask is not None:
                stack_rows(masks, info, mask, "mask", workflow.outputs.cog)
            if item.outputs["probabilities"] is not None:
                stack_rows([p for _, p, _ in parts if p is not None], info,
                           item.outputs["probabilities"], "prob", workflow.outputs.cog)
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
        colors = read_class_colors(first)
        descriptions = [d or "" for d in first.descriptions]
    with atomic_path(output) as tmp:
        with contextlib.ExitStack() as stack:
            dst = open_output(stack, tmp, info, count, dtype, nodata)
            describe(dst, names, source, descriptions, colors)
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
