"""Dask executor: throughput of 2 workers vs 1 single-threaded worker, and identity with local.

A multi-file batch (crops of the road scene) runs through the same workflow three ways, side
by side: the local executor, a Dask LocalCluster of 1 single-threaded worker, and one of 2
(each worker 1 thread, 1 torch thread). The clusters are started before the clock starts and
reached through ``executor.scheduler``, as a long-lived cluster would be. Each cluster runs the
batch twice into different folders: the first (cold) batch includes the workers' one-off start
(importing torch, loading the model: ~3 s per worker, in parallel); the second (warm) batch is
the steady state of a long-lived cluster and gives the throughput figure. Printed: batch times,
the throughput ratios (1 worker time / 2 workers time) and whether every output equals the
local executor's (masks and probabilities pixel for pixel, vector features exactly). Then one
larger raster is split into row regions on the 2-worker cluster and compared with local.

The CPU may be shared: rerun on a quiet machine for the figure that counts.
Run: nice -n 10 .venv/bin/python -m benchmarks.dask_throughput [--inputs 8] [--size 1280]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from benchmarks.common import SAMPLE, WORK
from benchmarks.workflow_resume import final_outputs, make_inputs, same

ROOT = WORK / "dask"


def workflow(name: str, inputs: Path, executor: str) -> Path:
    path = ROOT / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ninputs: {{folder: {inputs}}}\n"
        f"model: {SAMPLE / 'models' / 'roads.safetensors'}\n"
        f"outputs: {{folder: {name}, probabilities: '{{stem}}_prob.tif'}}\n"
        f"vectorize: {{connectivity: 8, min_area: 4.0}}\nexecutor: {executor}\n")
    return path


def timed_run(path: Path) -> float:
    from geounet.workflow import load_workflow, run_workflow

    shutil.rmtree(ROOT / path.stem, ignore_errors=True)
    start = time.perf_counter()
    report = run_workflow(load_workflow(path), progress=False)
    seconds = time.perf_counter() - start
    assert not report.failed, [r.reason for r in report.items if r.reason]
    return seconds


def identical(a: Path, b: Path) -> bool:
    names = [p.name for p in final_outputs(a)]
    return names == [p.name for p in final_outputs(b)] and all(
        same(a / n, b / n) for n in names)


def main() -> None:
    from dask.distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--size", type=int, default=1280)
    parser.add_argument("--split-size", type=int, default=4096)
    args = parser.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    batch = make_inputs(args.inputs, args.size, ROOT / f"in_{args.size}")

    local = timed_run(workflow("local", batch, "local"))
    cold, warm, cpu = {}, {}, {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=logging.WARNING) as cluster, \
                Client(cluster) as client:
            executor = f"{{kind: dask, scheduler: '{cluster.scheduler_address}'}}"
            # First batch on the fresh cluster: workers import torch and load the model.
            cold[workers] = timed_run(workflow(f"cold{workers}", batch, executor))
            before = client.run(time.process_time)
            warm[workers] = timed_run(workflow(f"dask{workers}", batch, executor))
            after = client.run(time.process_time)
            cpu[workers] = [round(after[w] - before[w], 1) for w in sorted(after)]
    ratio = warm[1] / warm[2]
    same1 = identical(ROOT / "local", ROOT / "dask1")
    same2 = identical(ROOT / "local", ROOT / "dask2")
    print(f"batch of {args.inputs} x {args.size}^2: local {local:.2f} s; on a warm cluster "
          f"(its second batch): dask 1 worker {warm[1]:.2f} s, 2 workers {warm[2]:.2f} s; on a "
          f"fresh cluster (its first batch): 1 worker {cold[1]:.2f} s, 2 workers {cold[2]:.2f} s")
    print(f"throughput ratio 2 workers / 1 single-threaded worker: {ratio:.2f}x on a warm "
          f"cluster, {cold[1] / cold[2]:.2f}x on a fresh one")
    print(f"worker CPU seconds (warm batch): 1 worker {cpu[1]}, 2 workers {cpu[2]} (CPU-s per "
          f"wall-s: {sum(cpu[1]) / warm[1]:.2f} vs {sum(cpu[2]) / warm[2]:.2f}; below 2 means "
          "the cores were shared)")
    print(f"outputs identical to local: 1 worker {same1}, 2 workers {same2}")

    # One raster split into row regions across the 2 workers.
    big = ROOT / "big"
    shutil.rmtree(big, ignore_errors=True)
    big.mkdir()
    from benchmarks.common import mosaic

    mosaic(SAMPLE / "roads_image.tif", big / "scene.tif", args.split_size)
    # Regions of 2 block rows: each recomputes one halo block row, so fewer, taller regions
    # waste less; 4096 px = 4 block rows of 2 x 512 px -> 2 regions, 5 block rows computed.
    local_big = timed_run(workflow("big_local", big, "local"))
    split = ("{kind: dask, workers: 2, processes: true, split_min_pixels: 1000000, "
             "region_block_rows: 2}")
    split_seconds = timed_run(workflow("big_split", big, split))
    from geounet.workflow import discover_inputs, load_workflow, plan_items
    from geounet.workflow.dask import split_regions

    wf = load_workflow(ROOT / "big_split.yaml")
    regions = len(split_regions(plan_items(wf, discover_inputs(wf))[0], wf))
    print(f"one {args.split_size}^2 raster: local {local_big:.2f} s, split into {regions} row "
          f"regions on 2 workers {split_seconds:.2f} s (incl. cluster start); identical: "
          f"{identical(ROOT / 'big_local', ROOT / 'big_split')}")
    print(json.dumps({"local_s": round(local, 2), "dask1_s": round(warm[1], 2),
                      "dask2_s": round(warm[2], 2), "ratio": round(ratio, 3),
                      "dask1_cold_s": round(cold[1], 2), "dask2_cold_s": round(cold[2], 2),
                      "cold_ratio": round(cold[1] / cold[2], 3),
                      "identical": same1 and same2, "split_regions": regions,
                      "split_identical": identical(ROOT / "big_local", ROOT / "big_split")}))


if __name__ == "__main__":
    main()
