"""The output layer: checks before work, one temporary-name scheme, atomic multi-file writes,
and the GeoTIFF contract (class names, byte-identical finished files)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geounet.errors import ConfigError, OutputError
from geounet.geotiff import (
    CLASS_NAMES_TAG,
    LEGACY_CLASSES_TAG,
    describe,
    finish,
    metres_per_unit,
    open_output,
    read_class_names,
)
from geounet.io import open_raster
from geounet.outputs import (
    atomic_outputs,
    check_outputs,
    output_parts,
    remove_stale_temporaries,
    temporary_owner,
    temporary_sibling,
    vector_format,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- checks ---------------------------------------------------------------------------------
def test_shapefile_parts_keep_the_given_name_and_case(tmp_path):
    assert [p.name for p in output_parts(tmp_path / "OUT.SHP")] == [
        "OUT.SHP", "OUT.SHX", "OUT.DBF", "OUT.PRJ", "OUT.CPG"]
    assert [p.name for p in output_parts(tmp_path / "out.shp")][1:] == [
        "out.shx", "out.dbf", "out.prj", "out.cpg"]
    assert output_parts(tmp_path / "a.gpkg") == [tmp_path / "a.gpkg"]


def test_an_existing_part_of_a_shapefile_is_not_replaced_without_overwrite(tmp_path):
    (tmp_path / "out.dbf").write_bytes(b"someone's table")
    with pytest.raises(OutputError, match=r"out\.dbf: already exists \(a part of out\.shp\)"):
        check_outputs([tmp_path / "out.shp"], [], overwrite=False)
    check_outputs([tmp_path / "out.shp"], [], overwrite=True)


def test_overwrite_never_replaces_an_input(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights")
    with pytest.raises(OutputError, match="same file as the input"):
        check_outputs([tmp_path / "mask.tif", model], [tmp_path / "in.tif", model], True)
    link = tmp_path / "link.safetensors"
    link.symlink_to(model)
    with pytest.raises(OutputError, match="same file as the input"):
        check_outputs([link], [model], True)


def test_existing_non_regular_outputs_are_refused_even_with_overwrite(tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        check_outputs([fifo], [], overwrite=True)
    with pytest.raises(OutputError, match="not a regular file"):
        check_outputs([Path("/dev/null")], [], overwrite=True)
    assert Path("/dev/null").is_char_device()


def test_two_outputs_of_one_name_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="must be different files"):
        check_outputs([tmp_path / "x.gpkg", tmp_path / "sub" / ".." / "x.gpkg"], [], False)


# -- temporaries ----------------------------------------------------------------------------
def test_temporaries_of_dead_processes_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "*.tif"   # a name that is also a glob pattern
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    mine = temporary_sibling(out)
    theirs = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead}-"))
    theirs.write_bytes(b"left by a killed run")
    keep = [tmp_path / ".notes.gpkg.bak", tmp_path / ".a.tif.geounet-x", tmp_path / "b.tif",
            tmp_path / f".{out.name}.part", tmp_path / ".x.tif.geounet-0000-1-00000000.tif"]
    for path in keep:
        path.write_bytes(b"user data")
    assert temporary_owner(theirs.name, out.name) is not None
    assert remove_stale_temporaries([out]) == 1      # not ours-and-alive, not the user's
    assert mine.exists() and not theirs.exists()
    assert all(p.read_bytes() == b"user data" for p in keep)
    assert remove_stale_temporaries([out], any_process=True) == 1
    assert not mine.exists()


def test_stale_temporaries_of_many_outputs_take_one_listing_per_folder(tmp_path, monkeypatch):
    import geounet.outputs

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()

    def stale(path: Path, extension: str | None = None) -> Path:
        """A temporary of ``path`` as a killed process would have left it."""
        mine = temporary_sibling(path, extension)
        theirs = mine.with_name(mine.name.replace(f"-{os.getpid()}-", f"-{dead}-"))
        mine.rename(theirs)
        return theirs

    outputs = [a / f"out{i}.tif" for i in range(200)]
    outputs += [b / ".hidden.json", b / "x.geounet-y.gpkg", b / "z.gpkg"]
    left = [stale(p) for p in outputs]
    left.append(stale(b / "z.gpkg", ".tif"))          # the mask kept for z.gpkg's polygons
    left.append(stale(left[-1]))                      # and its compact rewrite
    keep = [a / "out1.tif", a / ".out1.tif.geounet-x", a / ".out9999.tif.geounet-0000-1-"
            "00000000.tif", b / ".y.gpkg.geounet-0000-1-00000000.gpkg", b / "..hidden.json.bak"]
    keep.append(stale(a / "other.tif"))              # not an output asked about
    for path in keep[:-1]:
        path.write_bytes(b"user data")
    listed = []
    scandir = os.scandir

    def counting(path):
        listed.append(Path(path))
        return scandir(path)

    monkeypatch.setattr(geounet.outputs.os, "scandir", counting)
    assert remove_stale_temporaries(outputs) == len(left) == 205
    assert sorted(listed) == [a, b]
    assert not any(p.exists() for p in left) and all(p.exists() for p in keep)


def test_atomic_outputs_appear_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    b.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_outputs([a, None, b]) as temps:
        assert temps[1] is None
        temps[0].write_text("new a")
        temps[2].write_text("new b")
        raise RuntimeError("boom")
    assert not a.exists() and b.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]
    with atomic_outputs([a, b]) as temps:
        temps[0].write_text("new a")
        temps[1].write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


# -- the GeoTIFF contract -------------------------------------------------------------------
def _source(path: Path, size: int = 700) -> Path:
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1,
               "dtype": "uint8", "crs": "EPSG:32633",
               "transform": from_origin(500000, 5000000, 0.5, 0.5)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.zeros((1, size, size), np.uint8))
    return path


def _stream(info, out: Path, windows, names=("background", "crack, wide")) -> None:
    """Write a mask in ``windows`` (each rewriting blocks earlier windows touched)."""
    import contextlib

    rng = np.random.default_rng(0)
    full = rng.integers(0, 2, (info.height, info.width)).astype(np.uint8)
    with atomic_outputs([out]) as (tmp,), rasterio.Env(GDAL_CACHEMAX=1):
        with contextlib.ExitStack() as stack:
            dst = open_output(stack, tmp, info, 1, "uint8", 255)
            describe(dst, names, "model.safetensors", ["class"])
            for r0, r1, c0, c1 in windows:
                dst.write(full[r0:r1, c0:c1][None], window=((r0, r1), (c0, c1)))
        finish(tmp, "mask")


def test_finished_geotiff_bytes_do_not_depend_on_the_write_order(tmp_path):
    info = open_raster(_source(tmp_path / "in.tif"))
    rows = [(r, min(r + 100, 700), c, min(c + 300, 700))
            for r in range(0, 700, 100) for c in range(0, 700, 300)]
    _stream(info, tmp_path / "a.tif", rows)
    _stream(info, tmp_path / "b.tif", list(reversed(rows)))
    _stream(info, tmp_path / "c.tif", [(0, 700, 0, 700)])
    assert sha256(tmp_path / "a.tif") == sha256(tmp_path / "b.tif") == sha256(tmp_path / "c.tif")
    if shutil.which("gdal_translate"):
        subprocess.run(["gdal_translate", "-q", "-co", "TILED=YES", "-co", "BLOCKXSIZE=512",
                        "-co", "BLOCKYSIZE=512", "-co", "COMPRESS=DEFLATE", "-co", "ZLEVEL=6",
                        tmp_path / "a.tif", tmp_path / "t.tif"], check=True)
        assert (tmp_path / "a.tif").stat().st_size <= (tmp_path / "t.tif").stat().st_size


def test_class_names_travel_losslessly_and_old_tags_still_read(tmp_path):
    info = open_raster(_source(tmp_path / "in.tif", 64))
    _stream(info, tmp_path / "m.tif", [(0, 64, 0, 64)], names=("background", "crack, wide"))
    with rasterio.open(tmp_path / "m.tif") as src:
        assert read_class_names(src) == ["background", "crack, wide"]
        assert src.tags()[CLASS_NAMES_TAG] == '["background", "crack, wide"]'
    with rasterio.open(tmp_path / "old.tif", "w", driver="GTiff", width=4, height=4, count=1,
                       dtype="uint8") as dst:
        dst.update_tags(**{LEGACY_CLASSES_TAG: "background,road"})
    with rasterio.open(tmp_path / "old.tif") as src:
        assert read_class_names(src) == ["background", "road"]


def test_metres_per_unit():
    assert metres_per_unit("EPSG:32633") == 1.0
    assert metres_per_unit("EPSG:2263") == pytest.approx(0.3048006096)   # US survey feet
    assert metres_per_unit("EPSG:4326") is None and metres_per_unit(None) is None
    assert metres_per_unit(rasterio.crs.CRS.from_epsg(3857)) == 1.0


def test_no_output_is_a_part_of_an_input_shapefile(tmp_path):
    """An input Shapefile is read with its sidecars: none of them may be written over, not
    even with --overwrite (preview, evaluate and train wrote PNGs, JSON and checkpoints
    onto labels' .dbf and .shx before)."""
    labels = tmp_path / "labels.shp"
    for part in output_parts(labels):
        part.write_bytes(b"user data")
    for name in ("labels.dbf", "labels.shx", "labels.prj", "labels.cpg"):
        with pytest.raises(OutputError, match=f"same file as the input .*{name}"):
            check_outputs([tmp_path / name], [labels], overwrite=True)
    assert all(p.read_bytes() == b"user data" for p in output_parts(labels))


def test_a_dangling_symlink_is_not_an_empty_output_name(tmp_path):
    link = tmp_path / "out.tif"
    link.symlink_to(tmp_path / "elsewhere.tif")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="symbolic link to a missing file"):
            check_outputs([link], [], overwrite)
    assert link.is_symlink()


@pytest.mark.parametrize("name,read_as", [("a!b.gpkg", "b.gpkg"), ("zip:x.gpkg", "/vsizip/"),
                                          ("s3:x.geojson", "/vsis3/")])
def test_vector_names_gdal_would_misread_are_refused(tmp_path, name, read_as):
    """pyogrio reads 'a!b.gpkg' as b.gpkg in an archive 'a' and a relative 'zip:x.gpkg' as
    a URL: another file would be written or read."""
    with pytest.raises(ConfigError, match=f"GDAL would read this name as '{read_as}"):
        vector_format(Path(name))
    for plain in ("a b.gpkg", "-v.gpkg", "x#1.geojson", "ü.shp", "a:b.gpkg"):
        assert vector_format(Path(plain)) and vector_format(tmp_path / plain)


def test_a_shapefile_that_cannot_be_replaced_whole_keeps_its_old_parts(tmp_path, monkeypatch):
    """The parts were renamed one by one: when the .dbf could not be replaced (an
    immutable file), the new .shx sat beside the old .shp and .dbf, a corrupt Shapefile.
    Now the replaced parts get their old contents back and no temporary is left."""
    final = tmp_path / "v.shp"
    for part in output_parts(final):
        part.write_text(f"old {part.suffix}")
    replace = os.replace

    def refusing(source, target):
        if str(target).endswith("v.dbf"):
            raise PermissionError(1, "Operation not permitted", str(target))
        replace(source, target)

    monkeypatch.setattr(os, "replace", refusing)
    with pytest.raises(OutputError), atomic_outputs([final]) as (tmp,):
        for part in output_parts(tmp):
            part.write_text(f"new {part.suffix}")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        p.name: f"old {p.suffix}" for p in output_parts(final)}


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_cannot_hold_files_is_refused_before_any_work():
    """/proc passes the access test but holds no new file: the write failed after the work,
    naming a hidden temporary. Now a file is made and removed there first."""
    with pytest.raises(OutputError, match="^/proc: output folder cannot hold new files"):
        check_outputs([Path("/proc/x.tif")], [], overwrite=False)


def test_outputs_get_the_mode_of_a_new_file(tmp_path):
    """safetensors writes its files 0600: checkpoints were unreadable to the user's group
    while every other output was not. Every output now gets the mode a new file gets."""
    final = tmp_path / "model.safetensors"
    with atomic_outputs([final]) as (tmp,):
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))
    umask = os.umask(0)
    os.umask(umask)
    assert final.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_shapefile_is_replaced_where_hard_links_cannot_be_made(tmp_path, monkeypatch):
    """On a file system without hard links (a FAT USB stick) the old parts are kept as
    copies: the Shapefile is still replaced, and nothing else is left."""
    final = tmp_path / "v.shp"
    for part in output_parts(final):
        part.write_text(f"old {part.suffix}")

    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted", str(source))

    monkeypatch.setattr(os, "link", no_links)
    with atomic_outputs([final]) as (tmp,):
        for part in output_parts(tmp):
            part.write_text(f"new {part.suffix}")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        p.name: f"new {p.suffix}" for p in output_parts(final)}
