"""``geounet run``: run a workflow file once (skipping what is already done)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from geounet.cli.options import verbosity


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
    from geounet.runner import run_workflow
    from geounet.workflow import load_workflow

    workflow = load_workflow(workflow_file)
    report = run_workflow(workflow, dry_run=dry_run, wait=wait, progress=not quiet)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    elif not quiet or report.failed:
        print_summary(report, verbose)
    if report.failed:
        sys.exit(1)


def print_summary(report, verbose: int) -> None:
    """One line per item that ran, failed or would run (skipped ones with -v); then totals."""
    for result in report.items:
        if result.status == "skipped" and not verbose:
            continue
        detail = f" ({result.reason})" if result.reason else ""
        timing = f" in {result.seconds:.1f} s" if result.status in ("done", "failed") else ""
        click.echo(f"{result.status:>9}  {result.input}{timing}{detail}", err=True)
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    seconds = (report.finished - report.started).total_seconds()
    where = "" if report.dry_run else f"; report in {report.workflow.outputs.folder}"
    click.echo(f"{report.workflow.name}: {counts} ({seconds:.1f} s){where}", err=True)
