"""Hostile and inconsistent workflow files are refused at load, in one line, at once (issue 18).

A workflow is a few hundred bytes of YAML. Documents built to make the loader work without
end (an alias bomb, a self-referencing alias, thousands of nesting levels, tens of megabytes)
must be refused in well under a second with the file and line; settings that would make every
item fail at run time (a vector name whose extension disagrees with ``vector_format``, a name
template with a subfolder, a cron expression that never fires, an unknown time zone) must be
refused when the file is loaded, by ``geounet run`` and ``geounet schedule`` alike.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
from test_hostile import assert_refused, invoke

from geounet.errors import ConfigError
from geounet.workflow import load_workflow, run_workflow

SECONDS = 5.0   # "at once", with room for a busy CI machine (each case takes ~10 ms here)
HEAD = "name: t\ninputs: {folder: in}\nmodel: model.safetensors\noutputs: {folder: out}\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """``in/`` and a (placeholder) model: enough for a workflow to load, not to run."""
    (tmp_path / "in").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"placeholder")
    return tmp_path


def write(folder: Path, text: str, name: str = "wf.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def refused_in_time(path: Path, cause: str, line: int | None = None) -> str:
    """``geounet run PATH`` fails with one line naming the file (and line) and ``cause``,
    within ``SECONDS``; nothing is written."""
    start = time.perf_counter()
    result = invoke("run", path, seconds=30)
    seconds = time.perf_counter() - start
    message = assert_refused(result, path, cause)
    assert "internal error" not in message
    if line is not None:
        assert f"{path.name}:{line}:" in message, message
    assert seconds < SECONDS, f"{seconds:.1f} s: {message}"
    assert len(message) < len(str(path)) + 300, "one short line"
    assert not (path.parent / "out").exists()
    return message


# -- documents that make a loader work without end ---------------------------------------
def alias_bomb(levels: int = 9) -> str:
    """"Billion laughs": each level lists the previous one 9 times (9**levels strings)."""
    lines = ["lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


HOSTILE = {
    # name: (document after HEAD, line of the refusal (None: any), cause)
    "alias bomb": (alias_bomb(), None, r"aliases .*expand"),
    "alias bomb in a setting": (alias_bomb(8) + "vectorize: {classes: *l8}\n", None,
                                "aliases .*expand"),
    "self-referencing list": ("extra: &a [1, *a]\n", 5, r"\*a .*inside"),
    "self-referencing mapping": ("extra: &m {x: 1, y: *m}\n", 5, r"\*m .*inside"),
    "5000-deep list": ("extra: " + "[" * 5000 + "]" * 5000 + "\n", 5, "nested"),
    "5000-deep mapping": ("extra: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", 5, "nested"),
    "5000-deep block": ("extra:\n  " + "- " * 5000 + "1\n", 6, "nested"),
    "deep through aliases": ("".join(f"a{i}: &a{i} [*a{i - 1}]\n" if i else "a0: &a0 [1]\n"
                                     for i in range(2000)), None, "nested"),
    "a 5000-character key": ("? " + "k" * 5000 + "\n: 1\n", 5, "unknown key"),
    "a long flat list": ("extra: [" + ", ".join(["1"] * 20000) + "]\n", 5, "values"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_is_refused_at_once_in_one_line(folder, case):
    body, line, cause = HOSTILE[case]
    assert len(HEAD + body) < 2**17, "the size check alone must not be what refuses it"
    refused_in_time(write(folder, HEAD + body), cause, line)


def test_a_huge_file_is_refused_by_its_size_before_it_is_parsed(folder):
    path = write(folder, HEAD)
    with path.open("a") as f:   # 4 MiB of plausible keys: parsing it takes many seconds
        f.write("".join(f"key{i:07d}: value\n" for i in range(4 * 2**20 // 20)))
    message = refused_in_time(path, r"MiB|KiB|bytes")
    assert "workflow" in message


def test_a_50_mb_file_is_refused_at_once(folder):
    path = write(folder, HEAD + "unknown: ")
    with path.open("a") as f:
        f.write("x" * 50 * 2**20)
    refused_in_time(path, r"too large")


def test_ordinary_aliases_and_long_input_lists_still_load(folder):
    """The bounds are far above what real workflows use: an explicit list of 1500 inputs,
    and settings shared through an anchor and a merge key."""
    names = [f"in/s{i:04d}.tif" for i in range(1500)]
    for name in names:
        (folder / name).touch()
    text = ("name: t\nmodel: model.safetensors\ninputs:\n  list:\n"
            + "".join(f"    - {n}\n" for n in names)
            + "vectorize: &v {min_area: 2.5, classes: &ids [1, 2], linear_classes: *ids}\n"
            "outputs: {<<: {folder: out}, vector: '{stem}.gpkg'}\n")
    start = time.perf_counter()
    workflow = load_workflow(write(folder, text))
    assert time.perf_counter() - start < SECONDS
    assert len(workflow.inputs.list) == 1500
    assert workflow.vectorize.classes == workflow.vectorize.linear_classes == (1, 2)
    assert workflow.vectorize.min_area == 2.5 and workflow.outputs.folder == folder / "out"


# -- names and formats --------------------------------------------------------------------
def outputs(**keys: str) -> str:
    return HEAD.replace("outputs: {folder: out}\n", "outputs:\n  folder: out\n"
                        + "".join(f"  {k}: {v}\n" for k, v in keys.items()))


@pytest.mark.parametrize("fmt, extension", [("shapefile", ".shp"), ("geojson", ".geojson"),
                                             ("parquet", ".parquet"), ("gpkg", ".gpkg")])
def test_vector_format_alone_names_the_vector_file_by_its_format(folder, fmt, extension):
    workflow = load_workflow(write(folder, outputs(vector_format=fmt)))
    assert workflow.outputs.vector == "{stem}" + extension


def test_vector_format_shapefile_alone_writes_shapefiles(tmp_path, make_raster, checkpoint):
    """The default name follows the format, so every item runs (it failed every time)."""
    make_raster(np.random.default_rng(0).integers(0, 255, (3, 70, 90), dtype=np.uint8),
                name="in/s0.tif")
    path = tmp_path / "wf.yaml"
    path.write_text(f"name: t\ninputs: {{folder: in}}\nmodel: {checkpoint}\n"
                    "tiling: {threshold: 0.444}\n"
                    "outputs: {folder: out, vector_format: shapefile, preview: null}\n")
    report = run_workflow(load_workflow(path), progress=False)
    assert [(r.status, r.reason) for r in report.items] == [("done", None)]
    shapefile = tmp_path / "out" / "s0.shp"
    assert pyogrio.read_info(shapefile)["driver"] == "ESRI Shapefile"
    assert {p.suffix for p in shapefile.parent.glob("s0.*")} >= {".shp", ".shx", ".dbf"}


MISMATCHES = {
    # name: (outputs keys, line of the refusal, key named, words of the cause)
    "format against name": ({"vector": "'{stem}.gpkg'", "vector_format": "shapefile"}, 6,
                            "outputs.vector", r"\{stem\}\.shp"),
    "geojson against gpkg": ({"vector_format": "geojson", "vector": "'{stem}.gpkg'"}, 7,
                             "outputs.vector", r"\{stem\}\.geojson"),
    "centerlines against format": ({"vector": "'{stem}.shp'", "vector_format": "shapefile",
                                    "centerlines": "'{stem}_lines.gpkg'"}, 8,
                                   "outputs.centerlines", r"\{stem\}_lines\.shp"),
    "unknown extension": ({"vector": "'{stem}.kml'"}, 6, "outputs.vector",
                          r"\.kml.*vector_format"),
    "centerlines unknown extension": ({"vector": "'{stem}.gpkg'",
                                       "centerlines": "'{stem}_lines'"}, 7,
                                      "outputs.centerlines", "vector_format"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_names_that_disagree_with_the_format_are_refused_with_the_line(folder, case):
    keys, line, key, cause = MISMATCHES[case]
    message = refused_in_time(write(folder, outputs(**keys)), cause, line)
    assert f":{line}: {key}:" in message


# -- name templates ----------------------------------------------------------------------
@pytest.mark.parametrize("template, cause", [
    ("sub/{stem}.tif", "folder"), ("{stem}/mask.tif", "folder"), ("./sub/{stem}.tif", "folder"),
    ("../{stem}.tif", "escapes"), ("sub/../../{stem}.tif", "escapes|folder"),
    ("/tmp/{stem}.tif", "escapes"), ("..\\\\{stem}.tif", "escapes|folder"),
])
def test_templates_with_a_folder_or_a_way_out_are_refused_at_load(folder, template, cause):
    message = refused_in_time(write(folder, outputs(mask=f"'{template}'")), cause, 6)
    assert "outputs.mask" in message


# -- schedule ------------------------------------------------------------------------------
SCHEDULES = {
    "february 30": ("{cron: '0 0 30 2 *'}", "schedule.cron", "never"),
    "april 31": ("{cron: '0 12 31 4 *'}", "schedule.cron", "never"),
    "unknown time zone": ("{cron: '0 2 * * *', timezone: Mars/Olympus}", "schedule.timezone",
                          "Mars/Olympus.*time zone"),
    "path as time zone": ("{cron: '0 2 * * *', timezone: ../../etc/passwd}",
                          "schedule.timezone", "time zone"),
    "lower-case utc": ("{cron: '0 2 * * *', timezone: utc}", "schedule.timezone", "UTC"),
}


@pytest.mark.parametrize("command", ["run", "schedule"])
@pytest.mark.parametrize("case", sorted(SCHEDULES))
def test_a_schedule_that_cannot_fire_is_refused_by_run_and_schedule(folder, case, command):
    value, key, cause = SCHEDULES[case]
    path = write(folder, HEAD + f"schedule: {value}\n")
    result = invoke(command, path, seconds=30)
    message = assert_refused(result, path, cause)
    assert f"wf.yaml:5: {key}:" in message


def test_a_valid_schedule_is_accepted_by_run(folder):
    path = write(folder, HEAD + "schedule: {cron: '0 0 29 2 *', timezone: Europe/Paris}\n")
    workflow = load_workflow(path)   # February 29: fires in leap years
    assert workflow.schedule is not None and workflow.schedule.timezone == "Europe/Paris"


def test_refusals_are_config_errors(folder):
    with pytest.raises(ConfigError, match=r"wf.yaml:5: .*alias"):
        load_workflow(write(folder, HEAD + "x: &a [*a]\n"))
