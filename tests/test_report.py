"""report.html: rendered in headless Chromium from the report of a real sample workflow run.

The run is real: ``geounet run``'s runner segments crops of the road scene with the bundled
road model, vectorizes them with centerlines, skips an unchanged input and fails on a file
that is not a raster; its own ``run_report.json`` is rendered. The browser test needs the
Debian packages chromium and chromium-driver (CI installs them) and skips with the reason
when they are absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import rasterio
import yaml
from PIL import Image
from rasterio.windows import Window

from geounet.errors import InputError
from geounet.report import write_html_report
from geounet.workflow import load_workflow, run_workflow

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
CROPS = {"north": Window(1024, 0, 256, 256), "south": Window(2048, 3072, 256, 256)}


def _crop(window: Window, path: Path) -> Path:
    with rasterio.open(SAMPLE / "roads_image.tif") as src:
        profile = src.profile | {"width": window.width, "height": window.height,
                                 "transform": src.window_transform(window)}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return path


WORKFLOW = {
    "name": "roads", "inputs": {"folder": "inputs", "glob": "*.tif"},
    "model": str(SAMPLE / "models" / "roads.safetensors"), "bands": [1, 2, 3],
    "device": "cpu", "threads": 1,
    "outputs": {"folder": "out", "mask": "{stem}_mask.tif", "vector": "{stem}.gpkg",
                "centerlines": "{stem}_centerlines.gpkg",
                "preview": "{stem} preview.png"},  # a space: links must be quoted
    "vectorize": {"connectivity": 8, "centerlines": True}, "retries": 1,
}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A real sample workflow run with one input done, one skipped and one failed.

    ``geounet run``'s runner processes a crop of the road scene; a second run finds it
    unchanged (skipped), processes a second crop (done) and fails on a file that is not a
    raster. Returns the run's ``run_report.json`` (the runner wrote previews beside it).
    """
    base = tmp_path_factory.mktemp("run")
    inputs = base / "inputs"
    inputs.mkdir()
    workflow_file = base / "roads.yaml"
    workflow_file.write_text(yaml.safe_dump(WORKFLOW))
    _crop(CROPS["north"], inputs / "north.tif")
    run_workflow(load_workflow(workflow_file), progress=False)
    _crop(CROPS["south"], inputs / "south.tif")
    (inputs / "broken.tif").write_text("not a raster")
    report = run_workflow(load_workflow(workflow_file), progress=False)
    path = report.workflow.outputs.folder / "run_report.json"
    data = json.loads(path.read_text())
    assert [i["status"] for i in data["items"]] == ["failed", "skipped", "done"]
    assert (path.parent / "report.html").is_file()   # the runner writes the page too
    return path


def test_report_lists_every_input_with_status_counts_and_links(real_run):
    html_path = write_html_report(real_run, real_run.parent / "report.html")
    page = html_path.read_text()
    assert page.count('<tr class="item"') == 3
    for status in ("done", "skipped", "failed"):
        assert f'data-status="{status}"' in page
    report = json.loads(real_run.read_text())
    done = report["items"][2]["summary"]
    road = done["classes"]["road"]
    assert done["features"] > 0 and road["area_m2"] > 0
    assert f"{done['features']:,} features" in page
    assert f"centerlines {done['centerline_length_m']:,.1f} m" in page
    assert f"<td class=num>{road['max_width_m']:,.2f}</td>" in page  # widths per class
    assert "broken.tif: not a readable raster" in page  # the real failure, named
    assert "http://" not in page and "https://" not in page  # nothing from the network
    # Paths relative to the page, quoted (the preview's name has a space).
    assert 'href="north%20preview.png"' in page and 'src="north%20preview.png"' in page
    assert "broken_mask.tif (not written)" in page  # a failed item's outputs: no links


def test_report_marks_missing_outputs_and_escapes_reasons(tmp_path):
    report = {"workflow": "w", "items": [
        {"input": "/data/a.tif", "status": "skipped", "reason": "<script>alert(1)</script>",
         "outputs": {"mask": "gone_mask.tif"}, "summary": None},
        {"input": "/data/b.tif", "status": "failed", "reason": "disk full",
         "outputs": {"mask": "b_mask.tif"}, "summary": None}]}
    page = write_html_report(report, tmp_path / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "gone_mask.tif (missing)" in page and 'href="gone_mask.tif"' not in page
    assert "b_mask.tif (not written)" in page and "href" not in page


def test_a_failed_item_does_not_show_an_earlier_runs_files_as_its_own(tmp_path):
    """An input changed and then failed: its mask and preview from the earlier run were
    shown (thumbnail and live links) in the failed row as if they were its outputs."""
    Image.new("RGB", (8, 8)).save(tmp_path / "c_preview.png")
    (tmp_path / "c_mask.tif").write_bytes(b"earlier")
    report = {"workflow": "w", "items": [
        {"input": "/data/c.tif", "status": "failed", "reason": "input content changed; bad",
         "outputs": {"mask": "c_mask.tif", "preview": "c_preview.png"}, "summary": None}]}
    page = write_html_report(report, tmp_path / "report.html").read_text()
    assert "<img" not in page and 'href="c_mask.tif"' not in page
    assert "c_mask.tif (not written; the file there is an earlier run&#x27;s)" in page


def test_report_refuses_a_file_that_is_not_a_report(tmp_path):
    bad = tmp_path / "run_report.json"
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="not a run report"):
        write_html_report(bad, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium is absent: install the Debian packages chromium and "
                    "chromium-driver (`apt-get install -y chromium chromium-driver`)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=390,844"):  # a phone's viewport
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_report_in_headless_chromium(real_run, browser, tmp_path):
    from selenium.webdriver.common.by import By

    html_path = write_html_report(real_run, real_run.parent / "report.html")
    browser.get(html_path.as_uri())
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as png:  # a real rendering: not one flat colour
        assert len(png.convert("L").getcolors(2**16)) > 10
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.item")
    assert [r.get_attribute("data-status") for r in rows] == ["failed", "skipped", "done"]
    hrefs = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a[href]")]
    files = [Path(unquote(urlparse(h).path)) for h in hrefs]
    assert all(urlparse(h).scheme == "file" for h in hrefs)
    assert all(f.is_file() for f in files), [f for f in files if not f.is_file()]
    listed = {real_run.parent / p for item in json.loads(real_run.read_text())["items"]
              if item["status"] != "failed" for p in item["outputs"].values() if p}
    assert listed | {real_run} == set(files)  # every output is linked, and only files
    images = browser.find_elements(By.CSS_SELECTOR, "img")
    assert len(images) == 2
    for image in images:  # the thumbnails loaded, at the PNG's own size
        source = Path(unquote(urlparse(image.get_attribute("src")).path))
        with Image.open(source) as png:
            assert browser.execute_script("return arguments[0].naturalWidth", image) == png.width
    # Readable on a phone: nothing wider than the 390 px viewport.
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth")
