"""Faults on a real Dask cluster: kill -9 of a worker, of the scheduler, of `geounet run`.

A real cluster (`dask scheduler` and two `dask worker` processes with nannies, on 127.0.0.1)
runs a workflow of four 1024^2 crops of the road scene and one 2048^2 mosaic that is split
into four row regions. Each scenario starts a fresh cluster and `geounet run` (default
verbosity), waits until a task is writing, then kills with SIGKILL:

- ``worker``: the worker process writing a region of the split raster (its pid is in the
  temporary's name); its nanny starts a new one, Dask runs the region again (and the tasks
  whose results that worker held) and the run goes on.
- ``scheduler``: the scheduler; the run reports the items it lost and ends.
- ``client``: `geounet run` itself, while the cluster stays up; for 20 s after the kill every
  final output path and temporary of the output folder is watched (orphan tasks).

Then the cluster is replaced by a fresh one and the workflow runs again ("next run").
Recorded per scenario: the exit status, whether stderr holds a traceback, the attempts
reported, the temporaries left by the run and by the next run, final outputs written after the
client died, which items the next run redid (against those the manifest had not recorded as
done), and whether every output equals a local run's (rasters byte for byte, vectors feature
for feature).

Run: nice -n 10 .venv/bin/python -m benchmarks.dask_faults [--scenarios worker,scheduler,client]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import SAMPLE, WORK, mosaic
from benchmarks.workflow_resume import make_inputs, same

ROOT = WORK / "dask_faults"
GEOUNET = [sys.executable, "-m", "geounet"]
DASK = shutil.which("dask") or str(Path(sys.executable).parent / "dask")
TEMP_MARK = ".geounet-"
STAGING = ".geounet.staging"


def workflow(name: str, executor: str) -> Path:
    path = ROOT / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ninputs: {{folder: in}}\n"
        f"model: {SAMPLE / 'models' / 'roads.safetensors'}\n"
        "tiling: {block_tiles: 1}\n"
        f"outputs: {{folder: {name}, probabilities: '{{stem}}_prob.tif', preview: null}}\n"
        f"vectorize: {{connectivity: 8, min_area: 4.0}}\nexecutor: {executor}\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def cluster() -> Iterator[dict]:
    """A scheduler and two single-threaded workers (with nannies) on 127.0.0.1."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = {"scheduler": subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        **quiet)}
    for i in range(2):
        procs[f"worker{i}"] = subprocess.Popen(
            [DASK, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
             "--no-dashboard", "--name", f"w{i}"], **quiet)
    try:
        from dask.distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield {"address": address, "procs": procs}
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def temporaries(folder: Path) -> list[str]:
    """Every temporary and staged file or folder under ``folder`` (relative names)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if TEMP_MARK in p.name or STAGING in p.parts) if folder.exists() else []


def finals(folder: Path) -> dict[str, int]:
    """Final output names and their mtimes (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()
            if not p.name.startswith(".") and p.suffix in (".tif", ".gpkg")} \
        if folder.exists() else {}


def writer_pid(name: str) -> int:
    """The pid in a temporary's name ``.FINAL.geounet-HOST-PID-TOKEN...``."""
    rest = name.split(TEMP_MARK, 1)[1]
    return int(rest.split("-")[1])


def wait_for_write(folder: Path, prefix: str, timeout: float = 120) -> str | None:
    """The first temporary named ``prefix*`` of an item's output to appear (not the
    manifest's or the report's; None: none in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in (Path(n).name for n in temporaries(folder)):
            if TEMP_MARK in name and name.startswith(prefix) \
                    and "geounet_manifest" not in name and "report" not in name:
                return name
        time.sleep(0.05)
    return None


def manifest_states(folder: Path) -> dict[str, str]:
    path = folder / ".geounet_manifest.json"
    if not path.exists():
        return {}
    items = json.loads(path.read_text())["items"]
    return {Path(k).name: v["state"] for k, v in items.items()}


def report_items(folder: Path) -> list[dict]:
    path = folder / "run_report.json"
    return json.loads(path.read_text())["items"] if path.exists() else []


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(folder: Path, reference: Path) -> dict:
    names = sorted(finals(reference))
    missing = [n for n in names if not (folder / n).exists()]
    rasters = [n for n in names if n.endswith(".tif") and n not in missing]
    vectors = [n for n in names if n.endswith(".gpkg") and n not in missing]
    return {"missing": missing,
            "rasters_byte_identical": sum(sha256(folder / n) == sha256(reference / n)
                                          for n in rasters),
            "rasters": len(rasters),
            "vectors_equal": sum(same(folder / n, reference / n) for n in vectors),
            "vectors": len(vectors)}


def scenario(kind: str, reference: Path) -> dict:
    name = f"fault_{kind}"
    out = ROOT / name
    shutil.rmtree(out, ignore_errors=True)
    result: dict = {"scenario": kind}
    with cluster() as c:
        path = workflow(name, f"{{kind: dask, scheduler: '{c['address']}', "
                              "split_min_pixels: 2000000, region_block_rows: 1}")
        start = time.monotonic()
        run = subprocess.Popen([*GEOUNET, "run", str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        # A region of the split raster being written: a temporary of a region's temporary
        # (its writer's pid is in the name); for the others, any output being written.
        seen = wait_for_write(out, "..scene" if kind == "worker" else "")
        result["killed_during_write"] = seen
        if kind == "worker" and seen:
            os.kill(writer_pid(seen), signal.SIGKILL)
        elif kind == "scheduler":
            c["procs"]["scheduler"].send_signal(signal.SIGKILL)
        elif kind == "client":
            run.send_signal(signal.SIGKILL)
        killed_at = time.time_ns()
        stdout, stderr = run.communicate(timeout=300)
        result["run_seconds"] = round(time.monotonic() - start, 1)
        result["exit"] = run.returncode
        result["stderr_traceback"] = "Traceback" in stderr
        result["stderr_lines"] = len(stderr.strip().splitlines())
        result["stderr_tail"] = stderr.strip().splitlines()[-6:]
        (ROOT / f"{name}.stderr").write_text(stderr)
        if kind == "client":   # orphan tasks: final outputs written after the client died
            time.sleep(20)
            late = [n for n, t in finals(out).items() if t > killed_at]
            result["finals_written_after_client_died"] = late
        result["attempts"] = {Path(i["input"]).name: (i["status"], i["attempts"])
                              for i in report_items(out)} if kind != "client" else None
        result["temporaries_after_run"] = temporaries(out)
    states = manifest_states(out)
    unrecorded = sorted(n for n in finals(ROOT / "in") if states.get(n) != "done")
    with cluster() as c:   # the next run, on a fresh cluster
        path = workflow(name, f"{{kind: dask, scheduler: '{c['address']}', "
                              "split_min_pixels: 2000000, region_block_rows: 1}")
        done = subprocess.run([*GEOUNET, "run", str(path)], capture_output=True, text=True)
    redone = sorted(Path(i["input"]).name for i in report_items(out) if i["status"] == "done")
    result.update({
        "next_exit": done.returncode, "next_stderr_traceback": "Traceback" in done.stderr,
        "next_temporaries": temporaries(out), "unrecorded_before_next": unrecorded,
        "next_redid": redone, "next_redid_only_unrecorded": redone == unrecorded,
        "outputs": compare(out, reference)})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="worker,scheduler,client")
    args = parser.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(4, 1024, ROOT / "in")
    mosaic(SAMPLE / "roads_image.tif", inputs / "scene.tif", 2048)
    reference = ROOT / "reference"   # rebuilt: the code may have changed since
    shutil.rmtree(reference, ignore_errors=True)
    subprocess.run([*GEOUNET, "run", str(workflow("reference", "local")), "-q"], check=True)
    results = [scenario(kind, reference) for kind in args.scenarios.split(",")]
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
