"""Planning a run: a workflow's input rasters, and the output paths of each (an :class:`Item`).

Inputs are the files the workflow's ``inputs`` name, sorted and without duplicates, hidden
files or this workflow's own files (an output folder may be the input folder, and a run must
never take its own outputs for new inputs). Output paths come from the ``outputs`` name
templates; two inputs that would write the same file are refused before anything runs.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

from geounet.errors import ConfigError, GeoUNetError
from geounet.outputs import GDAL_SIDECARS, output_parts, same_file
from geounet.workflow.config import Workflow, read_input_list
from geounet.workflow.manifest import HTML_REPORT, LOCK, MANIFEST, REPORT, Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One input raster and the absolute paths of its outputs (``None``: not written)."""

    input: Path
    outputs: dict[str, Path | None]


def discover_inputs(workflow: Workflow) -> list[Path]:
    """The input rasters, sorted, without duplicates, hidden files or this workflow's own
    files (see :func:`own_files`)."""
    spec = workflow.inputs
    if spec.folder is not None:
        pattern = spec.folder.rglob if spec.recursive else spec.folder.glob
        # Nothing in a hidden folder either (e.g. the staging folder of a Dask run).
        found = [p for p in pattern(spec.glob) if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(spec.folder).parts)]
    elif spec.file is not None:
        found = read_input_list(spec.file)
        missing = [p for p in found if not p.is_file()]
        if missing:
            raise ConfigError(f"{spec.file}: lists {missing[0]}, which does not exist"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    else:   # the schema requires exactly one of folder, file and list
        found = list(spec.list or ())
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
    """Items with their output paths; refuse two inputs that would write the same file, and
    an output (or a Shapefile part of one) that is the workflow's model, its file or its
    input list, whatever ``outputs.overwrite`` says."""
    items = _items(workflow, inputs)
    protected = {path: what for path, what in ((workflow.model, "model"),
                                               (workflow.source, "YAML file"),
                                               (workflow.inputs.file, "input list"))
                 if path is not None}
    owners: dict[Path, Path] = {}
    for item in items:
        for kind, target in item.outputs.items():
            if target is None:
                continue
            if target in owners:
                raise ConfigError(f"{owners[target]} and {item.input} would both write "
                                  f"{target}; use {{name}} in outputs templates or rename an "
                                  "input")
            owners[target] = item.input
            for part, (path, what) in itertools.product(output_parts(target),
                                                        protected.items()):
                if same_file(part, path):
                    raise ConfigError(f"outputs.{kind}: the output {part} of {item.input} "
                                      f"is this workflow's {what}; change the name template")
    return items


def _items(workflow: Workflow, inputs: list[Path]) -> list[Item]:
    """``inputs`` with the output paths the workflow's name templates give them."""
    out = workflow.outputs
    names = {"mask": out.mask, "probabilities": out.probabilities, "vector": out.vector,
             "centerlines": out.centerlines, "preview": out.preview}
    return [Item(path, {kind: None if t is None else out.folder / t.format(stem=path.stem,
                                                                         name=path.name)
                        for kind, t in names.items()}) for path in inputs]

