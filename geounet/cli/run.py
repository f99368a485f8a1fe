"""``geounet run``: run a workflow file once (skipping what is already done)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from geounet.cli.options import verbosity
from geounet.cli.summary import Column, emit, fixed, significant


@click.command("run")
@click.argument("workflow_file", metavar="WORKFLOW.yaml", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="List what would run; write nothing.")
@click.option("--wait", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to wait for another run of the same outputs to finish.")
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON.")
@verbosity
def command(workflow_file: Path, dry_run: bool, wait: float, as_json: bool, quiet: bool,
            verbose: int) -> None:
    """Run WORKFLOW.yaml: process new or changed inputs, skip the rest, write a report.

    Exit status 1 when the workflow cannot run or any item failed.
    """
    from geounet.workflow import load_workflow, run_workflow

    workflow = load_workflow(workflow_file)
    report = run_workflow(workflow, dry_run=dry_run, wait=wait, progress=not quiet)
    print_summary(report, verbose, as_json=as_json, quiet=quiet and not report.failed)
    if report.failed:
        sys.exit(1)


COLUMNS = (Column("input", "input", align="<"), Column("status", "status", align="<"),
           Column("seconds", "s", fixed(1)), Column("features", "features", fixed(0)),
           Column("area_m2", "area m2", significant(3)),
           Column("length_m", "centerline m", significant(3)),
           Column("reason", "reason", align="<"))


def print_summary(report, verbose: int, as_json: bool = False, quiet: bool = False) -> None:
    """A row per item that ran, failed or would run (skipped ones too with -v), then totals;
    with ``as_json`` the whole run report as JSON on stdout."""
    from geounet.workflow import HTML_REPORT

    rows = []
    for result in report.items:
        if result.status == "skipped" and not verbose:
            continue
        summary = result.summary or {}
        rows.append({"input": result.input.name, "status": result.status,
                     "seconds": result.seconds if result.status in ("done", "failed") else None,
                     "features": summary.get("features"), "area_m2": summary.get("area_m2"),
                     "length_m": summary.get("centerline_length_m"), "reason": result.reason})
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    seconds = (report.finished - report.started).total_seconds()
    footer = [f"{report.workflow.name}: {counts} ({seconds:.1f} s)"]
    if not report.dry_run:
        footer.append(f"report: {report.workflow.outputs.folder / HTML_REPORT}")
    columns = COLUMNS if not report.dry_run else (COLUMNS[0], COLUMNS[1], COLUMNS[-1])
    emit(report.to_json(), rows, columns, as_json=as_json, quiet=quiet, footer=footer)
