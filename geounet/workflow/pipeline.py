"""One item of a workflow: image -> mask -> vectors -> preview, and the retry policy.

Every output appears atomically (written under a temporary name, renamed when complete:
:mod:`geounet.outputs`). A mask that only the vectors want is a hidden temporary GeoTIFF beside
the vector output, deleted however the item ends (:func:`mask_for_vectors`); ``geounet
predict --vector`` uses the same step. Summaries are read back from the written files
(:mod:`geounet.workflow.summary`).

Retries (:func:`retry`): a failed attempt is repeated up to ``workflow.retries`` times, except
for errors a second attempt cannot fix (:data:`PERMANENT`: bad input, model or settings). The
local executor and every Dask task (whole items and row regions) share this policy.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from geounet.errors import ConfigError, GeoUNetError, InputError, ModelError
from geounet.outputs import first_line, temporary_sibling
from geounet.settings import RuntimeSettings
from geounet.workflow.config import Workflow
from geounet.workflow.plan import Item
from geounet.workflow.summary import ItemSummary, pixel_summary, vector_summary

log = logging.getLogger(__name__)

# Errors that a second attempt cannot fix: not retried.
PERMANENT = (InputError, ModelError, ConfigError)
T = TypeVar("T")


@dataclass
class ItemResult:
    """What happened to one item (a row of the run report)."""

    input: Path
    status: str                       # done, skipped, failed (dry run: would run)
    reason: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    outputs: dict[str, Path | None] = field(default_factory=dict)
    summary: ItemSummary | None = None


_MODELS: dict[tuple[str, str], Any] = {}


def cached_model(path: Path, sha256: str):
    """The model (a checkpoint or an exported ``.onnx`` file) loaded once per process (CPU),
    keyed by path and content hash."""
    from geounet.engines import load_model

    key = (str(path), sha256)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(path, "cpu")
    return _MODELS[key]


def predict_config(workflow: Workflow, **changes):
    """The :class:`~geounet.predict.PredictConfig` of a workflow (outputs always replaced:
    the run decides what may be overwritten)."""
    from geounet.predict import PredictConfig

    runtime = {name: getattr(workflow, name) for name in RuntimeSettings.model_fields}
    settings = dict(**workflow.tiling.model_dump(), **runtime, cog=workflow.outputs.cog,
                    overwrite=True, progress=False)
    return PredictConfig(**(settings | changes))


@contextlib.contextmanager
def mask_for_vectors(mask: Path | None, vector: Path | None,
                     create: bool = True) -> Iterator[Path | None]:
    """The mask to write: ``mask``, or when only the vectors want one, a hidden temporary
    GeoTIFF beside ``vector``, deleted on leaving however the block ends. ``create``: reserve
    the temporary name by making the (empty) file (see
    :func:`geounet.outputs.temporary_sibling`)."""
    if mask is not None or vector is None:
        yield mask
        return
    temporary = temporary_sibling(vector, ".tif", create=create)
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def process_item(item: Item, workflow: Workflow, model_sha256: str) -> ItemSummary | None:
    """Predict and vectorize one input; every output appears atomically. Returns the summary."""
    from geounet.predict import predict_raster

    with mask_for_vectors(item.outputs["mask"], item.outputs["vector"]) as mask:
        model = cached_model(workflow.model, model_sha256)
        predict_raster(item.input, model, mask, item.outputs["probabilities"],
                       predict_config(workflow))
        return finish_item(item, workflow, mask)


def finish_item(item: Item, workflow: Workflow, mask: Path | None) -> ItemSummary | None:
    """From the item's mask, write its vectors and its preview; summarize the vectors."""
    summary = write_vectors(item, workflow, mask)
    if item.outputs["preview"] is not None:
        from geounet.preview import render_preview

        outlines = [p for p in (item.outputs["vector"], item.outputs["centerlines"]) if p]
        render_preview(item.input, item.outputs["preview"], mask=mask, vector=outlines,
                       bands=workflow.bands if workflow.bands and len(workflow.bands) in (1, 3)
                       else None, overwrite=True)
    return summary


def write_vectors(item: Item, workflow: Workflow, mask: Path | None) -> ItemSummary | None:
    """Vectorize ``mask`` into the item's vector outputs; summarize what was written."""
    from geounet.vectorize import VectorizeConfig, vectorize_raster

    vector, centerlines = item.outputs["vector"], item.outputs["centerlines"]
    if vector is None:
        return pixel_summary(mask)
    if mask is None:
        raise ValueError(f"{vector}: no mask to vectorize (see mask_for_vectors)")
    opts = workflow.vectorize
    # A Dask task is one core's work (and Dask's worker processes may not start children).
    single = {"workers": 1} if workflow.executor.kind == "dask" else {}
    config = VectorizeConfig(**(opts.model_dump(exclude={"crs"}) | single))
    vectorize_raster(mask, vector, config, workflow.outputs.vector_format, opts.crs,
                     overwrite=True, probabilities=item.outputs["probabilities"],
                     centerlines_output=centerlines)
    return vector_summary(vector, centerlines)


def retry(attempt: Callable[[], T], retries: int, label: str) -> T:
    """What ``attempt()`` returns, calling it at most ``1 + retries`` times until it returns.

    The last error is raised, or at once an error a second attempt cannot fix
    (:data:`PERMANENT`); each failure is logged (INFO, with the traceback at DEBUG) as
    ``label: attempt N failed: reason``."""
    number = 0
    while True:
        number += 1
        try:
            return attempt()
        except Exception as exc:
            log.info("%s: attempt %d failed: %s", label, number, failure_reason(exc),
                     exc_info=log.isEnabledFor(logging.DEBUG))
            if isinstance(exc, PERMANENT) or number > retries:
                raise


def attempt_item(item: Item, workflow: Workflow, model_sha256: str,
                 on_attempt: Callable[[], None] | None = None) -> ItemResult:
    """:func:`process_item` under the :func:`retry` policy (``workflow.retries``), as a
    result, failed or done; ``on_attempt`` is called as each attempt starts."""
    start = time.perf_counter()
    attempts = 0

    def attempt() -> ItemSummary | None:
        nonlocal attempts
        attempts += 1
        if on_attempt is not None:
            on_attempt()
        return process_item(item, workflow, model_sha256)

    try:
        summary = retry(attempt, workflow.retries, str(item.input))
    except Exception as exc:  # one item's failure must not stop the batch
        return ItemResult(item.input, "failed", failure_reason(exc), attempts,
                          time.perf_counter() - start, item.outputs, None)
    return ItemResult(item.input, "done", None, attempts, time.perf_counter() - start,
                      item.outputs, summary)


def failure_reason(exc: BaseException) -> str:
    """One line: the error's own message, or its type and first line when it is unexpected."""
    if isinstance(exc, GeoUNetError):
        return str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {first_line(exc)}"
