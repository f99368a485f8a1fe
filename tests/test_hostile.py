"""Hostile files, rasters and models through the real CLI (issue 6).

Each case is generated here and fed to every command it applies to (predict, vectorize, train,
evaluate) in-process with click's CliRunner. A refusal must be the CLI's own exit (non-zero,
no traceback) with exactly one line on stderr that names the file and the cause, and must
leave nothing at the destination: no output, no temporary sibling, a previous output
unchanged. Valid-but-odd rasters must give outputs on the input's grid, CRS and transform.

Cases that need another user (unreadable files, unwritable folders when the suite runs as
root) run in one child process that drops to ``nobody``; a full disk is simulated with
``RLIMIT_FSIZE`` (CPython ignores SIGXFSZ, so writes past the limit fail with EFBIG).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import re
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
import torch
from click.testing import CliRunner
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window
from safetensors.torch import save_file

import geounet.polygonize
import geounet.predict
from geounet.checkpoint import FORMAT, ModelMetadata, read_metadata, save_checkpoint
from geounet.cli import main
from geounet.model import UNet, UNetConfig

CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 5000000.0, 0.5, 0.5)
TRAIN_FAST = ("--patch", "16", "--width", "4", "--depth", "2", "--batch-size", "2",
              "--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu", "-q")


# -- harness -------------------------------------------------------------------------------
class TookTooLong(BaseException):
    """A command ran past its time limit (a hang must fail the test, not the suite)."""


def _too_long(signum, frame):
    raise TookTooLong


def invoke(*args, seconds: float = 120) -> object:
    """Run ``geounet ARGS`` in-process; a run past ``seconds`` is stopped and reported."""
    previous = signal.signal(signal.SIGALRM, _too_long)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_refused(result, path: Path, cause: str) -> str:
    """The CLI's own non-zero exit; one stderr line naming ``path`` and matching ``cause``."""
    assert isinstance(result.exception, SystemExit), f"crashed: {result.exception!r}"
    assert result.exit_code not in (0, None)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("geounet: error:"), lines[0]
    assert path.name in lines[0], lines[0]
    assert re.search(cause, lines[0], re.IGNORECASE), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def assert_succeeded(result) -> None:
    assert result.exit_code == 0, (result.exception, result.output)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its content."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def noise(shape, dtype="uint8", seed=0) -> np.ndarray:
    values = np.random.default_rng(seed).integers(1, 250, shape)
    scale = {"uint16": 200, "int16": -100, "float32": 0.01, "float64": 0.01}.get(dtype, 1)
    return (values * scale).astype(dtype)


def blob(shape) -> tuple[slice, slice]:
    """The foreground rectangle of a label mask of ``shape`` (rows, cols): never empty."""
    (h, w) = shape
    return (slice(h // 4, max(h // 4 + 1, 3 * h // 4)), slice(w // 4, max(w // 4 + 1, 3 * w // 4)))


def write_raster(path: Path, array: np.ndarray, crs=CRS, transform=TRANSFORM, nodata=None,
                 **options) -> Path:
    profile = {"driver": "GTiff", "width": array.shape[2], "height": array.shape[1],
               "count": array.shape[0], "dtype": array.dtype.name, "crs": crs,
               "transform": transform, "nodata": nodata, **options}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def label_mask(path: Path, shape=(48, 40), **profile) -> Path:
    labels = np.zeros((1, *shape), np.uint8)
    labels[(0, *blob(shape))] = 1
    return write_raster(path, labels, **profile)


def tiny_checkpoint(path: Path, bands: int = 3, width: int = 4) -> Path:
    arch = UNetConfig(bands, 1, width, 2)
    torch.manual_seed(0)
    meta = ModelMetadata(arch, tuple(range(1, bands + 1)), (100.0,) * bands, (50.0,) * bands,
                         ("background", "thing"), tile_size=32, overlap=8)
    return save_checkpoint(path, UNet(arch).eval(), meta)


@dataclass
class World:
    """Good inputs beside the bad one, and an output folder to watch."""

    root: Path
    image: Path
    labels: Path
    model: Path
    out: Path


@pytest.fixture
def world(tmp_path) -> World:
    out = tmp_path / "out"
    out.mkdir()
    return World(tmp_path, write_raster(tmp_path / "image.tif", noise((3, 48, 40))),
                 label_mask(tmp_path / "labels.tif"),
                 tiny_checkpoint(tmp_path / "model.safetensors"), out)


# Every command with an input raster, and which of its inputs is the bad one.
INPUT_TARGETS = {
    "predict": lambda w, p: ("predict", p, "-m", w.model, "-o", w.out / "mask.tif", "-q"),
    "vectorize": lambda w, p: ("vectorize", p, "-o", w.out / "polygons.gpkg", "-q"),
    "train --image": lambda w, p: ("train", "--image", p, "--mask", w.labels, "-o",
                                   w.out / "model.safetensors", *TRAIN_FAST),
    "train --mask": lambda w, p: ("train", "--image", w.image, "--mask", p, "-o",
                                  w.out / "model.safetensors", *TRAIN_FAST),
    "evaluate PRED": lambda w, p: ("evaluate", p, w.labels),
    "evaluate TRUTH": lambda w, p: ("evaluate", w.labels, p),
}
# Every command with an output: (argv writing to ``dest``, the input it reads).
OUTPUT_TARGETS = {
    "predict": lambda w, dest: ("predict", w.image, "-m", w.model, "-o", dest, "-q"),
    "predict --probabilities": lambda w, dest: ("predict", w.image, "-m", w.model,
                                                "--probabilities", dest, "-q"),
    "vectorize": lambda w, dest: ("vectorize", w.labels, "-o", dest, "-q"),
    "train": lambda w, dest: ("train", "--image", w.image, "--mask", w.labels, "-o", dest,
                              *TRAIN_FAST),
    "evaluate -o": lambda w, dest: ("evaluate", w.labels, w.labels, "-o", dest, "-q"),
}
OUTPUT_NAMES = {"predict": "mask.tif", "predict --probabilities": "prob.tif",
                "vectorize": "polygons.gpkg", "train": "model.safetensors",
                "evaluate -o": "report.json"}


# -- files ---------------------------------------------------------------------------------
def huge_header(path: Path, width: int, height: int, bands: int = 1) -> Path:
    """A ~600-byte GeoTIFF whose header claims ``width x height`` pixels (one strip)."""
    write_raster(path, np.ones((bands, 16, 16), np.uint8), tiled=False, blockysize=16)
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        offset = ifd + 2 + 12 * i
        tag = struct.unpack_from("<H", data, offset)[0]
        claims = {256: width, 257: height, 278: height}  # width, length, rows per strip
        if tag in claims:
            struct.pack_into("<HHII", data, offset, tag, 4, 1, claims[tag])  # as LONG
    path.write_bytes(bytes(data))
    return path


def truncated(path: Path, bands: int = 1) -> Path:
    """The world's grid, tiled and compressed, cut in half: the header reads, pixels don't."""
    write_raster(path, noise((bands, 48, 40)), tiled=True, blockxsize=16, blockysize=16,
                 compress="deflate")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# case: (make(path, bands), what the message must say). ``bands``: what the slot expects.
FILES = {
    "not a raster": (lambda p, b: p.write_text("field notes, not pixels\n") and p,
                     r"not a readable raster|not recognized"),
    "empty file": (lambda p, b: p.touch() or p, r"not a readable raster|not recognized"),
    "truncated GeoTIFF": (truncated, r"truncated|corrupt|IReadBlock failed"),
    "nonexistent": (lambda p, b: p, r"no such file|does not exist"),
    "directory": (lambda p, b: p.mkdir() or p, r"is a directory|two files or two folders"),
    "header claims 2e6 x 2e6 px": (lambda p, b: huge_header(p, 2_000_000, 2_000_000, b),
                                   r"claims 2000000x2000000 pixels|does not match"),
    "header claims 1e6 x 1e6 px": (lambda p, b: huge_header(p, 1_000_000, 1_000_000, b),
                                   r"truncated|corrupt|IReadBlock failed|in memory|"
                                   r"does not match"),
}
SLOT_BANDS = {"predict": 3, "train --image": 3}
# The 1e6 x 1e6 header is under MAX_PIXELS: whole-raster readers must refuse it on memory.


@contextlib.contextmanager
def address_space_margin(margin: int = 4 * 2**30):
    """Cap this process's address space near its current size: a huge allocation fails fast
    with MemoryError instead of paging (whatever the machine's overcommit policy)."""
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + margin, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("case,target", [pytest.param(case, target, id=f"{case}-{target}")
                                         for case in FILES for target in INPUT_TARGETS])
def test_bad_input_file_is_refused_in_one_line(world, case, target):
    make, cause = FILES[case]
    bad = make(world.root / ("bad" if case in ("directory", "nonexistent") else "bad.tif"),
               SLOT_BANDS.get(target, 1))
    before = snapshot(world.root)
    with address_space_margin():
        result = invoke(*INPUT_TARGETS[target](world, bad), seconds=60)
    assert_refused(result, bad, cause)
    assert snapshot(world.root) == before


def test_huge_header_is_refused_before_allocating_by_whole_raster_readers(world):
    """Both inputs claim 1e6 x 1e6 px (a TB): refused on memory, not after trying."""
    huge = huge_header(world.root / "huge.tif", 1_000_000, 1_000_000)
    importlib.import_module("geounet.train")  # imports are not what this test measures
    importlib.import_module("geounet.evaluate")
    tracemalloc.start()
    try:
        with address_space_margin():
            results = {"evaluate": invoke("evaluate", huge, huge),
                       "train": invoke("train", "--image", huge, "--mask", huge, "-o",
                                       world.out / "m.safetensors", *TRAIN_FAST)}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20
    assert list(world.out.iterdir()) == []
    for result in results.values():
        assert_refused(result, huge, r"in memory")


def sparse_huge(path: Path, size: int = 1_000_000) -> Path:
    """A valid, sparse GeoTIFF of ``size`` x ``size`` px: one written 64 px tile, nodata 0."""
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1,
                       dtype="uint8", crs=CRS, transform=TRANSFORM, nodata=0, tiled=True,
                       blockxsize=4096, blockysize=4096, compress="deflate",
                       sparse_ok=True, bigtiff="yes") as dst:
        dst.write(np.ones((1, 64, 64), np.uint8), window=Window(0, 0, 64, 64))
    return path


def interrupt_after(monkeypatch, module, name: str, calls: int) -> None:
    """Make ``module.name`` raise KeyboardInterrupt (as Ctrl-C would) on call ``calls + 1``."""
    original, count = getattr(module, name), [0]

    def counting(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)


@pytest.mark.parametrize("command", ["predict", "vectorize"])
def test_huge_sparse_raster_is_streamed_in_blocks(world, monkeypatch, command):
    """A 1e6 x 1e6 px (1 TB) raster: the streamed commands hold blocks only; stopped after a
    few blocks with Ctrl-C, they leave nothing behind."""
    huge = sparse_huge(world.root / "huge.tif")
    if command == "predict":
        model = tiny_checkpoint(world.root / "one.safetensors", bands=1)
        interrupt_after(monkeypatch, geounet.predict._Engine, "_write", 4)
        args = ("predict", huge, "-m", model, "-o", world.out / "mask.tif", "-q")
    else:
        interrupt_after(monkeypatch, geounet.polygonize, "Window", 4)
        args = ("vectorize", huge, "-o", world.out / "polygons.gpkg", "-q")
    tracemalloc.start()
    try:
        # A full run would take days; closing the interrupted 1 TB sparse output writes its
        # ~60 MB tile index, which takes seconds, more on a loaded machine.
        result = invoke(*args, seconds=60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 130, (result.exception, result.output)
    assert "interrupted" in result.stderr and "Traceback" not in result.output
    assert list(world.out.iterdir()) == []
    # predict carries one overlap-high strip across the width (2 x 8 x 1e6 float32 = 64 MB).
    assert peak < (160 if command == "predict" else 64) * 2**20, peak


# -- outputs -------------------------------------------------------------------------------
@pytest.mark.parametrize("target", OUTPUT_TARGETS)
def test_existing_output_without_overwrite_is_kept(world, target):
    dest = world.out / OUTPUT_NAMES[target]
    dest.write_bytes(b"previous output")
    before = snapshot(world.root)
    assert_refused(invoke(*OUTPUT_TARGETS[target](world, dest)), dest,
                   r"already exists; pass --overwrite")
    assert snapshot(world.root) == before


@pytest.mark.parametrize("target", OUTPUT_TARGETS)
def test_output_equal_to_input_is_refused(world, target):
    source = world.labels if target in ("vectorize", "evaluate -o") else world.image
    before = snapshot(world.root)
    assert_refused(invoke(*OUTPUT_TARGETS[target](world, source), "--overwrite"), source,
                   r"same file as the input")
    assert snapshot(world.root) == before


@contextlib.contextmanager
def disk_full_after(nbytes: int):
    """Writes past ``nbytes`` into any file fail with EFBIG, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


DISK_FULL_TARGETS = {**OUTPUT_TARGETS, **{
    # One 160 px tile in one 256 px output block: GDAL writes it only when the file is
    # closed, and rasterio does not raise on that failure.
    "predict, flushed on close": lambda w, dest: (*OUTPUT_TARGETS["predict --probabilities"](
        w, dest), "--tile", "160", "--overlap", "0")}, **{
    f"vectorize {ext}": (lambda w, dest: ("vectorize", w.root / "dots.tif", "-o", dest, "-q"))
    for ext in (".geojson", ".shp", ".parquet")}}


@pytest.mark.parametrize("target", DISK_FULL_TARGETS)
def test_disk_full_keeps_the_previous_output(world, target):
    name = OUTPUT_NAMES.get(target, "prob.tif" if target.startswith("predict")
                            else "polygons" + target.split()[-1])
    dest = world.out / name
    dots = np.zeros((1, 64, 64), np.uint8)
    dots[0, ::2, ::2] = 1                       # 1024 separate features: a large vector file
    write_raster(world.root / "dots.tif", dots)
    dest.write_bytes(b"previous output")
    if name.endswith(".shp"):
        for part in (".shx", ".dbf", ".prj"):
            dest.with_suffix(part).write_bytes(b"previous " + part.encode())
    if target.startswith("predict"):  # noise: ~100 KB of probabilities, ~10 KB of mask
        write_raster(world.image, noise((3, 160, 160)))
    before = snapshot(world.root)
    with disk_full_after({"evaluate -o": 200, "predict": 1024}.get(target, 4096)):
        result = invoke(*DISK_FULL_TARGETS[target](world, dest), "--overwrite")
    assert_refused(result, dest, r"could not be written: (the disk is full|the write failed)")
    assert snapshot(world.root) == before


@dataclass
class PermissionCase:
    argv: list[str]
    path: str       # the file the message must name
    cause: str


def _permission_cases(folder: Path) -> dict[str, PermissionCase]:
    """Cases over ``folder``: an unreadable raster/checkpoint, and a read-only out folder."""
    locked, model = folder / "locked.tif", folder / "model.safetensors"
    free, closed = folder / "free", folder / "closed"
    cases = {f"unreadable {target}": PermissionCase(
        [str(a) for a in INPUT_TARGETS[target](World(folder, folder / "image.tif",
                                                     folder / "labels.tif", model, free),
                                               locked)],
        str(locked), r"permission denied|not readable")
        for target in INPUT_TARGETS}
    cases["unreadable checkpoint"] = PermissionCase(
        ["predict", str(folder / "image.tif"), "-m", str(folder / "locked.safetensors"), "-o",
         str(free / "mask.tif"), "-q"], str(folder / "locked.safetensors"),
        r"permission denied|not readable")
    world = World(folder, folder / "image.tif", folder / "labels.tif", model, closed)
    for target, name in OUTPUT_NAMES.items():
        cases[f"unwritable folder {target}"] = PermissionCase(
            [str(a) for a in OUTPUT_TARGETS[target](world, closed / name)], str(closed),
            r"not writable|permission denied")
    return cases


CHILD = r"""
import json, os, sys
from click.testing import CliRunner
import importlib
import geounet.cli, geounet.evaluate, geounet.predict, geounet.train, geounet.vectorize
import geopandas, pyogrio, safetensors.torch, tqdm
for command in geounet.cli.COMMANDS:   # imported when the command runs: before the drop
    importlib.import_module(f"geounet.cli.{command}")
if os.geteuid() == 0:   # drop to nobody: root reads and writes anything
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    r = CliRunner().invoke(geounet.cli.main, argv, catch_exceptions=True)
    out[name] = {"exit": r.exit_code, "stderr": r.stderr, "output": r.output,
                 "clean_exit": isinstance(r.exception, SystemExit), "exc": repr(r.exception)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def permission_results():
    """Run every permission case in one child process (as ``nobody`` when we are root)."""
    folder = Path(tempfile.mkdtemp(prefix="geounet-hostile-"))
    try:
        folder.chmod(0o755)
        write_raster(folder / "image.tif", noise((3, 48, 40)))
        label_mask(folder / "labels.tif")
        tiny_checkpoint(folder / "model.safetensors")
        write_raster(folder / "locked.tif", noise((3, 48, 40)))
        tiny_checkpoint(folder / "locked.safetensors")
        for path in folder.iterdir():
            path.chmod(0o644)
        for name in ("locked.tif", "locked.safetensors"):
            (folder / name).chmod(0)
        (folder / "free").mkdir(mode=0o777)
        (folder / "free").chmod(0o777)
        (folder / "closed").mkdir()
        (folder / "closed").chmod(0o555)
        cases = _permission_cases(folder)
        before = snapshot(folder) if os.geteuid() == 0 else None
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps({k: c.argv for k, c in cases.items()})],
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads(done.stdout.strip().splitlines()[-1])
        leftovers = sorted(str(p.relative_to(folder)) for d in ("free", "closed")
                           for p in (folder / d).rglob("*"))
        unchanged = before is None or snapshot(folder) == before
        yield cases, results, leftovers, unchanged
    finally:
        for path in folder.rglob("*"):
            path.chmod(stat.S_IRWXU)
        shutil.rmtree(folder)


@pytest.mark.parametrize("case", list(_permission_cases(Path("/x"))))
def test_permissions_are_refused_in_one_line(permission_results, case):
    cases, results, leftovers, unchanged = permission_results
    result, expected = results[case], cases[case]
    assert result["clean_exit"] and result["exit"] not in (0, None), result
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1, result["stderr"]
    assert lines[0].startswith("geounet: error:") and "Traceback" not in result["output"]
    assert Path(expected.path).name in lines[0], lines[0]
    assert re.search(expected.cause, lines[0], re.IGNORECASE), lines[0]
    assert leftovers == [] and unchanged


# -- models --------------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _other_architecture(path: Path) -> Path:
    """Weights of a width-8 U-Net under metadata that declares width 4."""
    small = UNetConfig(3, 1, 4, 2)
    meta = ModelMetadata(small, (1, 2, 3), (100.0,) * 3, (50.0,) * 3, ("background", "x"))
    tensors = {k: v.contiguous() for k, v in UNet(UNetConfig(3, 1, 8, 2)).state_dict().items()}
    save_file(tensors, path, metadata={"format": FORMAT, "version": "1",
                                       "geounet": meta.to_json()})
    return path


def _truncated_checkpoint(path: Path) -> Path:
    data = tiny_checkpoint(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _pickle(path: Path) -> Path:
    torch.save({"state_dict": _Payload(path.parent / "pwned")}, path)
    return path


def _plain_pickle(path: Path) -> Path:
    import pickle

    path.write_bytes(pickle.dumps(_Payload(path.parent / "pwned"), protocol=2))
    return path


MODELS = {
    "different architecture": (_other_architecture, "model.safetensors",
                               r"do not fit the declared architecture"),
    "truncated checkpoint": (_truncated_checkpoint, "model.safetensors",
                             r"not a readable geounet checkpoint"),
    "pickle payload (.safetensors)": (_pickle, "evil.safetensors", r"pickled .* refused"),
    "pickle payload (.pt)": (_pickle, "evil.pt", r"pickled .* refused"),
    "raw pickle payload (.pth)": (_plain_pickle, "evil.pth", r"pickled .* refused"),
    "safetensors, not geounet": (
        lambda p: save_file({"w": torch.zeros(2)}, p) or p, "plain.safetensors",
        r"not a geounet checkpoint"),
    "checkpoint is a directory": (lambda p: p.mkdir() or p, "dir.safetensors",
                                  r"is a folder, not a checkpoint file"),
    "4-band model, 3-band raster": (lambda p: tiny_checkpoint(p, bands=4), "four.safetensors",
                                    r"raster has 3 band\(s\) but the model expects 4"),
}


@pytest.mark.parametrize("case", MODELS)
def test_bad_checkpoint_is_refused_and_never_runs(world, case):
    make, name, cause = MODELS[case]
    model = make(world.root / name)
    before = snapshot(world.root)
    result = invoke("predict", world.image, "-m", model, "-o", world.out / "mask.tif", "-q")
    named = world.image if case.startswith("4-band") else model
    assert_refused(result, named, cause)
    assert snapshot(world.root) == before
    assert not (world.root / "pwned").exists()


def test_pickle_payloads_are_live(tmp_path):
    """Control for the test above: loading these files with pickle does run the payload."""
    import pickle

    torch.load(_pickle(tmp_path / "evil.pt"), weights_only=False)
    assert (tmp_path / "pwned").exists()
    (tmp_path / "pwned").unlink()
    pickle.loads(_plain_pickle(tmp_path / "evil.pth").read_bytes())
    assert (tmp_path / "pwned").exists()


# -- valid but odd rasters -----------------------------------------------------------------
@dataclass(frozen=True)
class Odd:
    """A raster case: grid, type and which pixels are invalid (the top ``holes`` rows)."""

    shape: tuple[int, int] = (48, 40)
    dtype: str = "uint8"
    crs: str | None = CRS
    transform: Affine = TRANSFORM
    nodata: float | None = None
    holes: str | None = None     # "all", "nan" (NaN), "naninf" (NaN and inf), "mask"
    options: dict = field(default_factory=dict)

    @property
    def hole_rows(self) -> slice:
        return slice(0, self.shape[0] if self.holes == "all" else
                     (max(1, self.shape[0] // 8) if self.holes else 0))

    def write(self, path: Path, array: np.ndarray) -> Path:
        """Write ``array`` (1, rows, cols) with this case's profile and invalid pixels."""
        array = array.copy()
        rows = self.hole_rows
        if self.holes in ("nan", "naninf"):
            array[0, rows] = np.nan
            if self.holes == "naninf":
                array[0, rows, ::2] = np.inf
        elif self.holes == "all":
            array[0, rows] = self.nodata
        write_raster(path, array, self.crs, self.transform, self.nodata, **self.options)
        if self.holes == "mask":
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
                valid = np.full(self.shape, 255, np.uint8)
                valid[rows] = 0
                dst.write_mask(valid)
        return path

    def image(self, path: Path) -> Path:
        return self.write(path, noise((1, *self.shape), self.dtype))

    def labels(self, path: Path) -> Path:
        labels = np.zeros((1, *self.shape), self.dtype)
        labels[(0, *blob(self.shape))] = 1
        return self.write(path, labels)


TILED = {"tiled": True, "blockxsize": 16, "blockysize": 16}
ODD = {
    "no CRS": Odd(crs=None),
    "no geotransform": Odd(crs=None, transform=Affine.identity()),
    "rotated": Odd(transform=TRANSFORM @ Affine.rotation(30)),
    "geographic": Odd(crs="EPSG:4326", transform=from_origin(12.5, 45.5, 1e-5, 1e-5)),
    "1x1": Odd(shape=(1, 1)),
    "1x300": Odd(shape=(1, 300)),
    "300x1": Odd(shape=(300, 1)),
    "smaller than a tile": Odd(shape=(20, 27)),
    "uint16": Odd(dtype="uint16"),
    "int16": Odd(dtype="int16"),
    "float32": Odd(dtype="float32"),
    "float64": Odd(dtype="float64"),
    "all nodata": Odd(nodata=0, holes="all"),
    "NaN and inf": Odd(dtype="float32", holes="naninf"),
    "nodata NaN": Odd(dtype="float32", nodata=float("nan"), holes="nan"),
    "striped LZW": Odd(options={"tiled": False, "compress": "lzw"}),
    "tiled DEFLATE": Odd(options={**TILED, "compress": "deflate"}),
    "tiled JPEG": Odd(options={**TILED, "compress": "jpeg"}),
    "internal mask": Odd(holes="mask"),
    "100000x64": Odd(shape=(64, 100_000), options={"tiled": True, "compress": "deflate"}),
}
TOO_SMALL_TO_TRAIN = {"1x1", "1x300", "300x1", "smaller than a tile"}


def _odd(skip: dict[str, str]) -> list:
    """The ODD cases a command applies to (``skip``: case -> why not)."""
    return [case for case in ODD if case not in skip]


def invalid_pixels(case: Odd) -> np.ndarray:
    invalid = np.zeros(case.shape, bool)
    invalid[case.hole_rows] = True
    return invalid


@pytest.mark.parametrize("case", _odd({
    "100000x64": "covered by test_odd_inputs.test_very_wide_raster (447 tiles)"}))
def test_predict_odd_raster_keeps_grid_and_nodata(tmp_path, case):
    odd = ODD[case]
    raster = odd.image(tmp_path / "in.tif")
    out = tmp_path / "mask.tif"
    model = tiny_checkpoint(tmp_path / "one.safetensors", bands=1)
    assert_succeeded(invoke("predict", raster, "-m", model, "-o", out, "-q"))
    with rasterio.open(out) as dst, rasterio.open(raster) as src:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        assert np.array_equal(dst.read(1) == 255, invalid_pixels(odd))


def expected_polygon(odd: Odd) -> shapely.Polygon:
    """The blob's outline mapped through the raster's transform."""
    rows, cols = blob(odd.shape)
    corners = [(cols.start, rows.start), (cols.stop, rows.start), (cols.stop, rows.stop),
               (cols.start, rows.stop)]
    return shapely.Polygon([odd.transform @ c for c in corners])


@pytest.mark.parametrize("case", _odd({
    "tiled JPEG": "lossy compression changes class ids: not a mask format"}))
def test_vectorize_odd_mask_keeps_georeferencing(tmp_path, case):
    odd = ODD[case]
    mask = odd.labels(tmp_path / "labels.tif")
    out = tmp_path / "polygons.gpkg"
    extra = ["--pixel-coordinates"] if odd.crs is None else []
    assert_succeeded(invoke("vectorize", mask, "-o", out, "-q", *extra))
    frame = pyogrio.read_dataframe(out)
    if odd.holes == "all":
        assert len(frame) == 0
        return
    expected = expected_polygon(odd)
    assert len(frame) == 1 and frame.class_id.tolist() == [1]
    got = frame.geometry.iloc[0]
    assert got.symmetric_difference(expected).area <= 1e-9 * expected.area
    if odd.crs is None:
        assert frame.crs is None
        assert frame.area_m2.iloc[0] == pytest.approx(expected.area)
    else:
        assert pyproj.CRS(frame.crs) == pyproj.CRS(odd.crs)
        if pyproj.CRS(odd.crs).is_geographic:  # geodesic m^2, not square degrees
            geodesic = abs(pyproj.Geod(ellps="WGS84").geometry_area_perimeter(expected)[0])
            assert frame.area_m2.iloc[0] == pytest.approx(geodesic, rel=1e-6)
            assert frame.area_m2.iloc[0] > 1.0
        else:
            assert frame.area_m2.iloc[0] == pytest.approx(expected.area)


@pytest.mark.parametrize("flags,crs", [((), None), (("--crs", "EPSG:32633"), "EPSG:32633"),
                                       (("--pixel-coordinates",), None)])
def test_vectorize_mask_without_crs_needs_a_declaration(tmp_path, flags, crs):
    mask = ODD["no CRS"].labels(tmp_path / "nocrs.tif")
    out = tmp_path / "polygons.gpkg"
    result = invoke("vectorize", mask, "-o", out, "-q", *flags)
    if not flags:
        assert_refused(result, mask, r"no CRS.*--crs.*--pixel-coordinates")
        assert list(tmp_path.iterdir()) == [mask]
        return
    assert_succeeded(result)
    frame = pyogrio.read_dataframe(out)
    assert (frame.crs is None) if crs is None else pyproj.CRS(frame.crs) == pyproj.CRS(crs)
    assert frame.geometry.iloc[0].equals(expected_polygon(ODD["no CRS"]))


@pytest.mark.parametrize("case", _odd({
    "tiled JPEG": "lossy compression changes class ids: not a mask format"}))
def test_evaluate_odd_mask_ignores_invalid_pixels(tmp_path, case):
    odd = ODD[case]
    prediction = odd.labels(tmp_path / "prediction.tif")
    truth = label_mask(tmp_path / "truth.tif", odd.shape, crs=odd.crs, transform=odd.transform)
    result = invoke("evaluate", prediction, truth, "--json")
    assert_succeeded(result)
    scores = json.loads(result.stdout)["classes"].get("class 1")
    if odd.holes == "all":  # nothing valid to score
        assert scores is None or {v for s in scores.values() for v in s.values()} == {None}
        return
    for kind in ("pixel", "tolerant"):
        assert scores[kind]["precision"] == scores[kind]["iou"] == 1.0, scores


@pytest.mark.parametrize("case", _odd({
    "100000x64": "validation runs 6250 16-px windows one at a time: too slow for the suite",
    "tiled JPEG": "same pixels path as the other compressions"}))
def test_train_odd_image(tmp_path, case):
    odd = ODD[case]
    image = odd.image(tmp_path / "image.tif")
    labels = label_mask(tmp_path / "labels.tif", odd.shape, crs=odd.crs, transform=odd.transform)
    out = tmp_path / "model.safetensors"
    result = invoke("train", "--image", image, "--mask", labels, "-o", out, *TRAIN_FAST)
    if case in TOO_SMALL_TO_TRAIN or odd.holes == "all":
        assert_refused(result, image, r"too small|no valid pixel|nodata")
        assert not out.exists()
        return
    assert_succeeded(result)
    meta = read_metadata(out)
    assert meta.bands == (1,)
    assert all(math.isfinite(v) for v in meta.mean + meta.std)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_mismatched_pairs_are_refused(world, command):
    if command == "train":  # two training images with different band counts
        one = write_raster(world.root / "one.tif", noise((1, 48, 40)))
        result = invoke("train", "--image", world.image, "--mask", world.labels, "--image",
                        one, "--mask", world.labels, "-o", world.out / "m.safetensors",
                        *TRAIN_FAST)
        assert_refused(result, one, r"band")
    else:  # prediction and truth on different grids
        other = label_mask(world.root / "other.tif", (40, 48))
        assert_refused(invoke("evaluate", other, world.labels), other,
                       r"same grid|does not match")
    assert list(world.out.iterdir()) == []



# -- the guards themselves -----------------------------------------------------------------
def test_require_in_memory_refuses_what_cannot_fit(world, monkeypatch):
    from geounet.errors import InputError
    from geounet.io import available_memory, open_raster, require_in_memory

    available = available_memory()
    assert available is not None and 0 < available <= os.sysconf("SC_PHYS_PAGES") * \
        os.sysconf("SC_PAGE_SIZE")
    require_in_memory(open_raster(world.labels), 32, "evaluate")   # 48 x 40 px: fine
    huge = open_raster(huge_header(world.root / "huge.tif", 1_000_000, 1_000_000))
    with pytest.raises(InputError, match=r"huge.tif: evaluate holds the whole "
                                         r"1000000x1000000 px raster in memory"):
        require_in_memory(huge, 1, "evaluate")
    monkeypatch.setattr("geounet.io.available_memory", lambda: None)   # unknown: no refusal
    require_in_memory(huge, 1, "evaluate")


def test_available_memory_without_proc(monkeypatch):
    """Where /proc/meminfo cannot be read, free pages from sysconf are used."""
    import builtins

    from geounet.io import available_memory

    real_open = builtins.open

    def no_proc(file, *args, **kwargs):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert available_memory() > 0


@pytest.mark.parametrize("raised,status,expected", [
    (PermissionError(13, "Permission denied", "/data/x.tif"), 1,
     "geounet: error: /data/x.tif: Permission denied"),
    (RuntimeError("boom"), 1, "geounet: internal error: RuntimeError: boom; rerun with -v"),
])
def test_unexpected_errors_are_one_line(world, monkeypatch, raised, status, expected):
    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(geounet.predict, "predict_raster", fail)
    args = ("predict", world.image, "-m", world.model, "-o", world.out / "m.tif", "-q")
    result = invoke(*args)
    assert isinstance(result.exception, SystemExit) and result.exit_code == status
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(expected) and "Traceback" not in result.output
    if isinstance(raised, RuntimeError):  # -v shows the traceback for the bug report
        assert "Traceback" in invoke(*args[:-1], "-v").stderr


def test_usage_errors_are_one_line(world):
    result = invoke("predict", world.image, "-m", world.model, "--tile", "abc")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'abc' is not a valid integer" in lines[0], lines
    assert "--help" in lines[0]
