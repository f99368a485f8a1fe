"""``geounet schedule``: run a workflow on the cron expression in its file, never overlapping."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from geounet.cli.options import verbosity
from geounet.errors import ConfigError, GeoUNetError

log = logging.getLogger(__name__)


def build_scheduler(workflow_file: Path, wait: float = 0.0):
    """A BlockingScheduler with one cron job that re-reads and runs ``workflow_file``.

    ``max_instances=1`` and ``coalesce=True``: a run still going when the next time comes is
    not doubled, and runs missed meanwhile collapse into one.
    """
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    from geounet.workflow import load_workflow

    workflow = load_workflow(workflow_file)
    if workflow.schedule is None:
        raise ConfigError(f"{workflow_file}: no schedule key; add e.g. schedule: {{cron: "
                          "'0 2 * * *'}} or run it with geounet run")
    trigger = CronTrigger.from_crontab(workflow.schedule.cron, timezone=workflow.schedule.timezone)
    scheduler = BlockingScheduler(timezone=workflow.schedule.timezone)
    scheduler.add_job(run_once, trigger, args=(workflow_file, wait), id=workflow.name,
                      max_instances=1, coalesce=True, misfire_grace_time=3600)
    return scheduler


def run_once(workflow_file: Path, wait: float = 0.0) -> None:
    """One scheduled run: the file is re-read so edits apply; failures are logged, not fatal."""
    from geounet.runner import run_workflow
    from geounet.workflow import load_workflow

    try:
        report = run_workflow(load_workflow(workflow_file), wait=wait, progress=False)
    except GeoUNetError as exc:
        log.error("%s: run not done: %s", workflow_file, exc)
        return
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    (log.error if report.failed else log.warning)("%s: %s", report.workflow.name, counts)


@click.command("schedule")
@click.argument("workflow_file", metavar="WORKFLOW.yaml", type=click.Path(path_type=Path))
@click.option("--wait", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Seconds a run waits for another one holding the same outputs.")
@verbosity
def command(workflow_file: Path, wait: float, quiet: bool, verbose: int) -> None:
    """Run WORKFLOW.yaml at the times of its schedule.cron until interrupted (Ctrl-C)."""
    from datetime import datetime, timezone

    scheduler = build_scheduler(workflow_file, wait)
    job = scheduler.get_jobs()[0]
    if not quiet:
        upcoming = job.trigger.get_next_fire_time(None, datetime.now(timezone.utc))
        click.echo(f"{job.id}: runs on '{job.trigger}', next at {upcoming.isoformat()}; "
                   "Ctrl-C to stop", err=True)
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        scheduler.shutdown(wait=False)
