"""Workflow files and `geounet run`: validation, idempotence, recovery, locking, reports."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import yaml
from click.testing import CliRunner

from geounet.cli import main
from geounet.errors import ConfigError, OutputError
from geounet.outputs import temporary_sibling
from geounet.workflow import (
    LOCK,
    MANIFEST,
    REPORT,
    discover_inputs,
    load_workflow,
    pipeline,
    run_workflow,
)
from geounet.workflow.manifest import output_lock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def batch(tmp_path, make_raster, checkpoint):
    """Three small 3-band rasters in tmp/in and a workflow file writing to tmp/out."""
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(96, 120), (130, 90), (70, 150)]):
        make_raster(rng.integers(0, 255, (3, h, w), dtype=np.uint8), name=f"in/s{i}.tif")

    def write(extra: str = "", name: str = "wf.yaml") -> Path:
        # threshold: the random tiny model's probabilities sit around 0.444
        text = (f"name: test\ninputs:\n  folder: in\nmodel: {checkpoint}\n"
                "tiling: {threshold: 0.444}\n"
                "outputs:\n  folder: out\n  probabilities: '{stem}_prob.tif'\n" + extra)
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def statuses(report) -> dict[str, str]:
    return {r.input.name: r.status for r in report.items}


# -- validation ---------------------------------------------------------------------------
BAD = {
    "unknown key": ("outputs:\n  folder: out\n  maks: x.tif\n", 7, "outputs.maks",
                    "unknown key"),
    "wrong type": ("outputs:\n  folder: out\ntiling:\n  batch_size: many\n", 8,
                   "tiling.batch_size", "valid integer"),
    "missing input folder": ("outputs:\n  folder: out\n", 3, "inputs.folder",
                             "not an existing folder"),
    "object tag": ("outputs:\n  folder: !!python/object/apply:os.system ['touch PWNED']\n", 6,
                   "outputs.folder", "python/object"),
    "escaping template": ("outputs:\n  folder: out\n  vector: '../../{stem}.gpkg'\n", 7,
                          "outputs.vector", "escapes the output folder"),
    "format field": ("outputs:\n  folder: out\n  mask: '{stem.__class__}.tif'\n", 7,
                     "outputs.mask", "only {stem} and {name}"),
    "bad cron": ("outputs:\n  folder: out\nschedule:\n  cron: '61 * * * *'\n", 8,
                 "schedule.cron", "cron"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_workflow_is_one_error_with_line_and_key_and_does_nothing(
        case, tmp_path, checkpoint, monkeypatch):
    body, line, key, cause = BAD[case]
    folder = "nowhere" if case == "missing input folder" else "in"
    (tmp_path / "in").mkdir()
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\ninputs:\n  folder: {folder}\nmodel: {checkpoint}\n{body}")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"bad.yaml:{line}: {key}" in lines[0] and cause in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()        # nothing was done
    assert not (tmp_path / "PWNED").exists()      # the tag's payload never ran


def test_template_that_escapes_through_a_stem_is_refused(tmp_path, checkpoint):
    (tmp_path / "in").mkdir()
    path = tmp_path / "wf.yaml"
    path.write_text(f"name: t\ninputs: {{folder: in}}\nmodel: {checkpoint}\n"
                    "outputs: {folder: out, mask: '/tmp/{stem}.tif'}\n")
    with pytest.raises(ConfigError, match=r"wf.yaml:4: outputs.mask: .*escapes"):
        load_workflow(path)


def test_inputs_from_a_list_or_a_file_of_paths(tmp_path, batch, checkpoint):
    (tmp_path / "paths.txt").write_text("# two of three\nin/s0.tif\n\nin/s2.tif\n")
    path = tmp_path / "wf.yaml"
    path.write_text(f"name: t\ninputs: {{file: paths.txt}}\nmodel: {checkpoint}\n"
                    "outputs: {folder: out}\n")
    assert [p.name for p in discover_inputs(load_workflow(path))] == ["s0.tif", "s2.tif"]
    path.write_text(f"name: t\ninputs:\n  list: [in/s1.tif, in/missing.tif]\n"
                    f"model: {checkpoint}\noutputs: {{folder: out}}\n")
    with pytest.raises(ConfigError, match=r"wf.yaml:3: inputs.list\[1\]: .*missing.tif"):
        load_workflow(path)


def test_two_inputs_writing_one_output_are_refused_before_work(tmp_path, batch, make_raster):
    make_raster(np.zeros((3, 20, 20), np.uint8), name="in/sub/s0.tif")
    workflow = load_workflow(batch("", "wf.yaml").parent / "wf.yaml")
    workflow = workflow.model_copy(update={"inputs": workflow.inputs.model_copy(
        update={"glob": "**/*.tif"})})
    with pytest.raises(ConfigError, match="would both write"):
        run_workflow(workflow, progress=False)
    assert not workflow.outputs.folder.exists()


# -- running ------------------------------------------------------------------------------
def test_run_writes_outputs_report_and_skips_unchanged(batch, tmp_path, monkeypatch):
    workflow = load_workflow(batch())
    first = run_workflow(workflow, progress=False)
    assert statuses(first) == {"s0.tif": "done", "s1.tif": "done", "s2.tif": "done"}
    out = tmp_path / "out"
    report = json.loads((out / REPORT).read_text())
    assert report["counts"] == {"done": 3, "skipped": 0, "failed": 0}
    assert report["model"]["class_names"] == ["background", "thing"]
    item = report["items"][0]
    assert item["outputs"]["mask"] == "s0_mask.tif" and item["outputs"]["vector"] == "s0.gpkg"
    frame = pyogrio.read_dataframe(out / "s0.gpkg")
    assert item["summary"]["features"] == len(frame) > 0
    assert item["summary"]["area_m2"] == pytest.approx(frame.area_m2.sum(), abs=1e-3)
    with rasterio.open(out / "s0_mask.tif") as mask, rasterio.open(tmp_path / "in/s0.tif") as src:
        assert mask.crs == src.crs and mask.transform == src.transform

    def no_inference(*args, **kwargs):
        raise AssertionError("a skipped item ran inference")

    monkeypatch.setattr("geounet.predict.predict_raster", no_inference)
    second = run_workflow(workflow, progress=False)
    assert statuses(second) == {"s0.tif": "skipped", "s1.tif": "skipped", "s2.tif": "skipped"}
    assert second.items[0].summary == first.items[0].summary


def test_only_the_input_whose_content_changed_is_redone(batch, tmp_path):
    workflow = load_workflow(batch())
    run_workflow(workflow, progress=False)
    stamp = (tmp_path / "out/s0_mask.tif").stat().st_mtime_ns
    time.sleep(0.01)
    (tmp_path / "in/s0.tif").touch()                       # mtime alone: nothing to do
    assert set(statuses(run_workflow(workflow, progress=False)).values()) == {"skipped"}
    with rasterio.open(tmp_path / "in/s1.tif", "r+") as dst:  # content: that item only
        dst.write(np.full((3, 10, 10), 7, np.uint8), window=((0, 10), (0, 10)))
    report = run_workflow(workflow, progress=False)
    assert statuses(report) == {"s0.tif": "skipped", "s1.tif": "done", "s2.tif": "skipped"}
    assert (tmp_path / "out/s0_mask.tif").stat().st_mtime_ns == stamp


def test_centerlines_are_written_and_summarized(batch, tmp_path):
    report = run_workflow(load_workflow(batch("  centerlines: '{stem}_lines.gpkg'\n")),
                          progress=False)
    item = report.items[0]
    lines = pyogrio.read_dataframe(tmp_path / "out/s0_lines.gpkg")
    polygons = pyogrio.read_dataframe(tmp_path / "out/s0.gpkg")
    assert item.outputs["centerlines"] == tmp_path / "out/s0_lines.gpkg" and len(lines) > 0
    summary = item.summary
    assert summary["centerline_length_m"] == pytest.approx(lines.length_m.sum(), abs=1e-3)
    thing = summary["classes"]["thing"]
    assert thing["max_width_m"] == pytest.approx(polygons.max_width_m.max(), abs=1e-3)
    assert 0 < thing["mean_width_m"] <= thing["max_width_m"]


def test_changed_settings_redo_every_item(batch):
    run_workflow(load_workflow(batch()), progress=False)
    changed = load_workflow(batch("vectorize:\n  connectivity: 8\n"))
    assert set(statuses(run_workflow(changed, progress=False)).values()) == {"done"}


def test_tta_in_the_workflow_redoes_items_and_equals_predict_tta(batch, tmp_path, checkpoint):
    """``tiling.tta`` changes the outputs' bytes: it is a setting (items are redone) and a run
    writes what ``predict_raster(..., tta=True)`` writes."""
    from geounet.predict import PredictConfig, predict_raster

    path = batch()
    run_workflow(load_workflow(path), progress=False)
    # Off, it is left out of the hashed settings: manifests from before it existed stay valid.
    assert "tta" not in load_workflow(path).output_settings()["tiling"]
    path.write_text(path.read_text().replace("{threshold: 0.444}",
                                             "{threshold: 0.444, tta: true}"))
    assert set(statuses(run_workflow(load_workflow(path), progress=False)).values()) == {"done"}
    expected = tmp_path / "expected_prob.tif"
    predict_raster(tmp_path / "in/s1.tif", checkpoint, None, expected,
                   PredictConfig(device="cpu", threads=1, progress=False, tta=True))
    with rasterio.open(expected) as a, rasterio.open(tmp_path / "out/s1_prob.tif") as b:
        assert np.array_equal(a.read(), b.read())


def test_a_failing_item_does_not_stop_the_others(batch, tmp_path):
    (tmp_path / "in/broken.tif").write_bytes(b"II*\x00 not really a tiff")
    result = CliRunner().invoke(main, ["run", str(batch("retries: 2\n")), "-q"])
    assert result.exit_code == 1
    report = json.loads((tmp_path / "out" / REPORT).read_text())
    assert report["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    broken = next(i for i in report["items"] if i["status"] == "failed")
    assert "broken.tif" in broken["reason"] and broken["summary"] is None
    assert broken["attempts"] == 1                   # a corrupt file is not retried
    assert "broken.tif" in result.output             # the summary names it even with -q
    assert not (tmp_path / "out/broken_mask.tif").exists()


def test_transient_failures_are_retried_a_bounded_number_of_times(batch, monkeypatch):
    calls: dict[str, int] = {}
    real = pipeline.process_item

    def flaky(item, workflow, sha):
        calls[item.input.name] = calls.get(item.input.name, 0) + 1
        if item.input.name == "s0.tif":
            raise OSError("disk hiccup")
        if item.input.name == "s1.tif" and calls["s1.tif"] <= 2:
            raise RuntimeError("transient")
        return real(item, workflow, sha)

    monkeypatch.setattr(pipeline, "process_item", flaky)
    report = run_workflow(load_workflow(batch("retries: 2\n")), progress=False)
    by_name = {r.input.name: r for r in report.items}
    assert by_name["s0.tif"].status == "failed" and by_name["s0.tif"].attempts == 3
    assert "disk hiccup" in by_name["s0.tif"].reason
    assert by_name["s1.tif"].status == "done" and by_name["s1.tif"].attempts == 3


def test_an_interrupted_item_is_redone_and_its_temporaries_removed(batch, tmp_path,
                                                                     monkeypatch):
    workflow = load_workflow(batch())
    real = pipeline.write_vectors

    def killed(item, workflow, mask):
        if item.input.name == "s1.tif":
            temporary_sibling(item.outputs["vector"]).write_bytes(b"half")
            raise KeyboardInterrupt  # like a kill between the mask and the vectors
        return real(item, workflow, mask)

    monkeypatch.setattr(pipeline, "write_vectors", killed)
    with pytest.raises(KeyboardInterrupt):
        run_workflow(workflow, progress=False)
    out = tmp_path / "out"
    assert (out / "s1_mask.tif").exists() and not (out / "s1.gpkg").exists()
    monkeypatch.setattr(pipeline, "write_vectors", real)
    temporary_sibling(out / MANIFEST).write_text("{")   # killed while saving the manifest
    report = run_workflow(workflow, progress=False)
    assert statuses(report) == {"s0.tif": "skipped", "s1.tif": "done", "s2.tif": "done"}
    assert not [p for p in out.iterdir() if ".geounet-" in p.name]


def test_temporaries_of_temporaries_of_any_depth_are_removed(batch, tmp_path):
    """Without a mask output, the vectors' mask is a temporary; predict writes it through a
    temporary of its own and rewrites that compactly through a third: a run killed then
    leaves ``.s0.gpkg.geounet-*``, ``..s0.gpkg.geounet-*`` and ``...s0.gpkg.geounet-*``."""
    out = tmp_path / "out"
    out.mkdir()
    kept_mask = temporary_sibling(out / "s0.gpkg", ".tif")
    written = temporary_sibling(kept_mask)
    compact = temporary_sibling(written)
    assert compact.name.startswith("...s0.gpkg.geounet-")
    run_workflow(load_workflow(batch("  mask: null\n")), progress=False)
    assert not [p.name for p in out.iterdir() if ".geounet-" in p.name]


def test_foreign_files_are_not_overwritten_unless_always(batch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "s2.gpkg").write_bytes(b"someone else's")
    report = run_workflow(load_workflow(batch()), progress=False)
    assert statuses(report)["s2.tif"] == "failed"
    assert "overwrite" in next(r.reason for r in report.items if r.input.name == "s2.tif")
    assert (out / "s2.gpkg").read_bytes() == b"someone else's"
    again = run_workflow(load_workflow(batch()), progress=False)
    assert statuses(again) == {"s0.tif": "skipped", "s1.tif": "skipped", "s2.tif": "failed"}
    wf = load_workflow(batch())
    always = wf.model_copy(update={"outputs": wf.outputs.model_copy(
        update={"overwrite": "always"})})
    assert set(statuses(run_workflow(always, progress=False)).values()) == {"done"}


def test_dry_run_lists_and_writes_nothing(batch, tmp_path):
    result = CliRunner().invoke(main, ["run", str(batch()), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.count("new input") == 3 and "3 would run" in result.output
    assert not (tmp_path / "out").exists()


def test_a_second_run_waits_or_stops_clearly_while_the_first_holds_the_lock(batch, tmp_path):
    workflow = load_workflow(batch())
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out, 0), pytest.raises(OutputError, match="another geounet run"):
        run_workflow(workflow, progress=False)
    assert not (out / MANIFEST).exists()
    held = threading.Event()

    def hold():
        with output_lock(out, 0):
            held.set()
            time.sleep(0.5)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    report = run_workflow(workflow, wait=10, progress=False)   # waits, then runs
    thread.join()
    assert set(statuses(report).values()) == {"done"}


def test_a_lock_that_is_a_symlink_or_not_a_file_is_refused_and_its_target_kept(batch, tmp_path):
    """The lock is opened without following symlinks: a planted ``.geounet.lock`` pointing at
    someone's file is refused, one line, and that file keeps its bytes."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "notes.txt"
    victim.write_text("precious\n")
    (out / LOCK).symlink_to(victim)
    result = CliRunner().invoke(main, ["run", str(batch()), "-q"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert LOCK in result.output and "not a regular file" in result.output
    assert victim.read_text() == "precious\n"
    assert not (out / MANIFEST).exists() and not (out / "s0_mask.tif").exists()
    (out / LOCK).unlink()
    (out / LOCK).mkdir()
    with pytest.raises(OutputError, match="not a regular file"):
        run_workflow(load_workflow(batch()), progress=False)


def test_outputs_in_the_input_folder_are_never_inputs(batch, tmp_path):
    """Inputs found by ``glob: '*'`` in the output folder: the second run does not take the
    first run's masks, vectors, previews, manifest or reports for inputs (they would clash:
    ``s0.gpkg`` and ``s0.tif`` would both write ``s0_mask.tif``)."""
    path = batch()
    path.write_text(path.read_text().replace("folder: in\n", "folder: in\n  glob: '*'\n")
                    .replace("folder: out", "folder: in"))
    workflow = load_workflow(path)
    first = run_workflow(workflow, progress=False)
    assert statuses(first) == {"s0.tif": "done", "s1.tif": "done", "s2.tif": "done"}
    assert (tmp_path / "in/s0.gpkg").exists() and (tmp_path / "in" / REPORT).exists()
    second = run_workflow(workflow, progress=False)
    assert statuses(second) == {"s0.tif": "skipped", "s1.tif": "skipped", "s2.tif": "skipped"}
    # Outputs an earlier run recorded for an input that is gone are not inputs either.
    (tmp_path / "in/s2.tif").rename(tmp_path / "elsewhere.tif")
    assert [p.name for p in discover_inputs(workflow)] == ["s0.tif", "s1.tif"]


def test_a_manifest_entry_missing_a_key_is_one_line_saying_what_to_do(batch, tmp_path):
    run_workflow(load_workflow(batch()), progress=False)
    path = tmp_path / "out" / MANIFEST
    saved = json.loads(path.read_text())
    del next(iter(saved["items"].values()))["outputs"]
    path.write_text(json.dumps(saved))
    result = CliRunner().invoke(main, ["run", str(batch())])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "unreadable manifest" in result.output and "overwrite: always" in result.output
    assert "internal error" not in result.output
    path.unlink()                                   # what the line says to do works
    redo = batch("  overwrite: always\n")
    assert set(statuses(run_workflow(load_workflow(redo), progress=False)).values()) == {"done"}


def test_json_report_on_stdout(batch):
    result = CliRunner().invoke(main, ["run", str(batch()), "--json", "-q"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["counts"]["done"] == 3


# -- scheduling and bundled workflows -----------------------------------------------------
def test_schedule_builds_a_non_overlapping_cron_job(batch):
    from apscheduler.triggers.cron import CronTrigger

    from geounet.cli.schedule import build_scheduler, run_once

    with pytest.raises(ConfigError, match="no schedule"):
        build_scheduler(batch())
    path = batch("schedule:\n  cron: '30 2 * * 1-5'\n")
    job = build_scheduler(path).get_jobs()[0]
    assert isinstance(job.trigger, CronTrigger)
    fields = {f.name: str(f) for f in job.trigger.fields}
    assert (fields["minute"], fields["hour"], fields["day_of_week"]) == ("30", "2", "1-5")
    assert job.max_instances == 1 and job.coalesce
    run_once(path)   # what the scheduler calls: one full run
    assert json.loads((path.parent / "out" / REPORT).read_text())["counts"]["done"] == 3


@pytest.mark.parametrize("name", ["roads.yaml", "cracks.yaml", "nightly.yaml"])
def test_bundled_workflows_are_valid(name):
    workflow = load_workflow(ROOT / "workflows" / name)
    assert workflow.model.is_file() and discover_inputs(workflow)
    if name == "nightly.yaml":
        assert workflow.schedule is not None


def test_outputs_never_replace_the_model_the_yaml_or_the_input_list(batch, tmp_path):
    """A name template that would write onto the workflow's model, its YAML file or its
    input list is refused when planning, even with ``overwrite: always``: nothing is run and
    the three files are unchanged."""
    model = Path(yaml.safe_load(batch().read_text())["model"])
    (tmp_path / "in" / f"{model.stem}.tif").write_bytes((tmp_path / "in/s0.tif").read_bytes())
    (tmp_path / "in/wf.tif").write_bytes((tmp_path / "in/s0.tif").read_bytes())
    (tmp_path / "list.txt").write_text("in/s1.tif\nin/list.tif\n")
    (tmp_path / "in/list.tif").write_bytes((tmp_path / "in/s0.tif").read_bytes())
    cases = {"model": (f"  folder: {model.parent}\n  mask: '{{stem}}.safetensors'\n", None),
             "YAML file": (f"  folder: {tmp_path}\n  mask: '{{stem}}.yaml'\n", None),
             "input list": (f"  folder: {tmp_path}\n  mask: '{{stem}}.txt'\n", "list.txt")}
    before = {p: p.read_bytes() for p in (model, tmp_path / "list.txt")}
    for what, (outputs, listed) in cases.items():
        text = batch().read_text().replace("  folder: out\n", outputs + "  overwrite: always\n")
        if listed:
            text = text.replace("inputs:\n  folder: in\n", f"inputs:\n  file: {listed}\n")
        path = tmp_path / "wf.yaml"
        path.write_text(text)
        result = CliRunner().invoke(main, ["run", str(path), "-q"])
        assert result.exit_code == 1, (what, result.output)
        assert f"is this workflow's {what}" in result.output, result.output
        assert path.read_text() == text
    assert {p: p.read_bytes() for p in before} == before


def test_shapefile_outputs_report_like_geopackages_and_a_lost_part_is_redone(batch, tmp_path):
    """With .shp outputs the run report read the widths back as null (the Shapefile holds
    them as mean_wid_m, max_wid_m); and a deleted .dbf or .shx left the item 'unchanged',
    its Shapefile unreadable for good."""
    reports = {}
    for ext in ("gpkg", "shp"):
        path = batch(f"  vector: '{{stem}}.{ext}'\n  centerlines: '{{stem}}_lines.{ext}'\n",
                     name=f"{ext}.yaml")
        text = path.read_text().replace("folder: out", f"folder: out_{ext}")
        path.write_text(text)
        reports[ext] = run_workflow(load_workflow(path), progress=False)
    summaries = {ext: {r.input.name: r.summary for r in report.items}
                 for ext, report in reports.items()}
    assert summaries["shp"] == summaries["gpkg"]
    assert any(c["mean_width_m"] is not None for s in summaries["shp"].values()
               for c in s["classes"].values())
    for part in ("s0.dbf", "s1_lines.shx"):
        (tmp_path / "out_shp" / part).unlink()
    again = run_workflow(load_workflow(tmp_path / "shp.yaml"), progress=False)
    assert statuses(again) == {"s0.tif": "done", "s1.tif": "done", "s2.tif": "skipped"}
    assert (tmp_path / "out_shp/s0.dbf").exists() and (tmp_path / "out_shp/s1_lines.shx").exists()
