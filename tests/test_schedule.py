"""Ctrl-C stops ``geounet schedule`` promptly and cleanly (issue 19, item 7).

A real ``geounet schedule --now`` process runs a crop of the bundled road scene with the
bundled road model; SIGINT is sent to it with ``os.kill`` as a terminal's Ctrl-C would be.
The first Ctrl-C during a run prints one line at once and the process stops when the run
ends; a second one ends it within 2 s, as Ctrl-C ends ``geounet run``: status 130, no
temporary file left, and nothing at a final name but complete files. Between runs, Ctrl-C
stops at once. SIGTERM (a service manager's stop) interrupts a run at once, as it does
``geounet run``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyogrio
import pytest
import rasterio
from rasterio.windows import Window

from geounet.cli.schedule import FINISHING
from geounet.workflow import MANIFEST, REPORT

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "sample_data" / "roads_image.tif"
MODEL = ROOT / "sample_data" / "models" / "roads.safetensors"
TEMPORARY = ".geounet-"   # in every temporary name (outputs.temporary_sibling)
FINAL = ("a_mask.tif", "a.gpkg", "a_preview.png")


def workflow(folder: Path, size: int) -> Path:
    """A ``size`` x ``size`` px crop of the road scene in ``folder/in`` and a workflow file
    that writes to ``folder/out`` once a year (runs come from ``--now``)."""
    (folder / "in").mkdir()
    with rasterio.open(SCENE) as src:
        window = Window(1024, 1024, size, size)
        profile = src.profile | {"width": size, "height": size,
                                 "transform": src.window_transform(window)}
        with rasterio.open(folder / "in" / "a.tif", "w", **profile) as dst:
            dst.write(src.read(window=window))
    path = folder / "wf.yaml"
    path.write_text(f"name: sched\ninputs: {{folder: in}}\nmodel: {MODEL}\n"
                    "outputs: {folder: out}\nschedule: {cron: '0 0 1 1 *'}\n")
    return path


class Schedule:
    """``geounet schedule`` in a child process, its stderr read line by line."""

    def __init__(self, path: Path, *args: str) -> None:
        self.out = path.parent / "out"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "geounet", "schedule", str(path), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def line(self, containing: str, seconds: float) -> str | None:
        """The next stderr line containing ``containing`` within ``seconds``, else None."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            self.stderr.append(line)
            if containing in line:
                return line
        return None

    def wait_running(self, seconds: float = 60) -> None:
        """Until the run has marked its item as running in the manifest."""
        manifest, deadline = self.out / MANIFEST, time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.rest()
            if manifest.exists() and '"running"' in manifest.read_text():
                return
            time.sleep(0.02)
        pytest.fail("the scheduled run did not start")

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        os.kill(self.process.pid, signum)

    def rest(self) -> str:
        while not self.lines.empty():
            self.stderr.append(self.lines.get())
        return "\n".join(self.stderr)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def schedule():
    started: list[Schedule] = []

    def start(path: Path, *args: str) -> Schedule:
        started.append(Schedule(path, *args))
        return started[-1]

    yield start
    for each in started:
        each.stop()


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if TEMPORARY in p.name]


def test_second_ctrl_c_stops_the_run_within_2_s_leaving_nothing_partial(tmp_path, schedule):
    run = schedule(workflow(tmp_path, 1024), "--now")   # the item takes ~15 s here
    run.wait_running()
    time.sleep(0.5)   # into the model's work
    run.interrupt()
    said = time.monotonic()
    assert run.line("finishing", seconds=2) == FINISHING, run.rest()
    assert time.monotonic() - said < 2
    assert run.process.poll() is None, "the first Ctrl-C must let the run go on"
    time.sleep(0.5)
    run.interrupt()
    start = time.monotonic()
    try:
        code = run.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 10 s after the second Ctrl-C: {run.rest()}")
    seconds = time.monotonic() - start
    assert seconds < 2.0, f"{seconds:.1f} s after the second Ctrl-C"
    assert code == 130, run.rest()
    assert "interrupted" in run.rest() and "Traceback" not in run.rest()
    assert temporaries(tmp_path) == []
    entry = json.loads((run.out / MANIFEST).read_text())["items"]
    assert [e["state"] for e in entry.values()] == ["running"]   # redone by the next run
    for name in FINAL:   # whatever reached a final name is complete
        if (run.out / name).exists():
            if name.endswith(".tif"):
                with rasterio.open(run.out / name) as src:
                    assert src.read(1).shape == (1024, 1024)
            elif name.endswith(".gpkg"):
                pyogrio.read_info(run.out / name)
    assert not (run.out / REPORT).exists()


def test_first_ctrl_c_finishes_the_run_then_stops(tmp_path, schedule):
    run = schedule(workflow(tmp_path, 256), "--now")
    run.wait_running()
    run.interrupt()
    assert run.line("finishing", seconds=2) == FINISHING, run.rest()
    code = run.process.wait(timeout=120)
    assert code == 0, run.rest()
    assert run.rest().count("finishing") == 1
    report = json.loads((run.out / REPORT).read_text())
    assert report["counts"]["done"] == 1
    assert all((run.out / name).is_file() for name in FINAL)
    assert temporaries(tmp_path) == []


def test_ctrl_c_between_runs_stops_at_once(tmp_path, schedule):
    run = schedule(workflow(tmp_path, 64))   # next run: 1 January
    assert run.line("Ctrl-C to stop", seconds=60), run.rest()
    run.interrupt()
    start = time.monotonic()
    assert run.process.wait(timeout=10) == 0, run.rest()
    assert time.monotonic() - start < 2
    assert "finishing" not in run.rest()
    assert not (tmp_path / "out").exists()


def test_sigterm_during_a_run_stops_it_as_it_stops_geounet_run(tmp_path, schedule):
    """How a service manager stops it: the run is interrupted at once, nothing is left."""
    run = schedule(workflow(tmp_path, 1024), "--now")
    run.wait_running()
    time.sleep(0.5)
    run.interrupt(signal.SIGTERM)
    assert run.process.wait(timeout=30) == 143, run.rest()
    assert "terminated" in run.rest() and "finishing" not in run.rest()
    assert temporaries(tmp_path) == []
    assert not (run.out / REPORT).exists()
