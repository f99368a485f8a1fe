"""Hostile checkpoints, devices, training states and input files through the real CLI (issue 18).

Reuses the harness of ``test_hostile``: each refusal is the CLI's own exit with one stderr line
that names the file (or device) and the cause, and leaves every file as it was. Files that
cannot be read to an end (a FIFO, a socket, a character device) or a symlink loop are refused
at once instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import struct
import threading
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_hostile import (  # noqa: F401  (fixtures are used by name)
    CRS,
    INPUT_TARGETS,
    TRAIN_FAST,
    TRANSFORM,
    address_space_margin,
    assert_refused,
    assert_succeeded,
    invoke,
    label_mask,
    noise,
    snapshot,
    tiny_checkpoint,
    world,
    write_raster,
)

from geounet.train import last_paths


# -- checkpoint metadata -------------------------------------------------------------------
def doctored(path: Path, change: dict) -> Path:
    """A working checkpoint whose metadata JSON has ``change`` applied (``"arch.depth"``
    names a key of the arch object; the value ``...`` deletes the key)."""
    tiny_checkpoint(path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a mapping)
    meta = json.loads(header["geounet"])
    for key, value in change.items():
        owner, _, name = key.rpartition(".")
        target = meta[owner] if owner else meta
        if value is ...:
            del target[name]
        else:
            target[name] = value
    save_file(tensors, str(path), metadata={**header, "geounet": json.dumps(meta)})
    return path


NAN, INF = float("nan"), float("inf")
# change to the metadata: (what the one line must say after the key)
BAD_METADATA = {
    "bands as a string": ({"bands": "123"}, r"'bands'.*list"),
    "band 0": ({"bands": [0, 1, 2]}, r"'bands'.*1-based.*0"),
    "negative band": ({"bands": [1, -2, 3]}, r"'bands'.*1-based"),
    "band as float": ({"bands": [1, 2.5, 3]}, r"'bands'.*integer"),
    "band as bool": ({"bands": [True, 2, 3]}, r"'bands'.*integer"),
    "tile_size as a string": ({"tile_size": "576"}, r"'tile_size'.*integer"),
    "tile_size 0": ({"tile_size": 0}, r"'tile_size'.*16"),
    "tile_size huge": ({"tile_size": 10**9}, r"'tile_size'"),
    "overlap as a string": ({"overlap": "64"}, r"'overlap'.*integer"),
    "overlap negative": ({"overlap": -1}, r"'overlap'"),
    "overlap over half the tile": ({"overlap": 16}, r"'overlap'.*half"),
    "NaN mean": ({"mean": [100.0, NAN, 100.0]}, r"'mean'.*finite"),
    "infinite mean": ({"mean": [INF, 100.0, 100.0]}, r"'mean'.*finite"),
    "NaN std": ({"std": [50.0, 50.0, NAN]}, r"'std'.*positive"),
    "infinite std": ({"std": [50.0, INF, 50.0]}, r"'std'.*positive"),
    "tiny std": ({"std": [50.0, 1e-300, 50.0]}, r"'std'.*positive"),
    "mean as strings": ({"mean": ["100", "100", "100"]}, r"'mean'.*number"),
    "NaN threshold": ({"threshold": NAN}, r"'threshold'.*0.*1"),
    "threshold 1.5": ({"threshold": 1.5}, r"'threshold'.*0.*1"),
    "threshold -0.1": ({"threshold": -0.1}, r"'threshold'.*0.*1"),
    "threshold as a string": ({"threshold": "0.5"}, r"'threshold'.*number"),
    "class_names as a string": ({"class_names": "background,thing"},
                                r"'class_names'.*list of strings"),
    "class_names as numbers": ({"class_names": [0, 1]}, r"'class_names'.*list of strings"),
    "nodata_policy a number": ({"nodata_policy": 5}, r"'nodata_policy'"),
    "source a string": ({"source": "me"}, r"'source'.*object"),
    "unknown key": ({"colour": "red"}, r"unknown key.*'colour'"),
    "missing bands": ({"bands": ...}, r"'bands'.*missing"),
    "depth 50": ({"arch.depth": 50}, r"'arch.depth'.*50"),
    "width 1e6": ({"arch.width": 10**6}, r"'arch.width'.*1000000"),
    "classes 300": ({"arch.classes": 300}, r"'arch.classes'.*254"),
    "depth as a string": ({"arch.depth": "2"}, r"'arch.depth'.*integer"),
    "in_channels true": ({"arch.in_channels": True}, r"'arch.in_channels'.*integer"),
    "bilinear a string": ({"arch.bilinear": "yes"}, r"'arch.bilinear'.*true or false"),
    "unknown arch key": ({"arch.heads": 4}, r"unknown key.*'arch.heads'"),
    "missing arch key": ({"arch.depth": ...}, r"'arch.depth'.*missing"),
}


@pytest.mark.parametrize("case", BAD_METADATA)
def test_bad_checkpoint_metadata_is_refused_in_one_line(world, case):
    change, cause = BAD_METADATA[case]
    model = doctored(world.root / "doctored.safetensors", change)
    before = snapshot(world.root)
    with address_space_margin():  # building a huge model would fail here, not page
        result = invoke("predict", world.image, "-m", model, "-o", world.out / "mask.tif", "-q")
    assert_refused(result, model, cause)
    assert snapshot(world.root) == before


@pytest.mark.parametrize("command", ["info", "evaluate -m", "predict"])
def test_every_command_reading_checkpoints_validates_them(world, command):
    model = doctored(world.root / "doctored.safetensors", {"mean": [NAN, 1.0, 1.0]})
    args = {"info": ("info", model),
            "evaluate -m": ("evaluate", "-m", model, "--images", world.image, "--labels",
                            world.labels, "-q"),
            "predict": ("predict", world.image, "-m", model, "-o", world.out / "m.tif")}
    assert_refused(invoke(*args[command]), model, r"'mean'.*finite")


def test_weights_are_checked_against_the_architecture_before_it_is_built(world):
    """Within the bounds, depth 6 and width 512 is 1.8x10^10 weights (70 GB): the small
    weights in the file are compared with the shapes it needs before anything is allocated."""
    model = doctored(world.root / "big.safetensors", {"arch.width": 512, "arch.depth": 6})
    with address_space_margin(2**30):
        result = invoke("predict", world.image, "-m", model, "-o", world.out / "m.tif", "-q")
    line = assert_refused(result, model, r"do not fit the declared architecture")
    assert "inc.block.0.weight" in line and "[512, 3, 3, 3]" in line, line


def test_valid_metadata_edges_are_accepted(world):
    """Threshold 0 and 1, overlap 0, integer means: legal values still load and run."""
    model = doctored(world.root / "edges.safetensors",
                     {"threshold": 1.0, "overlap": 0, "mean": [100, 100, 100]})
    assert_succeeded(invoke("predict", world.image, "-m", model, "-o", world.out / "m.tif",
                            "-q"))
    with rasterio.open(world.out / "m.tif") as dst:
        assert (dst.read(1) == 0).all()  # threshold 1: nothing is foreground


# -- devices -------------------------------------------------------------------------------
def _has(device: str) -> bool:
    kind, _, index = device.partition(":")
    if kind == "cuda":
        return torch.cuda.is_available() and (not index or int(index) < torch.cuda.device_count())
    backend = getattr(torch, kind, None) or getattr(torch.backends, kind, None)
    return bool(backend and backend.is_available())


@pytest.mark.parametrize("device", ["mps", "xpu", "meta", "cuda:99", "cuda", "nonsense", "CPU",
                                    "cuda:x", "cpu:1", ""])
def test_unknown_or_absent_device_is_refused_in_one_line(world, device):
    if device in ("mps", "xpu", "cuda") and _has(device):
        pytest.skip(f"{device} exists on this machine")
    before = snapshot(world.root)
    result = invoke("predict", world.image, "-m", world.model, "-o", world.out / "m.tif",
                    "--device", device, "-q")
    line = assert_refused(result, Path(device or "''"), r"devices here: auto, cpu")
    assert "cuda" not in line.split("devices here:")[1] or torch.cuda.is_available()
    assert snapshot(world.root) == before


def test_train_and_predict_resolve_devices_alike(world):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU exists on this machine")
    predicted = invoke("predict", world.image, "-m", world.model, "-o", world.out / "m.tif",
                       "--device", "cuda", "-q")
    trained = invoke("train", "--image", world.image, "--mask", world.labels, "-o",
                     world.out / "m.safetensors", *TRAIN_FAST, "--device", "cuda")
    assert predicted.stderr == trained.stderr
    assert_refused(trained, Path("cuda"), r"not available here; devices here: auto, cpu$")
    assert list(world.out.iterdir()) == []


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_known_devices_still_run(world, device):
    assert_succeeded(invoke("predict", world.image, "-m", world.model, "-o",
                            world.out / "m.tif", "--device", device, "-q"))


# -- training state ------------------------------------------------------------------------
@pytest.fixture
def trained(world) -> tuple[Path, Path]:
    """One finished 1-epoch run in ``world.out``: (its best checkpoint, its state file)."""
    output = world.out / "m.safetensors"
    assert_succeeded(invoke("train", "--image", world.image, "--mask", world.labels, "-o",
                            output, *TRAIN_FAST))
    return output, last_paths(output)[1]


def _rewrite_state(path: Path, edit) -> None:
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a mapping)
    state = json.loads(header["state"])
    edit(state, tensors)
    save_file(tensors, str(path), metadata={**header, "state": json.dumps(state)})


STATES = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
                  r"not a readable training state"),
    "cut in the header": (lambda p: p.write_bytes(p.read_bytes()[:40]),
                          r"not a readable training state"),
    "empty": (lambda p: p.write_bytes(b""), r"not a readable training state"),
    "state not JSON": (lambda p: _rewrite_header(p, "state", "{cut"),
                       r"training state is missing or corrupt"),
    "state not an object": (lambda p: _rewrite_header(p, "state", "[]"),
                            r"training state is missing or corrupt"),
    "no epoch": (lambda p: _rewrite_state(p, lambda s, t: s.pop("epoch")),
                 r"training state is missing or corrupt.*'epoch'"),
    "epoch a string": (lambda p: _rewrite_state(p, lambda s, t: s.update(epoch="1")),
                       r"training state is missing or corrupt.*'epoch'"),
    "no torch RNG": (lambda p: _rewrite_state(p, lambda s, t: t.pop("rng.torch")),
                     r"training state is missing or corrupt.*rng.torch"),
    "bad numpy RNG": (lambda p: _rewrite_state(p, lambda s, t: s.update(numpy_rng={"x": 1})),
                      r"training state is missing or corrupt.*numpy_rng"),
    "optimizer of another model": (
        lambda p: _rewrite_state(p, lambda s, t: t.update(
            {k: torch.zeros(3) for k in t if k.startswith("optimizer.")})),
        r"training state is missing or corrupt.*optimizer"),
}


def _rewrite_header(path: Path, key: str, value: str) -> None:
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a mapping)
    save_file(tensors, str(path), metadata={**header, key: value})


@pytest.mark.parametrize("case", STATES)
def test_broken_training_state_is_refused_and_nothing_changes(world, trained, case):
    output, state = trained
    damage, cause = STATES[case]
    damage(state)
    before = snapshot(world.root)
    result = invoke("train", "--image", world.image, "--mask", world.labels, "-o", output,
                    *TRAIN_FAST[:-3], "--epochs", "2", "--device", "cpu", "-q", "--resume")
    assert_refused(result, state, cause)
    assert snapshot(world.root) == before


# -- input files that are not rasters ------------------------------------------------------
def _name(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">i", len(data)) + data + b"\0" * (-len(data) % 4)


def netcdf_two_variables(path: Path, rows: int = 48, cols: int = 40) -> Path:
    """A classic NetCDF file with two float variables ``red`` and ``nir`` on (y, x): GDAL
    opens it as a dataset of 0 bands with two subdatasets."""
    absent = struct.pack(">ii", 0, 0)
    dims = struct.pack(">ii", 10, 2) + _name("y") + struct.pack(">i", rows) + _name("x") \
        + struct.pack(">i", cols)
    size = rows * cols * 4

    def variables(begin: int) -> bytes:
        return b"".join(_name(v) + struct.pack(">iii", 2, 0, 1) + absent
                        + struct.pack(">iii", 5, size, begin + i * size)
                        for i, v in enumerate(("red", "nir")))

    head = b"CDF\x01" + struct.pack(">i", 0) + dims + absent + struct.pack(">ii", 11, 2)
    begin = len(head) + len(variables(0))
    data = b"".join(np.full(rows * cols, i + 1, ">f4").tobytes() for i in range(2))
    path.write_bytes(head + variables(begin) + data)
    return path


def geopackage_two_tables(path: Path) -> Path:
    """A GeoPackage with raster tables ``a`` and ``b``, saved under ``path`` (a .tif name)."""
    gpkg = path.with_suffix(".gpkg")
    profile = {"driver": "GPKG", "width": 40, "height": 48, "count": 1, "dtype": "uint8",
               "crs": CRS, "transform": TRANSFORM}
    for table, extra in (("a", {}), ("b", {"APPEND_SUBDATASET": "YES"})):
        with rasterio.open(gpkg, "w", RASTER_TABLE=table, **extra, **profile) as dst:
            dst.write(noise((1, 48, 40)))
    gpkg.rename(path)
    return path


ZERO_BANDS = {
    "GeoPackage of two rasters": (geopackage_two_tables, r"GPKG:.*multi.tif:a, GPKG:.*:b"),
    "NetCDF of two variables": (netcdf_two_variables, r"netcdf:.*multi.tif:red, .*:nir"),
}


@pytest.mark.parametrize("case,target", [pytest.param(c, t, id=f"{c}-{t}")
                                         for c in ZERO_BANDS for t in INPUT_TARGETS])
def test_raster_without_bands_lists_its_subdatasets(world, case, target):
    make, subdatasets = ZERO_BANDS[case]
    bad = make(world.root / "multi.tif")
    before = snapshot(world.root)
    result = invoke(*INPUT_TARGETS[target](world, bad), seconds=60)
    line = assert_refused(result, bad, r"has no raster bands.*2 subdatasets")
    assert "gdal_translate" in line
    assert __import__("re").search(subdatasets, line), line
    assert snapshot(world.root) == before


@contextlib.contextmanager
def unblocked(fifo: Path, after: float = 20.0):
    """If a reader still waits on ``fifo`` after ``after`` seconds, open it for writing (so the
    reader sees an end of file) instead of letting the suite hang."""
    done = threading.Event()

    def release() -> None:
        if not done.wait(after):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def make_socket(path: Path) -> Path:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
    return path


def make_loop(path: Path) -> Path:
    other = path.with_name(path.name + ".other")
    other.symlink_to(path.name)
    path.symlink_to(other.name)
    return path


SPECIAL = {
    "FIFO": (make_fifo, r"not a regular file \(a FIFO\)"),
    "socket": (make_socket, r"not a regular file \(a socket\)"),
    "symlink loop": (make_loop, r"loop of symbolic links"),
}
SPECIAL_TARGETS = {
    **INPUT_TARGETS,
    "predict -m": lambda w, p: ("predict", w.image, "-m", p, "-o", w.out / "m.tif", "-q"),
    "info": lambda w, p: ("info", p),
    "train --mask vector": lambda w, p: ("train", "--image", w.image, "--mask", p, "-o",
                                         w.out / "model.safetensors", *TRAIN_FAST),
    "evaluate TRUTH vector": lambda w, p: ("evaluate", w.labels, p),
}


@pytest.mark.parametrize("case,target", [pytest.param(c, t, id=f"{c}-{t}")
                                         for c in SPECIAL for t in SPECIAL_TARGETS])
def test_special_file_as_input_is_refused_at_once(world, case, target):
    make, cause = SPECIAL[case]
    name = {"predict -m": "m.safetensors", "info": "m.safetensors"}.get(
        target, "labels.gpkg" if "vector" in target else "bad.tif")
    bad = make(world.root / name)
    before = snapshot(world.root)
    start = time.monotonic()
    with unblocked(bad):
        result = invoke(*SPECIAL_TARGETS[target](world, bad), seconds=60)
    assert time.monotonic() - start < 15
    assert_refused(result, bad, cause)
    assert snapshot(world.root) == before


def test_character_device_as_input_is_refused(world):
    result = invoke("predict", "/dev/zero", "-m", world.model, "-o", world.out / "m.tif", "-q")
    assert_refused(result, Path("/dev/zero"), r"not a regular file \(a character device\)")
    assert list(world.out.iterdir()) == []


# -- vector truth with absurd coordinates --------------------------------------------------
def _truth(path: Path, *polygons: shapely.Geometry, crs: str = CRS) -> Path:
    gpd.GeoDataFrame({"name": [f"p{i}" for i in range(len(polygons))]},
                     geometry=list(polygons), crs=crs).to_file(path)
    return path


def _blob_polygon() -> list[tuple[float, float]]:
    """Corners of ``label_mask``'s foreground (rows 12..36, cols 10..30) in map units."""
    return [TRANSFORM @ (c, r) for c, r in ((10, 12), (30, 12), (30, 36), (10, 36))]


@pytest.mark.parametrize("value", [1e300, INF, NAN, -1e12])
def test_truth_vertex_far_outside_any_crs_is_refused(world, value):
    corners = _blob_polygon()
    corners[2] = (value, corners[2][1])
    truth = _truth(world.root / "truth.gpkg", shapely.Polygon(_blob_polygon()),
                   shapely.Polygon(corners))
    result = invoke("evaluate", world.labels, truth, "--json")
    assert_refused(result, truth, r"feature 2 .*coordinate")
    trained = invoke("train", "--image", world.image, "--mask", truth, "-o",
                     world.out / "m.safetensors", *TRAIN_FAST)
    assert_refused(trained, truth, r"feature 2 .*coordinate")
    assert list(world.out.iterdir()) == []


def test_truth_reaching_far_beyond_the_image_is_burned_exactly(tmp_path):
    """1 mm pixels: a truth polygon whose far corner lies 3000 km east (3e9 px, past GDAL's
    32-bit pixel range) still burns exactly the pixels it covers on the image."""
    transform = rasterio.transform.from_origin(500000.0, 5000000.0, 0.001, 0.001)
    prediction = label_mask(tmp_path / "prediction.tif", transform=transform)
    corners = [transform @ (c, r) for c, r in ((10, 12), (30, 12), (30, 36), (10, 36))]
    far = [corners[0], (corners[1][0] + 3e6, corners[1][1]),
           (corners[2][0] + 3e6, corners[2][1]), corners[3]]
    truth = _truth(tmp_path / "truth.gpkg", shapely.Polygon(far))
    result = invoke("evaluate", prediction, truth, "--json")
    assert_succeeded(result)
    scores = json.loads(result.stdout)["classes"]["class 1"]["pixel"]
    # Truth covers rows 12..36 from col 10 to the image's edge: the prediction is within it.
    assert scores["precision"] == 1.0
    assert scores["recall"] == pytest.approx((20 * 24) / (30 * 24))


# -- no input of a command is ever one of its outputs ----------------------------------------
def _config(world) -> Path:
    path = world.root / "train.yaml"
    path.write_text(f"images: [{world.image}]\nlabels: [{world.labels}]\n")
    return path


# (argv, the input file given as an output with --overwrite)
EVERY_INPUT = {
    "predict -o MODEL": lambda w: (("predict", w.image, "-m", w.model, "-o", w.model), w.model),
    "predict --vector IMAGE": lambda w: (("predict", w.image, "-m", w.model, "-o",
                                          w.out / "m.tif", "--vector", w.image), w.image),
    "train -o --val-image": lambda w: (("train", "--image", w.image, "--mask", w.labels,
                                        "--val-image", w.root / "val.tif", "--val-label",
                                        w.labels, "-o", w.root / "val.tif", *TRAIN_FAST),
                                       w.root / "val.tif"),
    "train -o --val-label": lambda w: (("train", "--image", w.image, "--mask", w.labels,
                                        "--val-image", w.image, "--val-label", w.labels,
                                        "-o", w.labels, *TRAIN_FAST), w.labels),
    "train last checkpoint = image": lambda w: (
        ("train", "--image", w.root / "m.last.safetensors", "--mask", w.labels, "-o",
         w.root / "m.safetensors", *TRAIN_FAST), w.root / "m.last.safetensors"),
    "train -o CONFIG": lambda w: (("train", "-c", _config(w), "-o", w.root / "train.yaml",
                                   *TRAIN_FAST), w.root / "train.yaml"),
    "train --resume -o IMAGE": lambda w: (("train", "--image", w.image, "--mask", w.labels,
                                           "-o", w.image, "--resume", *TRAIN_FAST), w.image),
}


@pytest.mark.parametrize("case", EVERY_INPUT)
def test_overwrite_never_replaces_an_input_of_the_same_command(world, case):
    (world.root / "val.tif").write_bytes(world.image.read_bytes())
    (world.root / "m.last.safetensors").write_bytes(world.image.read_bytes())
    argv, victim = EVERY_INPUT[case](world)
    before = snapshot(world.root)
    result = invoke(*argv, "--overwrite")
    assert_refused(result, victim, r"same file as the input")
    assert snapshot(world.root) == before


def test_full_disk_in_predict_is_one_line_without_raw_libtiff_lines(world):
    """libtiff prints some write errors raw to stderr, once per block, beside GDAL's own
    report: the command's stderr is our one line only (a real process: the raw lines are
    written to file descriptor 2, which an in-process runner does not see)."""
    import resource
    import subprocess
    import sys

    write_raster(world.image, noise((3, 160, 160)))

    def small_files() -> None:  # writes past 1 KB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))

    result = subprocess.run(
        [sys.executable, "-m", "geounet", "predict", world.image, "-m", world.model,
         "--probabilities", world.out / "prob.tif", "-q"],
        capture_output=True, text=True, preexec_fn=small_files, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert re.match(r"geounet: error: .*prob\.tif: could not be written", result.stderr)
    assert list(world.out.iterdir()) == []
