"""Quicklooks: the overlay shows the features where they are, nodata is never black, the
stretch suits each dtype, the scale bar is in metres, and the CLI writes one PNG or one error.

Overlay checks render each preview twice, with and without the mask: the pixels that changed
must be exactly the cells the mask covers after decimation, computed here independently of
the code (a block maximum over whole cells, or a brute-force loop for fractional factors).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from PIL import Image
from rasterio.features import rasterize
from rasterio.transform import from_origin
from scipy import ndimage

from geounet.cli import main
from geounet.errors import InputError
from geounet.preview import (
    decimate_mask,
    decimated_read_cost,
    format_length,
    nice_length,
    render_preview,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
DATA = ROOT.parent / "shared" / "data"


def _pixels(path: Path, rows: int) -> np.ndarray:
    """The preview image (RGBA, the caption strip cut off) as ``(rows, cols, 4)``."""
    with Image.open(path) as png:
        return np.asarray(png.convert("RGBA"))[:rows]


def _block_any(mask: np.ndarray, factor: int) -> np.ndarray:
    """Foreground (non-zero) per ``factor x factor`` cell: the decimation the overlay uses."""
    rows, cols = mask.shape[0] // factor, mask.shape[1] // factor
    cells = mask[:rows * factor, :cols * factor].reshape(rows, factor, cols, factor)
    return cells.any(axis=(1, 3))


def _overlay(image: Path, mask: Path, tmp_path: Path, max_size: int, **kwargs):
    """Changed pixels between the previews with and without ``mask``, and the info."""
    render_preview(image, tmp_path / "plain.png", max_size=max_size, **kwargs)
    info = render_preview(image, tmp_path / "overlay.png", mask=mask, max_size=max_size,
                          **kwargs)
    rows = info.size[1]
    changed = (_pixels(tmp_path / "plain.png", rows)[..., :3]
               != _pixels(tmp_path / "overlay.png", rows)[..., :3]).any(axis=-1)
    return changed, info


def _assert_overlay_matches(changed: np.ndarray, expected: np.ndarray) -> None:
    assert changed.shape == expected.shape
    assert expected.sum() > 100  # the scene has features to show
    # A blended pixel can only equal the original where the image already has the overlay
    # colour: allow one pixel in a thousand of those, and nothing outside the mask.
    assert not (changed & ~expected).any()
    assert (expected & ~changed).sum() <= expected.sum() / 1000


@pytest.mark.parametrize("scene", ["roads", "cracks"])
def test_sample_scene_overlay_is_where_the_mask_is(scene, tmp_path):
    image, mask = SAMPLE / f"{scene}_image.tif", SAMPLE / f"{scene}_mask.tif"
    with rasterio.open(mask) as src:
        truth = src.read(1)
    changed, info = _overlay(image, mask, tmp_path, max_size=512)
    factor = truth.shape[0] // 512
    assert info.factor == (factor, factor)
    _assert_overlay_matches(changed, _block_any(truth > 0, factor))
    # Thin features survive decimation: every labelled crack or road is drawn.
    assert info.mask_pixels["class 1"] == int(_block_any(truth > 0, factor).sum())


def _real(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (see ../shared/data/README.md)")
    return path


def _outline_pixels(image: Path, vector: Path, tmp_path: Path, max_size: int) -> np.ndarray:
    render_preview(image, tmp_path / "no_vector.png", max_size=max_size)
    info = render_preview(image, tmp_path / "vector.png", vector=vector, max_size=max_size)
    rows = info.size[1]
    return (_pixels(tmp_path / "no_vector.png", rows)[..., :3]
            != _pixels(tmp_path / "vector.png", rows)[..., :3]).any(axis=-1)


def test_vegas_roads_overlay_and_centerlines_on_the_roads(tmp_path):
    """SpaceNet Las Vegas, EPSG:4326: mask overlay and centerlines land on the labelled roads."""
    image = _real("spacenet_vegas_road", "road_mask_input.tif")
    mask = _real("spacenet_vegas_road", "sample_road_raster_mask.tif")
    lines = _real("spacenet_vegas_road", "sample_roads_for_masking.geojson")
    with rasterio.open(mask) as src:
        truth = src.read(1) > 0
        degrees, latitude = src.transform.a, src.xy(src.height / 2, 0)[1]
    changed, info = _overlay(image, mask, tmp_path, max_size=650)
    expected = _block_any(truth, 2)
    _assert_overlay_matches(changed, expected)
    assert info.crs == "EPSG:4326"
    # Geodesic: a degree of longitude is 111.32 km times cos(latitude) on WGS 84, near enough.
    east_west = degrees * 111_320 * np.cos(np.radians(latitude))
    assert info.metres_per_pixel == pytest.approx(2 * east_west, rel=5e-3)
    outline = _outline_pixels(image, lines, tmp_path, max_size=650)
    assert outline.sum() > 500
    assert (outline & expected).sum() / outline.sum() > 0.9  # drawn on the road mask


def test_atlanta_building_outlines_on_the_rasterized_labels(tmp_path):
    """SpaceNet Atlanta, EPSG:32616 with nodata 0: polygon outlines lie on the footprints."""
    import geopandas as gpd

    image = _real("spacenet_atlanta", "sample_geotiff.tif")
    labels = _real("spacenet_atlanta", "geotiff_labels.geojson")
    with rasterio.open(image) as src:
        frame = gpd.read_file(labels).to_crs(src.crs)
        truth = rasterize(frame.geometry, out_shape=src.shape, transform=src.transform,
                          dtype="uint8")
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": None}
    mask = tmp_path / "buildings.tif"
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(truth, 1)
    changed, _ = _overlay(image, mask, tmp_path, max_size=450)
    expected = _block_any(truth > 0, 2)
    _assert_overlay_matches(changed, expected)
    outline = _outline_pixels(image, labels, tmp_path, max_size=450)
    near = ndimage.binary_dilation(expected, iterations=2)
    assert outline.sum() > 300 and (outline & near).sum() / outline.sum() > 0.95


def test_landsat_nodata_is_transparent_not_black(tmp_path):
    """Landsat RGB with a nodata collar: the collar is transparent, the scene opaque."""
    image = _real("landsat_rgb", "RGB.byte.tif")
    info = render_preview(image, tmp_path / "landsat.png", max_size=333)
    rows, cols = info.size[1], info.size[0]
    pixels = _pixels(tmp_path / "landsat.png", rows)
    with rasterio.open(image) as src:  # GDAL's nearest: the source pixel under each centre
        valid = src.dataset_mask() > 0
        r = ((np.arange(rows) + 0.5) * src.height / rows).astype(int)
        c = ((np.arange(cols) + 0.5) * src.width / cols).astype(int)
    expected = valid[np.ix_(r, c)]
    assert (~expected).sum() > 1000  # the collar is there
    assert np.array_equal(pixels[..., 3] == 255, expected)
    assert info.metres_per_pixel == pytest.approx(300.04 * 791 / cols, rel=1e-3)
    grey = render_preview(image, tmp_path / "grey.png", max_size=333, nodata="grey")
    assert grey.size == info.size
    pixels = _pixels(tmp_path / "grey.png", rows)
    assert (pixels[..., 3] == 255).all()
    assert (pixels[~expected][:, :3] == 128).all()


def test_overviews_are_used_when_present(make_raster, tmp_path):
    """A 1-pixel checkerboard: decimated reads give 0/255, averaged overviews a flat grey."""
    board = ((np.indices((256, 256)).sum(axis=0) % 2) * 255).astype(np.uint8)
    plain = make_raster(board[None], name="plain.tif")
    with_overviews = make_raster(board[None], name="overviews.tif")
    with rasterio.open(with_overviews, "r+") as dst:
        dst.build_overviews([2, 4], rasterio.enums.Resampling.average)
    for path, name in ((plain, "plain.png"), (with_overviews, "overviews.png")):
        render_preview(path, tmp_path / name, max_size=100)
    decimated = _pixels(tmp_path / "plain.png", 100)[..., 0]
    from_overviews = _pixels(tmp_path / "overviews.png", 100)[..., 0]
    assert set(np.unique(decimated)) == {0, 255}
    assert (from_overviews == 128).all()  # read from the 1:2 overview: constant grey


def _sparse(path: Path, size: int) -> Path:
    """A valid sparse GeoTIFF of ``size``^2 px in 4096^2 blocks: one 64 px square of 200."""
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1,
                       dtype="uint8", crs="EPSG:32633", nodata=0, tiled=True,
                       transform=from_origin(500000, 5000000, 0.5, 0.5), blockxsize=4096,
                       blockysize=4096, compress="deflate", sparse_ok=True,
                       bigtiff="yes") as dst:
        dst.write(np.full((1, 64, 64), 200, np.uint8), window=((0, 64), (0, 64)))
    return path


def test_huge_raster_without_overviews_is_refused_at_once(tmp_path):
    """10^6 x 10^6 px without overviews: a decimated read would decode every 4096^2 block
    (10^12 px): refused before reading, with the command that adds overviews."""
    huge = _sparse(tmp_path / "huge.tif", 1_000_000)
    with pytest.raises(InputError, match=r"without overviews.*gdaladdo -ro"):
        render_preview(huge, tmp_path / "huge.png")
    assert not (tmp_path / "huge.png").exists()


def test_wide_blocks_are_cached_a_row_at_a_time(tmp_path):
    """50000^2 px in 4096^2 blocks: a row of 13 blocks (218 MB) does not fit GDAL's default
    cache, so each preview row decoded them all again (70 s); the cache now holds a row."""
    wide = _sparse(tmp_path / "wide.tif", 50_000)
    with rasterio.open(wide) as src:
        pixels, row_bytes = decimated_read_cost(src, 1, (1024, 1024))
    assert pixels == 13 * 13 * 4096**2 and row_bytes == 13 * 4096**2
    render_preview(wide, tmp_path / "wide.png")
    shown = _pixels(tmp_path / "wide.png", 1024)
    assert shown[0, 0, 3] == 255 and shown[-1, -1, 3] == 0  # data at the corner, nodata clear


@pytest.mark.parametrize("nodata", [255, 7])
def test_any_decimation_with_a_fractional_factor(make_raster, nodata):
    """A cell shows a class when any of its pixels has it (highest id); nodata is background."""
    rng = np.random.default_rng(3)
    mask = np.zeros((1, 131, 97), np.uint8)
    mask[0][rng.random((131, 97)) < 0.01] = 1
    mask[0][rng.random((131, 97)) < 0.003] = 2
    mask[0, :20, :20] = nodata
    path = make_raster(mask, name="mask.tif", nodata=nodata)
    classes, known = decimate_mask(path, (40, 29))
    assert known.names == () and known.colors == ()
    assert classes[:5, :4].max() == 0  # cells of nodata only
    data = np.where(mask[0] == nodata, 0, mask[0])
    for i in range(40):
        for j in range(29):
            cell = data[i * 131 // 40:(i + 1) * 131 // 40, j * 97 // 29:(j + 1) * 97 // 29]
            assert classes[i, j] == cell.max()


def test_stretch_of_11_bit_single_band_and_float_with_nan(make_raster, tmp_path):
    rng = np.random.default_rng(0)
    eleven = rng.integers(1, 2048, (1, 60, 80), dtype=np.uint16)  # 11-bit in uint16
    info = render_preview(make_raster(eleven, name="pan.tif"), tmp_path / "pan.png")
    pixels = _pixels(tmp_path / "pan.png", info.size[1])
    assert info.size == (80, 60)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey
    low, high = np.percentile(pixels[..., 0], (1, 99))
    assert low < 10 and high > 245  # stretched over the full range, not dark
    values = rng.normal(0.3, 0.05, (3, 60, 80)).astype(np.float32)
    values[:, :10] = np.nan
    info = render_preview(make_raster(values, name="f.tif"), tmp_path / "f.png")
    pixels = _pixels(tmp_path / "f.png", info.size[1])
    assert (pixels[:10, :, 3] == 0).all() and (pixels[10:, :, 3] == 255).all()
    assert np.percentile(pixels[10:, :, :3], 50) == pytest.approx(128, abs=20)


def test_a_constant_image_is_grey_not_black(make_raster, tmp_path):
    info = render_preview(make_raster(np.full((3, 20, 30), 7, np.uint8)), tmp_path / "c.png")
    assert (_pixels(tmp_path / "c.png", info.size[1])[..., :3] == 128).all()


def test_scale_bar_in_metres(make_raster, tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (3, 300, 500), dtype=np.uint8)
    utm = render_preview(make_raster(image), tmp_path / "utm.png", max_size=250)
    assert utm.metres_per_pixel == pytest.approx(0.5 * 2)  # 0.5 m pixels, 1:2
    assert utm.scale_bar_m == 50  # the largest 1-2-5 length under a fifth of 250 m
    degrees = make_raster(image, name="geo.tif", crs="EPSG:4326",
                          transform=from_origin(10.0, 0.0005, 0.0001, 0.0001))
    geo = render_preview(degrees, tmp_path / "geo.png")
    assert geo.metres_per_pixel == pytest.approx(11.132, rel=1e-3)  # 1e-4 deg at the equator
    bare = render_preview(make_raster(image, name="bare.tif", crs=None,
                                      transform=from_origin(0, 0, 1, 1)), tmp_path / "b.png")
    assert bare.metres_per_pixel is None and bare.scale_bar_m is None
    assert (nice_length(740), nice_length(0.3), nice_length(2)) == (500, 0.2, 2)
    assert [format_length(v) for v in (20000, 50, 0.2, 0.005)] == [
        "20 km", "50 m", "20 cm", "5 mm"]


def test_mask_on_another_grid_is_refused_without_output(make_raster, tmp_path):
    image = make_raster(np.zeros((3, 40, 40), np.uint8))
    mask = make_raster(np.zeros((1, 20, 20), np.uint8), name="m.tif")
    with pytest.raises(InputError, match="not on the image's grid"):
        render_preview(image, tmp_path / "p.png", mask=mask)
    assert not (tmp_path / "p.png").exists()


def test_unreadable_vector_is_one_clear_error_without_output(make_raster, tmp_path):
    image = make_raster(np.zeros((3, 40, 40), np.uint8))
    junk = tmp_path / "junk.gpkg"
    junk.write_text("not a vector file")
    with pytest.raises(InputError, match="junk.gpkg: not a readable vector file"):
        render_preview(image, tmp_path / "p.png", vector=junk)
    assert not (tmp_path / "p.png").exists()


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_preview_writes_a_png_and_a_json_summary(tmp_path):
    out = tmp_path / "roads.png"
    result = _invoke("preview", SAMPLE / "cracks_image.tif", "--mask",
                     SAMPLE / "cracks_mask.tif", "--vector", SAMPLE / "cracks_labels.gpkg",
                     "-o", out, "--max-size", "256", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["size"] == [256, 256] and summary["crs"] == "EPSG:32633"
    assert summary["features"] > 0 and summary["mask_pixels"]["class 1"] > 0
    with Image.open(out) as png:
        assert png.width == 256 and png.height > 256  # the caption strip below
    again = _invoke("preview", SAMPLE / "cracks_image.tif", "-o", out)
    assert again.exit_code == 1
    assert again.stderr.strip().splitlines() == [
        f"geounet: error: {out}: already exists; pass --overwrite to replace it"]
    table = _invoke("preview", SAMPLE / "cracks_image.tif", "-o", out, "--overwrite")
    assert table.exit_code == 0 and table.stdout == ""
    assert "cracks_image.tif" in table.stderr and f"wrote {out}" in table.stderr


# -- class colours (issue 17) ------------------------------------------------------------------
LAND_COVER = ("background", "building", "road", "water")
COLOURS = ("#202020", "#e4002b", "#00a651", "#0072ce")


def test_predicted_mask_carries_the_models_colours_and_preview_paints_them(
        make_raster, make_metadata, tmp_path):
    """A 4-class model's mask holds its class colours (tag and GDAL colour table); the
    preview paints class k in colour k and its legend lists every class, shown or not."""
    from dataclasses import replace

    import torch

    from geounet.checkpoint import save_checkpoint
    from geounet.geotiff import read_class_colors, read_class_names
    from geounet.model import UNet, UNetConfig

    arch = UNetConfig(3, 4, 4, 2)
    torch.manual_seed(10)
    net = UNet(arch).eval()
    with torch.no_grad():  # a random net's logits barely vary: amplify them
        net.outc.weight.mul_(100)
        net.outc.bias.zero_()
    meta = replace(make_metadata(arch), class_names=LAND_COVER, class_colors=COLOURS)
    model = save_checkpoint(tmp_path / "landcover.safetensors", net, meta)
    image = make_raster(np.random.default_rng(4).integers(0, 255, (3, 70, 90), np.uint8))
    mask = tmp_path / "mask.tif"
    done = _invoke("predict", image, "-m", model, "-o", mask, "-q")
    assert done.exit_code == 0, done.output
    with rasterio.open(mask) as src:
        ids = src.read(1)
        assert read_class_names(src) == list(LAND_COVER)
        assert read_class_colors(src) == list(COLOURS)
        table = src.colormap(1)   # what QGIS and gdalinfo show
    assert [table[k] for k in range(4)] == [(*_rgb(c), 255) for c in COLOURS]
    assert table[255][3] == 0     # nodata: transparent
    shown = sorted(set(np.unique(ids).tolist()) - {0})
    assert len(shown) >= 2        # the random model predicts several classes here
    out = tmp_path / "p.png"
    result = _invoke("preview", image, "--mask", mask, "-o", out, "--opacity", "1", "--json")
    assert result.exit_code == 0, result.output
    pixels = _pixels(out, 70)[..., :3]
    for k in shown:                # full opacity at full size: class k is colour k exactly
        assert (pixels[ids == k] == _rgb(COLOURS[k])).all(), LAND_COVER[k]
    legend = json.loads(result.stdout)["legend"]
    assert legend == [{"class": n, "color": c} for n, c in zip(LAND_COVER, COLOURS)]
    with Image.open(out) as png:
        caption = np.asarray(png.convert("RGB"))[70:]
    for colour in COLOURS[1:]:    # a filled box per foreground class, absent ones too
        assert (caption == _rgb(colour)).all(axis=-1).sum() >= 16, colour


def test_mask_without_colours_keeps_the_default_palette(make_raster, tmp_path):
    from geounet.palette import class_colour

    image = make_raster(np.full((3, 30, 40), 90, np.uint8))
    ids = np.zeros((1, 30, 40), np.uint8)
    ids[0, 5:10, 5:30], ids[0, 20:25, 10:20] = 1, 2
    mask = make_raster(ids, name="plain_mask.tif", nodata=255)
    info = render_preview(image, tmp_path / "p.png", mask=mask, opacity=1.0)
    pixels = _pixels(tmp_path / "p.png", 30)[..., :3]
    for k in (1, 2):
        assert (pixels[ids[0] == k] == class_colour(k)).all()
    assert [name for name, _ in info.legend] == ["class 1", "class 2"]


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
