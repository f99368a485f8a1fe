"""Running a workflow: find inputs, skip what is done, process the rest, report.

A run plans its items (:mod:`geounet.workflow.plan`), takes the output folder's lock and
decides from the manifest (:mod:`geounet.workflow.manifest`) what is done, records the rest as
``running``, processes them with the local executor or on Dask
(:mod:`geounet.workflow.pipeline`, :mod:`geounet.workflow.dask`), records each as ``done`` as
it finishes, and writes ``run_report.json`` and ``report.html`` (:class:`RunReport`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from geounet.outputs import atomic_path
from geounet.workflow.config import Workflow
from geounet.workflow.manifest import (
    HTML_REPORT,
    REPORT,
    Manifest,
    file_sha256,
    output_lock,
    remove_staging,
    remove_stale_temporaries,
)
from geounet.workflow.pipeline import ItemResult, attempt_item
from geounet.workflow.plan import Item, discover_inputs, plan_items

# Runs items: (items, workflow, model_sha256) -> their results, in the order they finish.
Executor = Callable[[list[Item], Workflow, str], Iterable[ItemResult]]


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
        planned = _decide(workflow, items, manifest, model_sha256)[0]
        return RunReport(workflow, started, datetime.now(timezone.utc), planned, None,
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
    from geounet.engines import read_model_metadata

    return list(read_model_metadata(workflow.model).class_names)


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
def _executor(workflow: Workflow) -> Iterator[Executor]:
    """The executor of ``workflow.executor``: this process or a Dask cluster."""
    if workflow.executor.kind == "dask":
        from geounet.workflow.dask import dask_executor

        with dask_executor(workflow) as execute:
            yield execute
        return
    yield local_executor


def local_executor(items: list[Item], workflow: Workflow,
                   model_sha256: str) -> Iterator[ItemResult]:
    """Process the items one after the other in this process."""
    for item in items:
        yield attempt_item(item, workflow, model_sha256)


def _write_report(report: RunReport) -> Path:
    """``run_report.json`` and its page ``report.html`` in the output folder (atomically)."""
    from geounet.report import write_html_report

    path = report.workflow.outputs.folder / REPORT
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2))
    write_html_report(path, path.parent / HTML_REPORT)
    return path

