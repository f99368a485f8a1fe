"""The skeleton helper process (geounet.processes): same outputs as in-process, stands in for
nothing when it dies, passes errors on, runs an unguarded script once, ends with its parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from rasterio import features
from rasterio.transform import from_origin

from geounet import processes
from geounet.centerline import skeleton_branches
from geounet.cli import main
from geounet.vectorize import VectorizeConfig, vectorize_raster

TRANSFORM = from_origin(500000.0, 5000000.0, 0.5, 0.5)
ROWS, COLS = 500, 600
MANY_CPUS = len(os.sched_getaffinity(0)) >= 2


def crack_mask() -> np.ndarray:
    """Cracks 1 to 9 px wide (class 1), some crossing, two L-shaped, one winding, and two
    blobs (class 2); x = column, y = row."""
    cracks = [((20, 140), (400, 140), 3), ((200, 20), (200, 240), 1),   # a cross...
              ((120, 40), (320, 240), 5),                                 # ...and a diagonal
              ((330, 180), (330, 330), 2), ((420, 300), (560, 300), (560, 480), 9),
              ((30, 200), (30, 420), (280, 420), 2),                      # two Ls
              ((80, 470), (150, 440), (220, 480), 7), ((400, 20), (590, 120), 1.5),
              ((250, 470), (400, 400), 4), ((100, 250), (200, 330), 6)]
    shapes = [(shapely.LineString(c[:-1]).buffer(c[-1] / 2, cap_style="flat"), 1)
              for c in cracks]
    shapes += [(shapely.Point(450, 200).buffer(25), 2),
               (shapely.Point(150, 380).buffer(15).union(shapely.box(150, 370, 200, 390)), 2)]
    return features.rasterize(shapes, out_shape=(ROWS, COLS), dtype=np.uint8)


@pytest.fixture(scope="module")
def mask_array() -> np.ndarray:
    return crack_mask()


@pytest.fixture
def mask(tmp_path: Path, mask_array: np.ndarray) -> Path:
    path = tmp_path / "mask.tif"
    with rasterio.open(path, "w", driver="GTiff", width=COLS, height=ROWS, count=1,
                       dtype="uint8", crs="EPSG:32633", transform=TRANSFORM) as dst:
        dst.write(mask_array, 1)
    return path


def _end_helper() -> None:
    helper, processes._helper = processes._helper, None
    if helper is not None:
        helper.close()


@pytest.fixture(autouse=True)
def fresh_helper():
    """Each test starts without a helper process and leaves none behind."""
    _end_helper()
    yield
    _end_helper()


@pytest.fixture
def submissions(monkeypatch) -> list:
    """The requests made of the helper process (while it ran)."""
    made: list = []
    submit = processes.SkeletonHelper.submit

    def counted(self, *args):
        made.append(self.process is not None)
        return submit(self, *args)

    monkeypatch.setattr(processes.SkeletonHelper, "submit", counted)
    return made


def run(mask: Path, out: Path, workers: int, block_size: int = 2048):
    """Vectorize ``mask`` with centerlines into ``out``: (polygons, centerlines) frames."""
    out.mkdir()
    result = vectorize_raster(mask, out / "polygons.gpkg",
                              VectorizeConfig(workers=workers, block_size=block_size),
                              centerlines_output=out / "lines.gpkg")
    polygons, lines = gpd.read_file(out / "polygons.gpkg"), gpd.read_file(out / "lines.gpkg")
    assert result.features == len(polygons)
    assert result.centerline_features == len(lines)
    return polygons, lines


def assert_same(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    """Same rows in the same order, attributes equal, geometries exactly equal."""
    assert len(a) == len(b)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(pd.DataFrame(a.drop(columns="geometry")),
                                  pd.DataFrame(b.drop(columns="geometry")), check_exact=True)
    assert a.geometry.geom_equals_exact(b.geometry, 0).all()


def helper_alive() -> bool:
    helper = processes._helper
    return (helper is not None and helper.process is not None
            and helper.process.poll() is None)


@pytest.mark.parametrize("block_size", [2048, 256])
def test_helper_gives_the_outputs_of_this_process(mask, tmp_path, submissions, block_size):
    polygons, lines = run(mask, tmp_path / "auto", 0, block_size)
    if MANY_CPUS:   # the skeletons really were computed by the helper, which still runs
        assert submissions and all(submissions)
        assert helper_alive()
    _end_helper()
    submissions.clear()
    polygons_here, lines_here = run(mask, tmp_path / "here", 1, block_size)
    assert processes._helper is None and not submissions   # workers=1: all in this process
    assert len(lines) > 10 and lines.geometry.length.sum() > 0
    assert polygons["length_m"].notna().sum() >= 8     # centerline measures on the polygons
    assert_same(polygons, polygons_here)
    assert_same(lines, lines_here)


def test_dead_helper_is_replaced_by_this_process(mask, tmp_path, submissions):
    helper = processes.skeleton_helper()
    if helper is None:
        pytest.skip("no helper process can start here")
    assert helper.process is not None
    helper.process.kill()
    helper.process.wait(10)
    polygons, lines = run(mask, tmp_path / "auto", 0, 256)
    if MANY_CPUS:   # it was asked, found stopped, and the skeletons computed here
        assert submissions
        assert processes._helper is helper and helper.process is None
    polygons_here, lines_here = run(mask, tmp_path / "here", 1, 256)
    assert len(lines) > 10
    assert_same(polygons, polygons_here)
    assert_same(lines, lines_here)


def test_error_in_helper_reaches_the_caller_as_its_type():
    bad = ([np.zeros((3, 3, 3), bool)], None, np.zeros((1, 2)))
    with pytest.raises(Exception) as here:
        skeleton_branches(*bad)
    helper = processes.skeleton_helper()
    if helper is None:
        pytest.skip("no helper process can start here")
    answer = helper.submit(bad)
    with pytest.raises(type(here.value)) as there:
        answer.result()
    assert type(there.value) is type(here.value)
    assert str(there.value) == str(here.value)
    # the helper survives the error and answers the next request, as this process would
    good = np.zeros((20, 40), bool)
    good[8:12, 3:37] = True
    request = ([good], None, np.array([[5.0, 7.0]]))
    branches = helper.submit(request).result()
    assert helper_alive()
    expected = skeleton_branches(*request)
    assert len(branches) == len(expected) == 1
    assert shapely.equals_exact(branches.lines, expected.lines, 0).all()
    np.testing.assert_array_equal(branches.max_width_px, expected.max_width_px)


def test_script_without_main_guard_runs_once(mask, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import sys
        from pathlib import Path

        import geounet.processes
        from geounet.vectorize import vectorize_raster

        mask, out = Path(sys.argv[1]), Path(sys.argv[2])
        with open(out / "ran.log", "a") as log:
            log.write("top level\\n")
        result = vectorize_raster(mask, out / "polygons.gpkg",
                                  centerlines_output=out / "lines.gpkg")
        helper = geounet.processes._helper
        print("helper", helper is not None and helper.process is not None)
        print("lines", result.centerline_features)
    """))
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run([sys.executable, str(script), str(mask), str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "ran.log").read_text().splitlines() == ["top level"]
    assert (out / "polygons.gpkg").is_file() and (out / "lines.gpkg").is_file()
    assert len(gpd.read_file(out / "lines.gpkg")) > 10
    if MANY_CPUS:
        assert "helper True" in done.stdout.splitlines()


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for its reaper has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_helper_ends_with_its_parent(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import time
            from geounet.processes import skeleton_helper
            helper = skeleton_helper()
            print(helper.process.pid if helper is not None else -1, flush=True)
            time.sleep(120)
        """)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    pid = -1
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        if pid < 0:
            pytest.skip("no helper process can start here")
        assert not _gone(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), f"helper {pid} outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        if pid > 0 and not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_cli_vectorize_with_centerlines(mask, tmp_path, submissions):
    out = tmp_path / "cli"
    out.mkdir()
    result = CliRunner().invoke(main, ["vectorize", str(mask), "-o", str(out / "p.gpkg"),
                                       "--centerlines", str(out / "l.gpkg"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    if MANY_CPUS:
        assert submissions and all(submissions)
        assert helper_alive()
    _end_helper()
    polygons_here, lines_here = run(mask, tmp_path / "here", 1)
    assert summary["centerline_features"] == len(lines_here) > 10
    assert summary["features"] == len(polygons_here)
    assert_same(gpd.read_file(out / "l.gpkg"), lines_here)
    assert_same(gpd.read_file(out / "p.gpkg"), polygons_here)


@pytest.fixture
def answers(monkeypatch) -> list:
    """The answers of the requests made of the helper process."""
    made: list = []
    submit = processes.SkeletonHelper.submit

    def kept(self, request):
        answer = submit(self, request)
        made.append(answer)
        return answer

    monkeypatch.setattr(processes.SkeletonHelper, "submit", kept)
    return made


@pytest.mark.skipif(not MANY_CPUS, reason="the helper runs beside this process only")
@pytest.mark.parametrize("ahead, used", [({"centerlines": True}, True),
                                         ({"centerlines": True, "spur_length": 9.0}, False)])
def test_first_block_computed_ahead_is_used_when_it_is_the_request(mask, tmp_path, answers,
                                                                    ahead, used):
    """``vectorize`` has the helper compute the first block's skeletons from the mask before
    asking; the answer is used when the request is the same (and computed anew when the
    settings differ), and the outputs are those of this process either way."""
    from geounet.settings import VectorizeSettings

    processes.prestart_skeleton_helper(mask, VectorizeSettings(**ahead))
    polygons, lines = run(mask, tmp_path / "ahead", 0)
    assert [answer.prefetched for answer in answers] == [used]
    _end_helper()
    polygons_here, lines_here = run(mask, tmp_path / "here", 1)
    assert_same(polygons, polygons_here)
    assert_same(lines, lines_here)


def test_program_starts_the_helper_first_and_gives_the_outputs_of_one_process(mask, tmp_path):
    """``geounet vectorize --centerlines`` as a program (the helper started before the
    command's libraries load, the first block computed ahead): the outputs of ``--workers
    1``; a mask that is not there is still one line and status 1."""
    out = tmp_path / "program"
    out.mkdir()
    done = subprocess.run([sys.executable, "-m", "geounet", "vectorize", str(mask), "-o",
                           str(out / "p.gpkg"), "--centerlines", str(out / "l.gpkg"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    polygons, lines = gpd.read_file(out / "p.gpkg"), gpd.read_file(out / "l.gpkg")
    polygons_here, lines_here = run(mask, tmp_path / "here", 1)
    assert json.loads(done.stdout)["centerline_features"] == len(lines_here) > 10
    assert_same(polygons, polygons_here)
    assert_same(lines, lines_here)
    missing = subprocess.run([sys.executable, "-m", "geounet", "vectorize",
                              str(tmp_path / "nothing.tif"), "-o", str(out / "x.gpkg"),
                              "--centerlines", str(out / "x_lines.gpkg")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"geounet: error: {tmp_path / 'nothing.tif'}: no such file"]
    assert not (out / "x.gpkg").exists() and not (out / "x_lines.gpkg").exists()


@pytest.mark.skipif(not MANY_CPUS, reason="the helper runs beside this process only")
def test_modules_in_the_users_folder_do_not_run_in_the_helper(mask, tmp_path):
    """A ``skimage.py`` in the folder the user runs from is not imported by the helper
    (``python -m`` would put that folder first on the module path): no code of the user's
    runs there, and the helper still computes the skeletons."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "skimage.py").write_text("open('IMPORTED', 'w').write('x')\n")
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import geounet.processes
        from geounet.vectorize import VectorizeConfig, vectorize_raster

        vectorize_raster({str(mask)!r}, "p.gpkg", VectorizeConfig(workers=0),
                         centerlines_output="l.gpkg")
        helper = geounet.processes._helper
        print("helper", helper is not None and helper.process is not None)
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (folder / "IMPORTED").exists()
    assert "helper True" in done.stdout.splitlines()
    assert len(gpd.read_file(folder / "l.gpkg")) > 10
