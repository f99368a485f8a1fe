"""Running a workflow: find inputs, skip what is done, process the rest, report.

Idempotence comes from a manifest of content hashes kept next to the outputs
(``.geounet_manifest.json``): for each input, the sha256 of its bytes, of the checkpoint and of
the output-relevant settings. An item whose three hashes match a finished entry, and whose
outputs are all still there, is skipped without loading the model; changing an input's content
(not merely its mtime) reprocesses that item only.

Crash safety: every output is written under a temporary name and renamed when complete
(:func:`geounet.io.atomic_path`); an item is recorded as ``running`` before its first output is
written and as ``done`` after its last, and the manifest itself is replaced atomically. A
killed run therefore leaves only hidden temporary files (removed by the next run) and finished
outputs; the next run redoes the unfinished items, replacing their outputs.

Concurrency: a run holds an exclusive ``flock`` on ``.geounet.lock`` in the output folder for
its whole duration, so two runs never process the same outputs at once; the second one waits
(``wait`` seconds) or stops with a clear message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from geounet.errors import ConfigError, GeoUNetError, InputError, ModelError, OutputError
from geounet.outputs import (
    GDAL_SIDECARS,
    atomic_path,
    first_line,
    output_parts,
    temporary_sibling,
)
from geounet.outputs import remove_stale_temporaries as remove_output_temporaries
from geounet.settings import RuntimeSettings
from geounet.workflow.config import Workflow, read_input_list

log = logging.getLogger(__name__)

MANIFEST = ".geounet_manifest.json"
LOCK = ".geounet.lock"
REPORT = "run_report.json"
HTML_REPORT = "report.html"
# Where Dask workers write an item's outputs before this run renames them into place.
STAGING = ".geounet.staging"
HASH_CHUNK = 1 << 20
# Errors that a second attempt cannot fix: not retried.
PERMANENT = (InputError, ModelError, ConfigError)


@dataclass(frozen=True)
class Item:
    """One input raster and the absolute paths of its outputs (``None``: not written)."""

    input: Path
    outputs: dict[str, Path | None]


@dataclass
class ItemResult:
    """What happened to one item (a row of the run report)."""

    input: Path
    status: str                       # done, skipped, failed (dry run: would run)
    reason: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    outputs: dict[str, Path | None] = field(default_factory=dict)
    summary: dict[str, Any] | None = None


@dataclass
class RunReport:
    """The result of :func:`run_workflow` (written as ``run_report.json``)."""

    workflow: Workflow
    started: datetime
    finished: datetime
    items: list[ItemResult]
    model_sha256: str | None
    class_names: list[str]
    dry_run: bool = False

    @property
    def counts(self) -> dict[str, int]:
        keys = ("would run", "skipped") if self.dry_run else ("done", "skipped", "failed")
        return {k: sum(r.status == k for r in self.items) for k in keys}

    @property
    def failed(self) -> bool:
        return any(r.status == "failed" for r in self.items)

    def to_json(self) -> dict[str, Any]:
        """The run report in the documented schema (paths relative to the output folder)."""
        folder = self.workflow.outputs.folder

        def rel(path: Path | None) -> str | None:
            return None if path is None else os.path.relpath(path, folder)

        return {
            "workflow": self.workflow.name,
            "workflow_file": str(self.workflow.source) if self.workflow.source else None,
            "started": self.started.isoformat(timespec="seconds"),
            "finished": self.finished.isoformat(timespec="seconds"),
            "seconds": round((self.finished - self.started).total_seconds(), 3),
            "model": {"path": str(self.workflow.model), "sha256": self.model_sha256,
                      "class_names": self.class_names},
            "settings": json.loads(json.dumps(self.workflow.output_settings(), default=str)),
            "counts": self.counts,
            "items": [{
                "input": str(r.input), "status": r.status, "reason": r.reason,
                "attempts": r.attempts, "seconds": round(r.seconds, 3),
                "outputs": {k: rel(r.outputs.get(k)) for k in
                            ("mask", "probabilities", "vector", "centerlines", "preview")},
                "summary": r.summary,
            } for r in self.items],
        }


# -- inputs and plan ----------------------------------------------------------------------
def discover_inputs(workflow: Workflow) -> list[Path]:
    """The input rasters, sorted, without duplicates, hidden files or this workflow's own
    files (see :func:`own_files`)."""
    spec = workflow.inputs
    if spec.folder is not None:
        pattern = spec.folder.rglob if spec.recursive else spec.folder.glob
        # Nothing in a hidden folder either (e.g. the staging folder of a Dask run).
        found = [p for p in pattern(spec.glob) if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(spec.folder).parts)]
    elif spec.list is not None:
        found = list(spec.list)
    else:
        found = read_input_list(spec.file)
        missing = [p for p in found if not p.is_file()]
        if missing:
            raise ConfigError(f"{spec.file}: lists {missing[0]}, which does not exist"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    candidates = sorted({p.resolve() for p in found if not p.name.startswith(".")})
    own = own_files(workflow, candidates)
    inputs = [p for p in candidates if p not in own]
    if len(inputs) < len(candidates):
        log.info("%d file(s) found among the inputs are this workflow's outputs: not inputs",
                 len(candidates) - len(inputs))
    return inputs


def own_files(workflow: Workflow, candidates: list[Path]) -> set[Path]:
    """Files this workflow writes, which are never its inputs (an output folder may be the
    input folder): the names its templates give every candidate input (with a Shapefile's
    parts and GDAL's sidecars), the outputs its manifest records, the manifest, the lock
    and the reports. Absolute, resolved paths."""
    folder = workflow.outputs.folder.resolve()
    own = {folder / MANIFEST, folder / LOCK, folder / REPORT, folder / HTML_REPORT}
    targets = [p for item in _items(workflow, candidates) for p in item.outputs.values() if p]
    if (folder / MANIFEST).is_file():
        with contextlib.suppress(GeoUNetError):   # an unreadable one is refused by the run
            targets += Manifest(folder).owned()
    for target in targets:
        parts = output_parts(target)
        own.update(parts + [p.with_name(p.name + ext) for p in parts for ext in GDAL_SIDECARS])
    return {p.resolve() for p in own}


def plan_items(workflow: Workflow, inputs: list[Path]) -> list[Item]:
    """Items with their output paths; refuse two inputs that would write the same file."""
    items, owners = _items(workflow, inputs), {}
    for item in items:
        for target in filter(None, item.outputs.values()):
            if target in owners:
                raise ConfigError(f"{owners[target]} and {item.input} would both write "
                                  f"{target}; use {{name}} in outputs templates or rename an "
                                  "input")
            owners[target] = item.input
    return items


def _items(workflow: Workflow, inputs: list[Path]) -> list[Item]:
    """``inputs`` with the output paths the workflow's name templates give them."""
    out = workflow.outputs
    names = {"mask": out.mask, "probabilities": out.probabilities, "vector": out.vector,
             "centerlines": out.centerlines, "preview": out.preview}
    return [Item(path, {kind: None if t is None else out.folder / t.format(stem=path.stem,
                                                                         name=path.name)
                        for kind, t in names.items()}) for path in inputs]


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- manifest and lock --------------------------------------------------------------------
class Manifest:
    """Content hashes and states of the items of one output folder, saved atomically."""

    def __init__(self, folder: Path):
        self.path = folder / MANIFEST
        self.entries: dict[str, dict[str, Any]] = {}
        self.model: dict[str, Any] = {}   # sha256 and class names of the last model used
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
                self.entries, self.model = saved["items"], saved.get("model", {})
                _check_entries(self.entries, self.model)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                why = f"no {exc.args[0]!r} key" if isinstance(exc, KeyError) else str(exc)
                raise OutputError(f"{self.path}: unreadable manifest ({why}); delete it and "
                                  "run once with outputs.overwrite: always to redo every "
                                  "item") from None

    def owned(self) -> set[Path]:
        """Every output any entry (finished or not) has written or was about to write."""
        folder = self.path.parent
        return {folder / p for e in self.entries.values() for p in e["outputs"].values() if p}

    def is_current(self, item: Item, hashes: dict[str, str]) -> bool:
        entry = self.entries.get(str(item.input))
        return (entry is not None and entry["state"] == "done"
                and all(entry.get(k) == v for k, v in hashes.items())
                and entry["outputs"] == self._names(item)
                and all(p.exists() for p in filter(None, item.outputs.values())))

    def why_stale(self, item: Item, hashes: dict[str, str]) -> str:
        entry = self.entries.get(str(item.input))
        if entry is None:
            return "new input"
        if entry["state"] != "done":
            return "unfinished by an earlier run"
        for key, what in (("input_sha256", "input content"), ("model_sha256", "model"),
                          ("settings_sha256", "settings")):
            if entry.get(key) != hashes[key]:
                return f"{what} changed"
        return "outputs changed or missing"

    def record(self, item: Item, hashes: dict[str, str], state: str,
               summary: dict | None = None, save: bool = True) -> None:
        self.entries[str(item.input)] = {**hashes, "state": state,
                                         "outputs": self._names(item), "summary": summary}
        if save:
            self.save()

    def summary(self, item: Item) -> dict | None:
        return self.entries.get(str(item.input), {}).get("summary")

    def save(self) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w") as f:
            json.dump({"version": 1, "model": self.model, "items": self.entries}, f,
                      indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())

    def _names(self, item: Item) -> dict[str, str | None]:
        return {k: (os.path.relpath(p, self.path.parent) if p else None)
                for k, p in item.outputs.items()}


def _check_entries(entries: Any, model: Any) -> None:
    """Raise ValueError naming what is wrong when a manifest's entries are not the mappings
    :class:`Manifest` reads (hand-edited, or written by something else)."""
    if not isinstance(entries, dict) or not isinstance(model, dict):
        raise ValueError("'items' and 'model' must be mappings")
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise ValueError(f"the entry of {name} is not a mapping")
        for key, kind in (("state", str), ("outputs", dict)):
            if not isinstance(entry.get(key), kind):
                raise ValueError(f"the entry of {name} has no valid {key!r}")
        if not all(isinstance(p, (str, type(None))) for p in entry["outputs"].values()):
            raise ValueError(f"the entry of {name} has an output that is not a file name")
    if "class_names" in model and not isinstance(model["class_names"], list):
        raise ValueError("'model.class_names' must be a list")


@contextlib.contextmanager
def output_lock(folder: Path, wait: float) -> Iterator[None]:
    """Hold an exclusive lock on ``folder``'s outputs; wait up to ``wait`` seconds for it."""
    path = folder / LOCK
    fd = _open_lock(path)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    raise OutputError(
                        f"{folder}: another geounet run (pid {holder}) is writing these outputs;"
                        " let it finish, or pass --wait SECONDS to wait for it") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)   # releases the lock


def _open_lock(path: Path) -> int:
    """Open (or create) the lock file; never through a symlink, never anything but a regular
    file (a planted ``.geounet.lock -> someone's file`` would be truncated otherwise)."""
    refuse = OutputError(f"{path}: the lock file is not a regular file (a symlink, folder or "
                         "device); remove it, geounet makes its own")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise refuse from None
        raise OutputError(f"{path}: cannot open the lock file ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refuse
    return fd


def remove_staging(folder: Path) -> None:
    """Delete ``folder``'s staging folder (:data:`STAGING`, see
    :class:`geounet.workflow.dask.Staging`) with what the Dask tasks of killed runs left in it;
    call it holding the lock. Anything but a real folder there is refused, never followed or
    deleted."""
    path = folder / STAGING
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise OutputError(f"{path}: is not a folder geounet made (a symlink or a file); "
                          "remove it")
    for _ in range(10):   # a task of a killed run may still be adding files to it
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.2)
    raise OutputError(f"{path}: cannot be removed (a task of an earlier run still writing, or "
                      "no permission); stop that run's Dask tasks and retry")


def remove_stale_temporaries(items: list[Item], folder: Path | None = None) -> int:
    """Delete hidden temporary files left beside outputs (and the manifest and report of
    ``folder``) by a killed run; call it holding the lock."""
    targets = [t for item in items for t in item.outputs.values() if t is not None]
    if folder is not None:
        targets += [folder / MANIFEST, folder / REPORT, folder / HTML_REPORT]
    return remove_output_temporaries(targets, any_process=True)


# -- one item -----------------------------------------------------------------------------
_MODELS: dict[tuple[str, str], Any] = {}


def cached_model(path: Path, sha256: str):
    """The checkpoint loaded once per process (CPU), keyed by path and content hash."""
    from geounet.checkpoint import load_checkpoint

    key = (str(path), sha256)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_checkpoint(path, "cpu")
    return _MODELS[key]


def predict_config(workflow: Workflow, **changes):
    """The :class:`~geounet.predict.PredictConfig` of a workflow (outputs always replaced:
    the runner decides what may be overwritten)."""
    from geounet.predict import PredictConfig

    runtime = {name: getattr(workflow, name) for name in RuntimeSettings.model_fields}
    settings = dict(**workflow.tiling.model_dump(), **runtime, cog=workflow.outputs.cog,
                    overwrite=True, progress=False)
    return PredictConfig(**(settings | changes))


def process_item(item: Item, workflow: Workflow, model_sha256: str) -> dict[str, Any]:
    """Predict and vectorize one input; every output appears atomically. Returns the summary."""
    from geounet.predict import predict_raster

    mask, prob = item.outputs["mask"], item.outputs["probabilities"]
    with contextlib.ExitStack() as stack:
        if mask is None and item.outputs["vector"] is not None:
            mask = temporary_sibling(item.outputs["vector"], ".tif")
            stack.callback(mask.unlink, missing_ok=True)
        model = cached_model(workflow.model, model_sha256)
        predict_raster(item.input, model, mask, prob, predict_config(workflow))
        return finish_item(item, workflow, mask)


def finish_item(item: Item, workflow: Workflow, mask: Path | None) -> dict[str, Any] | None:
    """From the item's mask, write its vectors and its preview; summarize the vectors."""
    summary = write_vectors(item, workflow, mask)
    if item.outputs["preview"] is not None:
        from geounet.preview import render_preview

        outlines = [p for p in (item.outputs["vector"], item.outputs["centerlines"]) if p]
        render_preview(item.input, item.outputs["preview"], mask=mask, vector=outlines,
                       bands=workflow.bands if workflow.bands and len(workflow.bands) in (1, 3)
                       else None, overwrite=True)
    return summary


def write_vectors(item: Item, workflow: Workflow, mask: Path | None) -> dict[str, Any]:
    """Vectorize ``mask`` into the item's vector outputs; summarize what was written."""
    from geounet.vectorize import VectorizeConfig, vectorize_raster

    vector, centerlines = item.outputs["vector"], item.outputs["centerlines"]
    if vector is None:
        return pixel_summary(mask)
    opts = workflow.vectorize
    # A Dask task is one core's work (and Dask's worker processes may not start children).
    single = {"workers": 1} if workflow.executor.kind == "dask" else {}
    config = VectorizeConfig(**opts.model_dump(exclude={"crs"}), **single)
    vectorize_raster(mask, vector, config, workflow.outputs.vector_format, opts.crs,
                     overwrite=True, probabilities=item.outputs["probabilities"],
                     centerlines_output=centerlines)
    return vector_summary(vector, centerlines)


def vector_summary(vector: Path, centerlines: Path | None = None) -> dict[str, Any]:
    """Feature count, area, lengths and widths per class, read back from the written file."""
    import pyogrio

    frame = pyogrio.read_dataframe(vector, read_geometry=False)
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

    classes = {}
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


def pixel_summary(mask: Path | None) -> dict[str, Any] | None:
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
    classes = {(names[i] if i < len(names) else str(i)): {
        "features": None, "area_m2": round(float(counts[i] * pixel_m2), 3) if pixel_m2 else None,
        "length_m": None, "mean_width_m": None, "max_width_m": None,
    } for i in range(1, 255) if counts[i]}
    area = sum(c["area_m2"] or 0.0 for c in classes.values()) if pixel_m2 else None
    return {"features": None, "area_m2": area, "centerline_length_m": None, "classes": classes}


def attempt_item(item: Item, workflow: Workflow, model_sha256: str,
                 on_attempt: Callable[[], None] | None = None) -> ItemResult:
    """:func:`process_item` with up to ``workflow.retries`` retries of transient failures;
    ``on_attempt`` is called as each attempt starts."""
    start = time.perf_counter()
    attempts, reason = 0, None
    while attempts <= workflow.retries:
        attempts += 1
        if on_attempt is not None:
            on_attempt()
        try:
            summary = process_item(item, workflow, model_sha256)
            return ItemResult(item.input, "done", None, attempts,
                              time.perf_counter() - start, item.outputs, summary)
        except Exception as exc:  # one item's failure must not stop the batch
            reason = failure_reason(exc)
            log.info("%s: attempt %d failed: %s", item.input, attempts, reason,
                     exc_info=log.isEnabledFor(logging.DEBUG))
            if isinstance(exc, PERMANENT):
                break
    return ItemResult(item.input, "failed", reason, attempts, time.perf_counter() - start,
                      item.outputs, None)


def failure_reason(exc: BaseException) -> str:
    """One line: the error's own message, or its type and first line when it is unexpected."""
    if isinstance(exc, GeoUNetError):
        return str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {first_line(exc)}"


# -- the run ------------------------------------------------------------------------------
def run_workflow(workflow: Workflow, dry_run: bool = False, wait: float = 0.0,
                 progress: bool = True) -> RunReport:
    """Run every item of ``workflow`` that is not already done; write ``run_report.json``.

    Args:
        workflow: a validated workflow (:func:`geounet.workflow.config.load_workflow`).
        dry_run: only decide what would run; nothing is read but hashes, nothing written.
        wait: seconds to wait for another run holding the output folder's lock.
        progress: show an items progress bar on stderr.
    """
    started = datetime.now(timezone.utc)
    items = plan_items(workflow, discover_inputs(workflow))
    folder = workflow.outputs.folder
    if dry_run:
        manifest = Manifest(folder) if folder.is_dir() else None
        model_sha256 = file_sha256(workflow.model)
        results = _decide(workflow, items, manifest, model_sha256)[0]
        return RunReport(workflow, started, datetime.now(timezone.utc), results, None,
                         _class_names(workflow, manifest, model_sha256), dry_run=True)
    folder.mkdir(parents=True, exist_ok=True)
    with output_lock(folder, wait):
        remove_stale_temporaries(items, folder)
        remove_staging(folder)
        manifest = Manifest(folder)
        model_sha256 = file_sha256(workflow.model)
        class_names = _class_names(workflow, manifest, model_sha256)
        if manifest.model != {"sha256": model_sha256, "class_names": class_names}:
            manifest.model = {"sha256": model_sha256, "class_names": class_names}
            manifest.save()
        decided, todo, hashes = _decide(workflow, items, manifest, model_sha256)
        results = {r.input: r for r in decided}
        for item in todo:
            manifest.record(item, hashes[item.input], "running", save=False)
        manifest.save()
        bar = tqdm(total=len(todo), unit="item", disable=not progress or not todo,
                   file=sys.stderr, desc=workflow.name, dynamic_ncols=True)
        by_input = {item.input: item for item in todo}
        with bar, _executor(workflow) as execute:
            for result in execute(todo, workflow, model_sha256):
                item = by_input[result.input]
                if result.status == "done":
                    manifest.record(item, hashes[item.input], "done", result.summary)
                results[result.input] = result
                bar.update(1)
        report = RunReport(workflow, started, datetime.now(timezone.utc),
                           [results[i.input] for i in items], model_sha256, class_names)
        _write_report(report)
    return report


def _class_names(workflow: Workflow, manifest: Manifest | None, model_sha256: str,
                 ) -> list[str]:
    """The model's class names: from the manifest when it saw this very model (no torch
    import for a run with nothing to do), else from the checkpoint."""
    if manifest is not None and manifest.model.get("sha256") == model_sha256:
        return list(manifest.model["class_names"])
    from geounet.checkpoint import read_metadata

    return list(read_metadata(workflow.model).class_names)


def _decide(workflow: Workflow, items: list[Item], manifest: Manifest | None,
            model_sha256: str) -> tuple[list[ItemResult], list[Item], dict[Path, dict]]:
    """Skipped and refused items as results; the items to process; their hashes."""
    settings = workflow.settings_sha256()
    policy = workflow.outputs.overwrite
    owned = manifest.owned() if manifest is not None else set()
    unfinished = ({Path(i) for i, e in manifest.entries.items() if e["state"] != "done"}
                  if manifest is not None else set())
    decided, todo, hashes = [], [], {}
    for item in items:
        try:
            digest = {"input_sha256": file_sha256(item.input), "model_sha256": model_sha256,
                      "settings_sha256": settings}
        except OSError as exc:
            decided.append(ItemResult(item.input, "failed", f"{item.input}: cannot read "
                                      f"({exc.strerror})", 0, 0.0, item.outputs))
            continue
        hashes[item.input] = digest
        if manifest is not None and policy != "always" and manifest.is_current(item, digest):
            decided.append(ItemResult(item.input, "skipped", "unchanged", 0, 0.0,
                                      item.outputs, manifest.summary(item)))
            continue
        blocked = [p for p in filter(None, item.outputs.values()) if p.exists()
                   and policy != "always" and not (policy == "changed" and p in owned)
                   and item.input not in unfinished]
        if blocked:
            decided.append(ItemResult(
                item.input, "failed", f"{blocked[0]} exists and this workflow may not replace "
                f"it (outputs.overwrite: {policy}); move it away or set overwrite: always",
                0, 0.0, item.outputs))
            continue
        reason = manifest.why_stale(item, digest) if manifest is not None else "new input"
        decided.append(ItemResult(item.input, "would run", reason, 0, 0.0, item.outputs))
        todo.append(item)
    return decided, todo, hashes


@contextlib.contextmanager
def _executor(workflow: Workflow):
    """A function ``(items, workflow, model_sha256) -> results as they finish``."""
    if workflow.executor.kind == "dask":
        from geounet.workflow.dask import dask_executor

        with dask_executor(workflow) as execute:
            yield execute
        return

    def local(items, workflow, model_sha256):
        for item in items:
            yield attempt_item(item, workflow, model_sha256)

    yield local


def _write_report(report: RunReport) -> Path:
    """``run_report.json`` and its page ``report.html`` in the output folder (atomically)."""
    from geounet.report import write_html_report

    path = report.workflow.outputs.folder / REPORT
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2))
    write_html_report(path, path.parent / HTML_REPORT)
    return path

