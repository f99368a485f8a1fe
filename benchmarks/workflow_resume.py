"""Crash and concurrency bars of `geounet run`, measured side by side in one run.

1. Kill -9 at random moments (>= 10 trials, 1-3 kills each), then let a run finish: every
   output must equal an uninterrupted run's (masks and probabilities pixel for pixel, vector
   features exactly), and no partial file may ever sit at a final output path (checked after
   every kill). Kills that left a temporary file behind happened during a write.
2. A second run with nothing changed: its time over the first run's (CLI wall time, and the
   run's own time from the report).
3. Rewriting one input's content (and touching another's mtime) redoes that one input only.
4. Two concurrent runs of one workflow (the second waiting on the lock): each output produced
   once, identical to the reference.

Run: nice -n 10 .venv/bin/python -m benchmarks.workflow_resume [--trials 10] [--inputs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import rasterio
from rasterio.windows import Window

from benchmarks.common import SAMPLE, WORK
from geounet.outputs import temporary_owner

GEOUNET = [sys.executable, "-m", "geounet"]
ROOT = WORK / "resume"


def make_inputs(count: int, size: int, folder: Path = ROOT / "in") -> Path:
    """``count`` crops of the road scene (``size`` px square) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(SAMPLE / "roads_image.tif") as src:
        for i in range(count):
            path = folder / f"crop{i}.tif"
            if path.exists():
                continue
            window = Window((i * 700) % (src.width - size), (i * 1100) % (src.height - size),
                            size, size)
            profile = src.profile | {"width": size, "height": size,
                                     "transform": src.window_transform(window)}
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=window))
    return folder


def workflow(name: str) -> Path:
    path = ROOT / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ninputs: {{folder: in}}\n"
        f"model: {SAMPLE / 'models' / 'roads.safetensors'}\n"
        f"outputs: {{folder: {name}, probabilities: '{{stem}}_prob.tif'}}\n"
        "vectorize: {connectivity: 8, min_area: 4.0}\n")
    return path


def run(path: Path, *extra: str) -> tuple[int, float]:
    start = time.perf_counter()
    done = subprocess.run([*GEOUNET, "run", str(path), "-q", *extra], capture_output=True,
                          text=True)
    return done.returncode, time.perf_counter() - start


def final_outputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                  and p.suffix in (".tif", ".gpkg"))


def same(a: Path, b: Path) -> bool:
    """Equal outputs: rasters pixel for pixel, vectors feature for feature."""
    if a.suffix == ".tif":
        with rasterio.open(a) as x, rasterio.open(b) as y:
            return (repr(x.profile) == repr(y.profile) and x.tags() == y.tags()
                    and np.array_equal(x.read(), y.read(), equal_nan=True))
    fa, fb = pyogrio.read_dataframe(a), pyogrio.read_dataframe(b)
    return (len(fa) == len(fb) and fa.geometry.geom_equals_exact(fb.geometry, 0).all()
            and fa.drop(columns="geometry").equals(fb.drop(columns="geometry")))


def temporaries(folder: Path, reference: Path) -> list[str]:
    """Names of geounet's temporary files in ``folder``: those that
    :func:`geounet.outputs.temporary_owner` recognizes as made for one of the files a
    complete run leaves (those in ``reference``: outputs, manifest, report), at any depth."""
    if not folder.exists():
        return []
    finals = [p.name for p in reference.iterdir()]
    return [p.name for p in folder.iterdir()
            if any(temporary_owner(p.name, final) is not None for final in finals)]


def check_against(folder: Path, reference: Path) -> tuple[int, int]:
    """(outputs present, outputs that differ from the reference or are unreadable)."""
    present, bad = 0, 0
    for path in final_outputs(folder):
        present += 1
        try:
            bad += not same(path, reference / path.name)
        except Exception:  # unreadable = partial or corrupt
            bad += 1
    return present, bad


def kill_trials(trials: int, reference: Path, first_seconds: float) -> dict:
    rng = random.Random(0)
    wf = workflow("killed")
    out = ROOT / "killed"
    kills = during_writes = partial = 0
    identical = 0
    for _ in range(trials):
        shutil.rmtree(out, ignore_errors=True)
        for _ in range(rng.randint(1, 3)):
            proc = subprocess.Popen([*GEOUNET, "run", str(wf), "-q"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, first_seconds))
            writing = temporaries(out, reference)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            during_writes += bool(writing)
            if out.exists():
                partial += check_against(out, reference)[1]
        code, _ = run(wf)
        present, bad = check_against(out, reference)
        leftovers = temporaries(out, reference)
        identical += (code == 0 and bad == 0 and not leftovers
                      and present == len(final_outputs(reference)))
    return {"trials": trials, "kills": kills, "kills_during_writes": during_writes,
            "partial_or_corrupt_at_final_paths": partial,
            "trials_all_outputs_identical": identical}


def report_counts(folder: Path) -> dict:
    return json.loads((folder / "run_report.json").read_text())["counts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--inputs", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    shutil.rmtree(ROOT / "reference", ignore_errors=True)
    make_inputs(args.inputs, args.size)
    ref_wf = workflow("reference")
    reference = ROOT / "reference"

    code, first = run(ref_wf)
    assert code == 0, "reference run failed"
    first_report = json.loads((reference / "run_report.json").read_text())["seconds"]
    code, second = run(ref_wf)
    second_report = json.loads((reference / "run_report.json").read_text())
    print(f"first run {first:.2f} s (report {first_report:.2f} s); second run {second:.2f} s "
          f"(report {second_report['seconds']:.3f} s, {second_report['counts']})")
    print(f"second/first: CLI wall {second / first:.3f}, in-run "
          f"{second_report['seconds'] / first_report:.4f}")

    # Touch one input's mtime, rewrite another's content: only the latter is redone.
    touched, changed = ROOT / "in/crop0.tif", ROOT / "in/crop1.tif"
    os.utime(touched)
    with rasterio.open(changed, "r+") as dst:
        data = dst.read(window=Window(0, 0, 64, 64))
        dst.write(255 - data, window=Window(0, 0, 64, 64))
    run(ref_wf)
    items = json.loads((reference / "run_report.json").read_text())["items"]
    redone = [Path(i["input"]).name for i in items if i["status"] == "done"]
    print(f"after touching crop0 (mtime) and rewriting crop1 (content): redone {redone}")
    with rasterio.open(changed, "r+") as dst:  # restore, redo it, keep the reference right
        dst.write(data, window=Window(0, 0, 64, 64))
    run(ref_wf)

    # Two concurrent runs on a fresh folder; the second waits for the lock.
    shutil.rmtree(ROOT / "concurrent", ignore_errors=True)
    wf = workflow("concurrent")
    procs = [subprocess.Popen([*GEOUNET, "run", str(wf), "-q", "--json", "--wait", "600"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    reports = [json.loads(p.communicate()[0]) for p in procs]
    done = sorted(r["counts"]["done"] for r in reports)
    inputs = len(list((ROOT / "in").glob("*.tif")))
    present, bad = check_against(ROOT / "concurrent", reference)
    print(f"two concurrent runs: done per run {done} (each output once: "
          f"{done == [0, inputs]}); {present} outputs, {bad} differ from the reference")
    shutil.rmtree(ROOT / "concurrent2", ignore_errors=True)
    wf2 = workflow("concurrent2")
    first_proc = subprocess.Popen([*GEOUNET, "run", str(wf2), "-q"],
                                  stderr=subprocess.DEVNULL)
    time.sleep(min(3.0, first / 2))
    refused = subprocess.run([*GEOUNET, "run", str(wf2), "-q"], capture_output=True, text=True)
    first_proc.wait()
    print(f"without --wait the second run exits {refused.returncode}: "
          f"{refused.stderr.strip()}")

    result = kill_trials(args.trials, reference, first)
    print("kill -9 trials:", json.dumps(result))


if __name__ == "__main__":
    main()
