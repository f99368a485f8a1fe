"""``geounet schedule``: run a workflow on the cron expression in its file, never overlapping.

An APScheduler thread only says when a run is due; the run itself happens in the main thread,
so Ctrl-C reaches it as it reaches ``geounet run``. Ctrl-C between runs stops at once. The
first Ctrl-C during a run says so and stops once the run ends; a second one interrupts the run
the way Ctrl-C interrupts ``geounet run`` (temporaries removed, only complete files at final
names, the unfinished item redone by the next run) and exits with status 130 at once, without
the interpreter's teardown (torch's alone takes about a second). SIGTERM (how a service
manager stops it) interrupts a run at once, as it does ``geounet run``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import click

from geounet.cli.options import verbosity
from geounet.errors import ConfigError, GeoUNetError

log = logging.getLogger(__name__)

FINISHING = "geounet: finishing the current run; press Ctrl-C again to stop now"
INTERRUPTED = "geounet: interrupted the run; the inputs it had not finished are redone next time"


def build_scheduler(workflow_file: Path, wait: float = 0.0, now: bool = False,
                    executor: Any = None):
    """A scheduler with one cron job that re-reads and runs ``workflow_file``.

    The job goes to ``executor`` (default: a new :func:`main_thread_executor`), whose runs
    :func:`serve` performs. ``max_instances=1`` and ``coalesce=True``: a run still going when
    the next time comes is not doubled, and times missed meanwhile (a sleeping machine)
    collapse into one run. ``now``: also run once at start.
    """
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    from geounet.workflow import load_workflow

    workflow = load_workflow(workflow_file)
    if workflow.schedule is None:
        raise ConfigError(f"{workflow_file}: no schedule key; add e.g. schedule: {{cron: "
                          "'0 2 * * *'}} or run it with geounet run")
    zone = workflow.schedule.timezone
    trigger = CronTrigger.from_crontab(workflow.schedule.cron, timezone=zone)
    executor = main_thread_executor() if executor is None else executor
    scheduler = BackgroundScheduler(timezone=zone, executors={"default": executor})
    first = {"next_run_time": datetime.now(timezone.utc)} if now else {}
    scheduler.add_job(run_once, trigger, args=(workflow_file, wait), id=workflow.name,
                      max_instances=1, coalesce=True, misfire_grace_time=None, **first)
    return scheduler


def main_thread_executor():
    """An APScheduler executor that queues due jobs for :func:`serve` to run (in the
    thread that calls it) instead of running them in a thread pool."""
    from apscheduler.executors.base import BaseExecutor

    class MainThreadExecutor(BaseExecutor):
        def __init__(self) -> None:
            super().__init__()
            self.due: queue.Queue = queue.Queue()

        def _do_submit_job(self, job, run_times) -> None:
            self.due.put(job)   # coalesced: one run whatever the missed times

        def next_due(self, timeout: float):
            """The next due job, or None after ``timeout`` seconds."""
            try:
                return self.due.get(timeout=timeout)
            except queue.Empty:
                return None

        def finished(self, job) -> None:
            self._run_job_success(job.id, [])   # the job may be submitted again

    return MainThreadExecutor()


class _SecondCtrlC(KeyboardInterrupt):
    """Ctrl-C during a run after the one that asked to stop after it."""


class _Interrupts:
    """The SIGINT handler of :func:`serve`: between runs, stop; during a run, say that it
    stops after the run, and on a second Ctrl-C interrupt the run."""

    def __init__(self) -> None:
        self.stop = False
        self.running = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.running and self.stop:
            raise _SecondCtrlC
        if self.running:   # os.write: safe even if the run is writing to stderr just now
            with contextlib.suppress(OSError):
                os.write(2, f"{FINISHING}\n".encode())
        self.stop = True


def serve(scheduler, executor, started: Callable[[], None] | None = None) -> None:
    """Start ``scheduler`` and run its due jobs in this (the main) thread until Ctrl-C.

    ``started`` is called once Ctrl-C is handled here, so a Ctrl-C right after what it
    prints already stops cleanly."""
    interrupts = _Interrupts()
    previous = signal.signal(signal.SIGINT, interrupts)
    try:
        scheduler.start()
        if started is not None:
            started()
        while not interrupts.stop:
            job = executor.next_due(timeout=0.2)
            if job is None:
                continue
            interrupts.running = True   # from here a Ctrl-C says it finishes the run
            try:
                if not interrupts.stop:
                    job.func(*job.args, **job.kwargs)
            finally:
                interrupts.running = False
                executor.finished(job)
    finally:
        signal.signal(signal.SIGINT, previous)
        scheduler.shutdown(wait=False)


def run_once(workflow_file: Path, wait: float = 0.0) -> None:
    """One scheduled run: the file is re-read so edits apply; failures are logged, not fatal."""
    from geounet.workflow import load_workflow, run_workflow

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
@click.option("--now", is_flag=True, help="Also run once at start, then on the schedule.")
@verbosity
def command(workflow_file: Path, wait: float, now: bool, quiet: bool, verbose: int) -> None:
    """Run WORKFLOW.yaml at the times of its schedule.cron until interrupted.

    Ctrl-C between runs stops at once; during a run, the first Ctrl-C stops after the run
    and a second one interrupts it (as in geounet run: nothing partial is left).
    """
    executor = main_thread_executor()
    scheduler = build_scheduler(workflow_file, wait, now, executor)
    job = scheduler.get_jobs()[0]

    def announce() -> None:
        if not quiet:
            upcoming = job.trigger.get_next_fire_time(None, datetime.now(timezone.utc))
            click.echo(f"{job.id}: runs on '{job.trigger}', {'now, then ' if now else ''}next "
                       f"at {upcoming.isoformat()}; Ctrl-C to stop", err=True)

    try:
        serve(scheduler, executor, announce)
    except _SecondCtrlC:   # the run has unwound: temporaries removed, lock released
        click.echo(INTERRUPTED, err=True)
        exit_now(130)


def exit_now(status: int) -> NoReturn:
    """End the process with ``status`` once output is flushed, skipping the interpreter's
    teardown of torch and GDAL, which has nothing left to save. In a process whose stderr
    is not its own (a test runner's CliRunner), a plain ``sys.exit``."""
    try:
        own = sys.stderr.fileno() == 2
    except (OSError, ValueError):   # io.UnsupportedOperation: an in-memory stream
        own = False
    if not own:
        sys.exit(status)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)
