"""report.html: rendered in headless Chromium from the report of a real run.

The run is real: two crops of the road scene are segmented with the bundled road model,
vectorized and previewed, and a third input that is not a raster fails; ``run_report.json``
follows the schema ``geounet run`` writes. The browser test needs the Debian packages
chromium and chromium-driver (CI installs them) and skips with the reason when they are absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import geopandas as gpd
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window

from geounet.errors import GeoUNetError, InputError
from geounet.predict import PredictConfig, predict_raster
from geounet.preview import render_preview
from geounet.report import write_html_report
from geounet.vectorize import VectorizeConfig, vectorize_raster

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


def _class_summary(vector: Path) -> dict:
    """The report's summary of one vector file: totals and per class."""
    frame = gpd.read_file(vector)
    classes = {}
    for name, group in frame.groupby("class_name"):
        def column(key, how, group=group):
            return float(getattr(group[key], how)()) if key in group else None
        classes[str(name)] = {"features": len(group), "area_m2": column("area_m2", "sum"),
                              "length_m": column("length_m", "sum"),
                              "mean_width_m": column("mean_width_m", "mean"),
                              "max_width_m": column("max_width_m", "max")}
    lengths = [c["length_m"] for c in classes.values() if c["length_m"] is not None]
    return {"features": len(frame), "area_m2": float(frame["area_m2"].sum()),
            "centerline_length_m": sum(lengths) if lengths else None, "classes": classes}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A run folder with real outputs and its run_report.json; returns the report's path."""
    base = tmp_path_factory.mktemp("run")
    inputs, out = base / "inputs", base / "out"
    inputs.mkdir()
    out.mkdir()
    model = SAMPLE / "models" / "roads.safetensors"
    config = PredictConfig(device="cpu", progress=False, threads=1)
    items = []
    for status, (name, window) in zip(("done", "skipped"), CROPS.items()):
        image = _crop(window, inputs / f"{name}.tif")
        result = predict_raster(image, model, out / f"{name}_mask.tif", None, config)
        vectors = vectorize_raster(result.mask, out / f"{name}.gpkg", VectorizeConfig())
        render_preview(image, out / f"{name} preview.png", mask=result.mask,
                       vector=vectors.output, max_size=256)
        items.append({
            "input": str(image), "status": status,
            "reason": "outputs up to date" if status == "skipped" else None,
            "attempts": 1, "seconds": result.seconds,
            "outputs": {"mask": f"{name}_mask.tif", "probabilities": None,
                        "vector": f"{name}.gpkg", "centerlines": None,
                        "preview": f"{name} preview.png"},
            "summary": _class_summary(vectors.output)})
    broken = inputs / "broken.tif"
    broken.write_text("not a raster")
    with pytest.raises(GeoUNetError) as failure:
        predict_raster(broken, model, out / "broken_mask.tif", None, config)
    reason = str(failure.value).splitlines()[0]
    items.append({"input": str(broken), "status": "failed", "reason": reason,
                  "attempts": 2, "seconds": 0.01,
                  "outputs": {"mask": None, "probabilities": None, "vector": None,
                              "centerlines": None, "preview": None}, "summary": None})
    report = {
        "workflow": "roads", "workflow_file": str(base / "roads.yaml"),
        "started": "2026-11-25T10:00:00+00:00", "finished": "2026-11-25T10:00:05+00:00",
        "seconds": 5.0,
        "model": {"path": str(model), "sha256": "0" * 64,
                  "class_names": ["background", "road"]},
        "settings": {"tiling": {"batch_size": 4}, "device": "cpu"},
        "counts": {"done": 1, "skipped": 1, "failed": 1}, "items": items}
    path = out / "run_report.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def test_report_lists_every_input_with_status_counts_and_links(real_run):
    html_path = write_html_report(real_run, real_run.parent / "report.html")
    page = html_path.read_text()
    assert page.count('<tr class="item"') == 3
    for status in ("done", "skipped", "failed"):
        assert f'data-status="{status}"' in page
    report = json.loads(real_run.read_text())
    done = report["items"][0]["summary"]
    assert done["features"] > 0 and done["classes"]["road"]["area_m2"] > 0
    assert f"{done['features']:,} features" in page
    assert "broken.tif: not a readable raster" in page  # the real failure, named
    assert "http://" not in page and "https://" not in page  # nothing from the network
    # Paths relative to the page, quoted (the preview's name has a space).
    assert 'href="north%20preview.png"' in page and 'src="north%20preview.png"' in page


def test_report_marks_missing_outputs_and_escapes_reasons(tmp_path):
    report = {"workflow": "w", "items": [
        {"input": "/data/a.tif", "status": "failed", "reason": "<script>alert(1)</script>",
         "outputs": {"mask": "gone_mask.tif"}, "summary": None}]}
    page = write_html_report(report, tmp_path / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "gone_mask.tif (missing)" in page and 'href="gone_mask.tif"' not in page


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
    assert [r.get_attribute("data-status") for r in rows] == ["done", "skipped", "failed"]
    hrefs = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a[href]")]
    files = [Path(unquote(urlparse(h).path)) for h in hrefs]
    assert all(urlparse(h).scheme == "file" for h in hrefs)
    assert all(f.is_file() for f in files), [f for f in files if not f.is_file()]
    listed = {real_run.parent / p for item in json.loads(real_run.read_text())["items"]
              for p in item["outputs"].values() if p}
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
