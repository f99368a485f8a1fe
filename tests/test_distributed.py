"""Row regions of the global grid and the Dask executor: identical to a local run."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio

from geounet.predict import block_row_extents, predict_raster
from geounet.tiling import TileGrid
from geounet.workflow import load_workflow, run_workflow


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.mark.parametrize("tile,overlap,block_tiles,batch", [(64, 16, 1, 3), (48, 20, 2, 4)])
def test_stacked_regions_equal_the_whole_raster_bit_for_bit(
        tmp_path, odd_rgb, checkpoint, quiet, tile, overlap, block_tiles, batch):
    settings = dict(tile_size=tile, overlap=overlap, block_tiles=block_tiles, batch_size=batch)
    predict_raster(odd_rgb, checkpoint, tmp_path / "m.tif", tmp_path / "p.tif",
                   quiet(**settings))
    rows = len(block_row_extents(TileGrid(137, 229, tile, overlap), block_tiles))
    assert rows >= 3
    masks, probs = [], []
    for k in range(rows):
        result = predict_raster(odd_rgb, checkpoint, tmp_path / f"m{k}.tif",
                                tmp_path / f"p{k}.tif", quiet(region=(k, k + 1), **settings))
        masks.append(read(tmp_path / f"m{k}.tif"))
        probs.append(read(tmp_path / f"p{k}.tif"))
        with rasterio.open(tmp_path / f"m{k}.tif") as part, rasterio.open(odd_rgb) as src:
            top = block_row_extents(TileGrid(137, 229, tile, overlap), block_tiles)[k][0]
            assert part.transform == src.transform @ rasterio.Affine.translation(0, top)
            assert result.height == part.height
    assert np.array_equal(np.concatenate(masks, axis=1), read(tmp_path / "m.tif"))
    assert np.array_equal(np.concatenate(probs, axis=1), read(tmp_path / "p.tif"),
                          equal_nan=True)


@pytest.fixture
def scenes(tmp_path, make_raster, checkpoint):
    """Four rasters and a workflow writer: ``write(folder, executor_yaml)``."""
    rng = np.random.default_rng(11)
    for i, (h, w) in enumerate([(150, 200), (90, 130), (210, 170), (64, 64)]):
        make_raster(rng.integers(0, 255, (3, h, w), dtype=np.uint8), name=f"in/r{i}.tif")

    def write(folder: str, executor: str) -> Path:
        path = tmp_path / f"{folder}.yaml"
        path.write_text(
            f"name: {folder}\ninputs: {{folder: in}}\nmodel: {checkpoint}\n"
            "tiling: {threshold: 0.444, tile_size: 64, overlap: 16, block_tiles: 1}\n"
            f"outputs: {{folder: {folder}, probabilities: '{{stem}}_prob.tif'}}\n{executor}")
        return path

    return write


def assert_same_outputs(a: Path, b: Path, names: list[str]) -> None:
    for stem in names:
        for suffix in ("_mask.tif", "_prob.tif"):
            assert np.array_equal(read(a / f"{stem}{suffix}"), read(b / f"{stem}{suffix}"),
                                  equal_nan=True), f"{stem}{suffix}"
        fa = pyogrio.read_dataframe(a / f"{stem}.gpkg")
        fb = pyogrio.read_dataframe(b / f"{stem}.gpkg")
        assert len(fa) == len(fb) > 0
        assert fa.geometry.geom_equals_exact(fb.geometry, 0).all()
        assert fa.drop(columns="geometry").equals(fb.drop(columns="geometry"))


DASK = "executor: {kind: dask, workers: 2, processes: false%s}\n"


def test_dask_batch_equals_local(scenes, tmp_path):
    local = run_workflow(load_workflow(scenes("local", "")), progress=False)
    dask = run_workflow(load_workflow(scenes("dask", DASK % "")), progress=False)
    assert dask.counts == local.counts == {"done": 4, "skipped": 0, "failed": 0}
    assert_same_outputs(tmp_path / "local", tmp_path / "dask", ["r0", "r1", "r2", "r3"])
    assert [r.summary for r in dask.items] == [r.summary for r in local.items]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dask_split_raster_equals_local_and_leaves_no_parts(scenes, tmp_path):
    """Split into row regions on Dask workers and stacked, a raster is the local run's file
    byte for byte (sha256), not only pixel for pixel."""
    local = run_workflow(load_workflow(scenes("local", "")), progress=False)
    split = DASK % ", split_min_pixels: 20000, region_block_rows: 1"
    report = run_workflow(load_workflow(scenes("split", split)), progress=False)
    assert report.counts == local.counts
    assert_same_outputs(tmp_path / "local", tmp_path / "split", ["r0", "r1", "r2", "r3"])
    for name in ("r0_mask.tif", "r0_prob.tif", "r2_mask.tif", "r2_prob.tif"):
        assert sha256(tmp_path / "split" / name) == sha256(tmp_path / "local" / name), name
    assert not [p for p in (tmp_path / "split").iterdir()
                if p.name.startswith(".") and p.suffix == ".tif"]
    again = run_workflow(load_workflow(scenes("split", split)), progress=False)
    assert again.counts["skipped"] == 4


def test_dask_split_raster_with_only_probabilities(scenes, tmp_path):
    """An item that writes only probabilities, split into row regions, is its local run's
    file byte for byte; no mask is left behind."""
    only = "probabilities: '{stem}_prob.tif', mask: null, vector: null, preview: null}"
    split = DASK % ", split_min_pixels: 20000, region_block_rows: 1"
    reports = {}
    for folder, executor in (("local", ""), ("split", split)):
        path = scenes(folder, executor)
        text = path.read_text().replace("probabilities: '{stem}_prob.tif'}", only)
        path.write_text(text.replace("{folder: in}", "{folder: in, glob: r0.tif}"))
        reports[folder] = run_workflow(load_workflow(path), progress=False)
    assert reports["split"].counts == {"done": 1, "skipped": 0, "failed": 0}
    assert sha256(tmp_path / "split/r0_prob.tif") == sha256(tmp_path / "local/r0_prob.tif")
    assert [p.name for p in (tmp_path / "split").iterdir() if p.suffix == ".tif"] == [
        "r0_prob.tif"]


def test_dask_item_failure_is_reported_and_others_finish(scenes, tmp_path):
    (tmp_path / "in/broken.tif").write_bytes(b"not a raster")
    report = run_workflow(load_workflow(scenes("dask", DASK % "")), progress=False)
    assert report.counts == {"done": 4, "skipped": 0, "failed": 1}
    failed = next(r for r in report.items if r.status == "failed")
    assert failed.input.name == "broken.tif" and "broken.tif" in failed.reason


def test_dask_tasks_vectorize_in_their_own_process(scenes, monkeypatch):
    """Dask's worker processes are daemonic and may not start the polygonizing processes
    vectorize uses on large masks: each task vectorizes in-process."""
    from geounet.vectorize import VectorizeConfig
    from geounet.workflow import discover_inputs, plan_items
    from geounet.workflow.pipeline import write_vectors

    seen = []

    def capture(mask, vector, config, *args, **kwargs):
        seen.append(config.workers)
        raise RuntimeError("captured")

    monkeypatch.setattr("geounet.vectorize.vectorize_raster", capture)
    default = VectorizeConfig().workers   # the local executor keeps vectorize's default
    for executor, workers in (("", default), (DASK % "", 1)):
        workflow = load_workflow(scenes("w", executor))
        item = plan_items(workflow, discover_inputs(workflow))[0]
        with pytest.raises(RuntimeError, match="captured"):
            write_vectors(item, workflow, item.input)
        assert seen[-1] == workers


def test_worker_thread_limit_covers_gdal_compression():
    """A Dask worker limited to N threads also compresses its GeoTIFFs with N threads, so two
    workers on two cores do not each start a compressor thread per core."""
    import torch
    from rasterio._env import del_gdal_config

    from geounet.geotiff import profile as gtiff_profile
    from geounet.io import RasterInfo
    from geounet.workflow.dask import prepare_worker

    info = RasterInfo(Path("x.tif"), 64, 64, 1, "uint8", None, rasterio.Affine.identity(), None)
    threads, gdal_threads = torch.get_num_threads(), rasterio.env.get_gdal_config(
        "GDAL_NUM_THREADS")
    try:
        del_gdal_config("GDAL_NUM_THREADS")
        assert gtiff_profile(info, 1, "uint8", 0)["num_threads"] == "all_cpus"
        prepare_worker(1)
        assert str(gtiff_profile(info, 1, "uint8", 0)["num_threads"]) == "1"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
        del_gdal_config("GDAL_NUM_THREADS")
        if gdal_threads is not None:
            rasterio.env.set_gdal_config("GDAL_NUM_THREADS", gdal_threads)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_worker_reuses_freed_array_memory_under_dasks_malloc_trim_threshold():
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc map and
    zero-fill every array over 128 KiB afresh (25-30 % more CPU per item); a prepared worker
    reuses freed array memory again: no page faults for repeated 8 MiB arrays."""
    code = """
import resource
import numpy as np
from geounet.workflow.dask import prepare_worker
def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        block = np.ones(1 << 20)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
before = faults()
prepare_worker(1)
faults()
print(before, faults())
"""
    env = os.environ | {"MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])
    before, after = map(int, out.stdout.split())
    assert before > 20 * 250   # each 8 MiB array faulted in afresh
    assert after < 50
