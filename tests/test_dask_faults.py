"""Faults on a Dask cluster: nothing final is written without the run, nothing is left behind.

In-process clusters stand in for real ones (``benchmarks/dask_faults.py`` kills real
``dask scheduler`` and ``dask worker`` processes): the scheduler is closed under a running
workflow, and ``geounet run`` is a real process killed with SIGKILL while the in-process
workers go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from geounet.cli import main
from geounet.outputs import temporary_sibling
from geounet.workflow import STAGING, load_workflow, run_workflow
from geounet.workflow import dask as workflow_dask

ROOT = Path(__file__).resolve().parents[1]
TEMP_MARK = ".geounet-"
DASK = "{kind: dask, workers: 2, processes: false}"


@pytest.fixture
def scenes(tmp_path, make_raster, checkpoint):
    """Four rasters in tmp/in; ``write(folder, executor, count)`` writes a workflow for the
    first ``count`` of them."""
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate([(200, 180), (180, 190), (170, 160), (160, 190)]):
        make_raster(rng.integers(0, 255, (3, h, w), dtype=np.uint8), name=f"in/r{i}.tif")

    def write(folder: str, executor: str, count: int = 4) -> Path:
        path = tmp_path / f"{folder}.yaml"
        inputs = ", ".join(f"in/r{i}.tif" for i in range(count))
        path.write_text(
            f"name: {folder}\ninputs: {{list: [{inputs}]}}\nmodel: {checkpoint}\n"
            "tiling: {threshold: 0.444, tile_size: 64, overlap: 16, block_tiles: 1}\n"
            f"outputs: {{folder: {folder}, probabilities: '{{stem}}_prob.tif', preview: null}}\n"
            f"executor: {executor}\n")
        return path

    return write


@pytest.fixture
def cluster():
    """An in-process cluster of 2 single-threaded workers reachable over TCP (closed within
    seconds even when a test killed its scheduler)."""
    from dask.distributed import LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                     host="127.0.0.1", dashboard_address=None, silence_logs=logging.CRITICAL)
    try:
        yield c
    finally:
        with contextlib.suppress(Exception):
            c.close(timeout=2)


def leftovers(folder: Path) -> list[str]:
    """Temporaries and staging files anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if TEMP_MARK in p.name or STAGING in p.parts)


def finals(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("r*") if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for_a_task_writing(folder: Path, timeout: float = 60) -> None:
    """Until an item's output is being written (a temporary or staged file exists)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.exists() and any(
                (TEMP_MARK in p.name or STAGING in p.parts) and p.is_file()
                and p.name.startswith((".r", "r")) for p in folder.rglob("*")):
            return
        time.sleep(0.01)
    raise AssertionError("no task started writing")


def test_a_region_left_by_a_lost_attempt_is_removed_by_the_run(scenes, tmp_path, monkeypatch):
    """A worker killed while it writes a region leaves its files (``..NAME.tif.geounet-*``
    and the region's own); the task runs again elsewhere and the run finishes. The run
    itself removes what the lost attempt left, not only the next run."""
    real = workflow_dask.predict_region
    lost = tmp_path / "lost.txt"   # tasks get a pickled copy of this function: a file

    def killed_once(item, workflow, sha, region):
        if not lost.exists():   # what a SIGKILL in the middle of predict_raster leaves
            part = temporary_sibling(item.outputs["mask"], ".tif")
            lost.write_text(f"{part}\n{temporary_sibling(part)}")
        return real(item, workflow, sha, region)

    monkeypatch.setattr(workflow_dask, "predict_region", killed_once)
    split = DASK[:-1] + ", split_min_pixels: 20000, region_block_rows: 1}"
    report = run_workflow(load_workflow(scenes("split", split, 2)), progress=False)
    assert report.counts == {"done": 2, "skipped": 0, "failed": 0}
    left = [Path(p) for p in lost.read_text().splitlines()]
    assert len(left) == 2 and not any(p.exists() for p in left)
    assert leftovers(tmp_path / "split") == []


def test_a_task_started_again_after_its_worker_died_counts_two_attempts(scenes, monkeypatch):
    """Dask starts a task again elsewhere when its worker dies; the task cannot know, the run
    does: the workers announce every attempt."""
    real = workflow_dask.run_item

    def after_a_lost_attempt(item, workflow, sha):
        workflow_dask.announce_attempt(item)   # the attempt whose worker was killed
        return real(item, workflow, sha)

    monkeypatch.setattr(workflow_dask, "run_item", after_a_lost_attempt)
    report = run_workflow(load_workflow(scenes("again", DASK, 2)), progress=False)
    assert report.counts["done"] == 2
    assert [r.attempts for r in report.items] == [2, 2]


def test_losing_the_scheduler_is_one_line_per_item_and_attempts_are_counted(
        scenes, tmp_path, cluster):
    """The scheduler dies under a run: each item it cost is one line saying so, no Dask
    traceback reaches stderr at default verbosity, an item is never reported as attempted
    more often than it was started, and the next run redoes only what was not recorded."""
    path = scenes("lost", f"{{kind: dask, scheduler: '{cluster.scheduler_address}', "
                          "split_min_pixels: 35000, region_block_rows: 1}")   # r0 is split
    out = tmp_path / "lost"

    def kill_scheduler():
        wait_for_a_task_writing(out)
        cluster.sync(cluster.scheduler.close)

    killer = threading.Thread(target=kill_scheduler)
    killer.start()
    result = CliRunner().invoke(main, ["run", str(path)])
    killer.join()
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "ERROR" not in result.output
    report = json.loads((out / "run_report.json").read_text())
    failed = [i for i in report["items"] if i["status"] == "failed"]
    assert failed, report
    for item in failed:
        assert "Dask cluster lost it" in item["reason"], item
        assert item["attempts"] <= 1, item
    assert all(i["attempts"] == 1 for i in report["items"] if i["status"] == "done")
    recorded = {Path(i["input"]).name for i in report["items"] if i["status"] == "done"}
    again = run_workflow(load_workflow(scenes("lost", "local")), progress=False)
    assert {r.input.name for r in again.items if r.status == "done"} == \
        {f"r{i}.tif" for i in range(4)} - recorded
    assert leftovers(out) == []


def test_tasks_outliving_a_killed_run_write_no_final_output(scenes, tmp_path, cluster):
    """``geounet run`` killed with SIGKILL while the cluster works on: the tasks already
    running write nothing at the final paths (no lock is held any more, nothing would be
    recorded), and the next run leaves no temporary and writes what a local run writes."""
    path = scenes("orphans", f"{{kind: dask, scheduler: '{cluster.scheduler_address}'}}", 3)
    out = tmp_path / "orphans"
    proc = subprocess.Popen([sys.executable, "-m", "geounet", "run", str(path), "-q"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_a_task_writing(out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = finals(out)
    deadline = time.monotonic() + 20   # until the orphans' workers are idle again
    while any(w.state.executing_count for w in cluster.workers.values()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    assert finals(out) == before, "a task wrote a final output after its run was killed"
    report = run_workflow(load_workflow(path), progress=False)
    assert report.counts["failed"] == 0
    assert leftovers(out) == []
    run_workflow(load_workflow(scenes("local", "local", 3)), progress=False)
    for name in sorted(finals(tmp_path / "local")):
        if name.endswith(".tif"):
            assert sha256(out / name) == sha256(tmp_path / "local" / name), name


def test_the_staging_folder_is_never_followed_when_it_is_a_symlink(scenes, tmp_path):
    """A planted ``.geounet.staging`` symlink is refused, not emptied or written through."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    out = tmp_path / "planted"
    out.mkdir()
    (out / STAGING).symlink_to(elsewhere)
    result = CliRunner().invoke(main, ["run", str(scenes("planted", "local")), "-q"])
    assert result.exit_code == 1 and STAGING in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]
    assert os.path.islink(out / STAGING)
