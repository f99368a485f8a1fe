"""Quicklook PNGs of rasters of any size, with a mask overlay, vector outlines and a scale bar.

The image is read at reduced resolution in one GDAL call (``out_shape``): GDAL uses the
raster's overviews when it has them and otherwise decimates with nearest neighbour while
reading, so a 16384 x 16384 raster costs a 1024 x 1024 buffer, not the full raster.

The preview grid: the longer side becomes ``max_size`` pixels (never upsampled), and preview
pixel ``(i, j)`` is the *cell* of source rows ``[floor(i*H/h), floor((i+1)*H/h))`` and columns
``[floor(j*W/w), floor((j+1)*W/w))``. GDAL's nearest neighbour picks a pixel inside that cell
for the image; the mask is reduced over the whole cell with *any*: a cell shows a class when
any of its pixels has it (the highest class id wins; nodata counts as background), so a crack
one pixel wide stays visible after decimation. The mask is read in strips of full-resolution
rows, so its memory is bounded too.

Contrast: each band is stretched linearly between its 2nd and 98th percentiles over the valid
pixels of the preview, which suits 8-bit, 11/12-bit in uint16, and float imagery alike. Nodata
(the dataset mask, NaN and infinity) is transparent (or neutral grey), never black.

Colours: each class in the colour the mask declares (``GEOUNET_CLASS_COLORS``, the model's
``class_colors``, :func:`geounet.geotiff.read_class_colors`), else the default palette
(:func:`geounet.palette.class_colour`); vector outlines take their ``class_id``'s colour,
darker. The legend lists every class the mask names, also those absent from the view
(background too, as an empty box, for models of more than two classes: it is not painted);
a mask without names lists the classes it shows.

Below the image a caption strip gives the file, the size, the CRS, the legend and a scale bar
in metres (planar in a projected CRS; geodesic along the centre row in a geographic one).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image, ImageDraw, ImageFont
from rasterio.enums import Resampling
from rasterio.windows import Window

from geounet.errors import ConfigError, InputError
from geounet.geotiff import read_class_colors, read_class_names
from geounet.io import gcp_transform, open_raster
from geounet.outputs import atomic_path, check_output, check_vector_name, first_line
from geounet.palette import CLASS_COLOURS, class_colour, to_hex, to_rgb  # noqa: F401

log = logging.getLogger(__name__)

NODATA_GREY = (128, 128, 128)
MASK_STRIP_BYTES = 32 * 2**20  # full-resolution mask rows read at once
GDAL_CACHE_BYTES = 64 * 2**20  # GDAL block cache while reading: bounds memory on big rasters
# Most pixels a preview decodes: blocks a decimated read touches without overviews (GDAL reads
# a whole block for each sample in it), and a mask's pixels (reduced with *any*, all read).
DECODE_BUDGET_PIXELS = 2**33
MAX_CACHE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class PreviewInfo:
    """What :func:`render_preview` drew.

    ``size`` is the preview image's ``(width, height)`` in pixels (the caption strip below it
    not included); ``factor`` is source pixels per preview pixel ``(x, y)``;
    ``metres_per_pixel`` is the ground size of one preview pixel (None without a CRS);
    ``mask_pixels`` counts preview pixels per class name; ``legend`` is the legend's
    ``(class name, '#rrggbb')`` entries in order; ``features`` counts vector geometries
    drawn.
    """

    output: Path
    source_size: tuple[int, int]
    size: tuple[int, int]
    factor: tuple[float, float]
    crs: str | None
    metres_per_pixel: float | None
    scale_bar_m: float | None
    mask_pixels: dict[str, int] = field(default_factory=dict)
    legend: tuple[tuple[str, str], ...] = ()
    features: int = 0
    seconds: float = 0.0


def preview_shape(width: int, height: int, max_size: int) -> tuple[int, int]:
    """``(rows, cols)`` of the preview grid: the longer side at most ``max_size`` pixels."""
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def cell_starts(source: int, out: int) -> np.ndarray:
    """First source index of each of ``out`` preview cells along an axis of ``source``."""
    return (np.arange(out, dtype=np.int64) * source) // out


@dataclass(frozen=True)
class MaskClasses:
    """What a mask's tags say about its classes: names and ``'#rrggbb'`` colours by class
    id (either may be empty: a mask not written by geounet)."""

    names: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()

    def name(self, class_id: int) -> str:
        """The class's name, or ``class N``."""
        return self.names[class_id] if class_id < len(self.names) else f"class {class_id}"

    def colour(self, class_id: int) -> tuple[int, int, int]:
        """The class's RGB: the mask's colour, else the default palette's."""
        if class_id < len(self.colors):
            return to_rgb(self.colors[class_id])
        return class_colour(class_id)

    def legend_ids(self, shown: Sequence[int]) -> list[int]:
        """Class ids in the legend: every named class (background only with more than two
        classes) and any other class id ``shown``, in id order."""
        named = range(0 if len(self.names) > 2 else 1, len(self.names))
        return sorted(set(named) | {c for c in shown if c})


def decimate_mask(path: str | Path, shape: tuple[int, int]) -> tuple[np.ndarray, MaskClasses]:
    """Reduce a class mask to ``shape`` with *any* (see the module docstring).

    Returns the decimated class ids (uint8, 0 = background or nodata) and the class names
    and colours from the mask's tags (:func:`geounet.geotiff.read_class_names`,
    :func:`geounet.geotiff.read_class_colors`; empty when absent).
    """
    rows, cols = shape
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(path) as src:
        classes = MaskClasses(tuple(read_class_names(src)), tuple(read_class_colors(src)))
        row_starts, col_starts = cell_starts(src.height, rows), cell_starts(src.width, cols)
        out = np.zeros(shape, dtype=np.uint8)
        strip = max(1, MASK_STRIP_BYTES // max(1, src.width))
        i = 0
        while i < rows:  # whole cells per strip: at least one, as many as fit the budget
            j = i + 1
            while j < rows and row_starts[j] - row_starts[i] < strip:
                j += 1
            top = int(row_starts[i])
            bottom = int(row_starts[j]) if j < rows else src.height
            data = src.read(1, window=Window(0, top, src.width, bottom - top))
            data, offset = _without_nodata(data, src.nodata)
            bounds = [*(row_starts[i:j] - top), bottom - top]
            cell_rows = np.stack([data[a:b].max(axis=0) for a, b in zip(bounds, bounds[1:])])
            cells = np.maximum.reduceat(cell_rows, col_starts, axis=1)
            out[i:j] = np.maximum(cells, offset) - offset
            i = j
    return out, classes


def _without_nodata(data: np.ndarray, nodata: float | None) -> tuple[np.ndarray, int]:
    """Class ids as uint8 with nodata below every class, and the offset added to them.

    Nodata 255 in a uint8 mask (what ``predict`` writes) wraps to 0 by adding 1 in place,
    one cheap pass; other nodata values become 0 (background).
    """
    if data.dtype == np.uint8 and nodata == 255:
        data += 1
        return data, 1
    if nodata is not None:
        data[data == nodata] = 0
    if data.dtype != np.uint8:  # class ids beyond uint8 are not a mask
        data = np.clip(np.nan_to_num(data, nan=0, posinf=0, neginf=0), 0, 255).astype(np.uint8)
    return data, 0


def stretch(data: np.ndarray, valid: np.ndarray, percentiles: tuple[float, float] = (2, 98),
            ) -> np.ndarray:
    """Per-band linear stretch of ``(bands, rows, cols)`` to uint8 between percentiles."""
    out = np.zeros(data.shape, dtype=np.uint8)
    for b, band in enumerate(data):
        values = band[valid]
        if values.size == 0:
            continue
        lo, hi = (float(v) for v in np.percentile(values, percentiles))
        if hi <= lo:  # a constant band: mid grey rather than black
            out[b] = 128
            continue
        out[b] = np.round(np.clip((band - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    return out


def render_preview(image: str | Path, output_png: str | Path, mask: str | Path | None = None,
                   vector: str | Path | Sequence[str | Path] | None = None,
                   max_size: int = 1024, bands: Sequence[int] | None = None,
                   nodata: str = "transparent", opacity: float = 0.5,
                   percentiles: tuple[float, float] = (2, 98), overwrite: bool = False,
                   ) -> PreviewInfo:
    """Write a quicklook PNG of ``image`` (any size) with optional mask and vector overlays.

    Args:
        image: a raster GDAL reads. Bands 1, 2, 3 are shown as RGB (one band as grey).
        output_png: the PNG to write (atomically; kept unless ``overwrite``).
        mask: a class mask on the image's grid (0 = background; e.g. from ``predict``).
        vector: vector file(s) drawn as outlines (every layer: polygons, centerlines).
        max_size: longest side of the preview in pixels (never upsampled).
        bands: 1-based bands to show (one or three); default 1,2,3 or 1.
        nodata: ``"transparent"`` (RGBA PNG) or ``"grey"`` for nodata pixels.
        opacity: mask overlay opacity in [0, 1].
        percentiles: the contrast stretch's low and high percentiles over valid pixels.
    """
    start = time.perf_counter()
    if nodata not in ("transparent", "grey"):
        raise InputError(f"nodata={nodata!r}: choose 'transparent' or 'grey'")
    if max_size < 16:
        raise InputError(f"max_size={max_size}: give at least 16 pixels")
    vectors = [] if vector is None else (
        [Path(vector)] if isinstance(vector, (str, Path)) else [Path(v) for v in vector])
    inputs = [Path(image), *([Path(mask)] if mask else []), *vectors]
    output_png = check_output(output_png, inputs, overwrite)
    if output_png.suffix.lower() != ".png":
        raise ConfigError(f"{output_png}: the preview is a PNG picture; name it "
                          f"{output_png.with_suffix('.png').name}")
    info = open_raster(image)
    shape = preview_shape(info.width, info.height, max_size)
    chosen = _bands(info.count, bands, image)
    with rasterio.open(image) as src:
        cache = _read_cache_bytes(src, chosen[0], shape)
    with rasterio.Env(GDAL_CACHEMAX=cache), rasterio.open(image) as src:
        log.info("%s: %dx%d read as %dx%d (%s)", image, info.width, info.height, shape[1],
                 shape[0], f"overviews {src.overviews(chosen[0])}" if src.overviews(chosen[0])
                 else "decimated read, no overviews")
        data = src.read(chosen, out_shape=(len(chosen), *shape),
                        resampling=Resampling.nearest).astype(np.float32)
        valid = src.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
        transform, crs = src.transform, src.crs
        if crs is None and src.gcps[1] is not None and src.gcps[0]:
            transform, crs = gcp_transform(src.gcps[0])[0], src.gcps[1]
    valid &= np.isfinite(data).all(axis=0)
    rgb = stretch(np.where(np.isfinite(data), data, 0), valid, percentiles)
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    pixels = np.moveaxis(rgb, 0, -1)
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    if nodata == "grey":
        pixels[~valid] = NODATA_GREY
        alpha[:] = 255

    legend: list[tuple[str, tuple[int, int, int], bool]] = []   # name, colour, painted
    mask_pixels: dict[str, int] = {}
    known = MaskClasses()
    if mask is not None:
        ids, known = _mask_on_grid(mask, info, shape)
        shown = [int(c) for c in np.unique(ids) if c]
        for class_id in shown:
            colour = known.colour(class_id)
            hit = ids == class_id
            blended = (1 - opacity) * pixels[hit] + opacity * np.array(colour, np.float32)
            pixels[hit] = np.round(blended).astype(np.uint8)
            alpha[hit] = 255
            mask_pixels[known.name(class_id)] = int(hit.sum())
        legend = [(known.name(c), known.colour(c), c > 0) for c in known.legend_ids(shown)]

    canvas = Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    to_preview = ~(transform @ Affine.scale(info.width / shape[1], info.height / shape[0]))
    features = sum(_draw_vector(canvas, path, crs, to_preview, known.colour)
                   for path in vectors)
    metres = metres_per_pixel(crs, transform, info.width, info.height, shape)
    bar = _render_caption(canvas, info, crs, shape, metres, legend)
    with atomic_path(output_png) as tmp:
        bar.image.save(tmp, format="PNG")
    return PreviewInfo(
        output=output_png, source_size=(info.width, info.height), size=(shape[1], shape[0]),
        factor=(info.width / shape[1], info.height / shape[0]),
        crs=crs.to_string() if crs else None, metres_per_pixel=metres,
        scale_bar_m=bar.metres, mask_pixels=mask_pixels,
        legend=tuple((name, to_hex(colour)) for name, colour, _ in legend), features=features,
        seconds=time.perf_counter() - start,
    )


def metres_per_pixel(crs, transform: Affine, width: int, height: int,
                     shape: tuple[int, int]) -> float | None:
    """Ground size in metres of one preview pixel along x; None without a CRS.

    Planar in a projected CRS (its linear unit converted to metres); in a geographic CRS the
    geodesic length of the raster's centre row on the CRS's ellipsoid, per preview pixel.
    """
    if crs is None:
        return None
    if crs.is_geographic:
        geod = _pyproj_crs(crs).get_geod()
        x0, y0 = transform @ (0, height / 2)
        x1, y1 = transform @ (width, height / 2)
        _, _, distance = geod.inv(x0, y0, x1, y1)
        return distance / shape[1]
    unit = _pyproj_crs(crs).axis_info[0].unit_conversion_factor or 1.0
    return math.hypot(transform.a, transform.d) * unit * width / shape[1]


def _pyproj_crs(crs):
    from pyproj import CRS

    return CRS.from_user_input(crs.to_wkt())


def _bands(count: int, bands: Sequence[int] | None, image) -> list[int]:
    chosen = list(bands) if bands else ([1, 2, 3] if count >= 3 else [1])
    if len(chosen) not in (1, 3) or any(not 1 <= b <= count for b in chosen):
        raise InputError(f"{image}: bands {chosen} cannot be shown; give one or three of "
                         f"1..{count}")
    return chosen


def decimated_read_cost(src, band: int, shape: tuple[int, int]) -> tuple[int, int]:
    """``(pixels decoded, cache bytes needed)`` to read ``band`` of ``src`` at ``shape`` by
    nearest neighbour without overviews. GDAL decodes every block holding a sampled pixel
    (cell centres), whole, and reads the preview row by row: a row of those blocks must stay
    in its cache, or each sampled row decodes them all again."""
    block_rows, block_cols = src.block_shapes[band - 1]
    touched = []
    for source, out, block in ((src.height, shape[0], block_rows),
                               (src.width, shape[1], block_cols)):
        centres = cell_starts(source, out) + source // (2 * out)
        touched.append(len(np.unique(np.minimum(centres, source - 1) // block)))
    block_bytes = block_rows * block_cols * src.count * max(
        np.dtype(d).itemsize for d in src.dtypes)
    return touched[0] * touched[1] * block_rows * block_cols, touched[1] * block_bytes


def _read_cache_bytes(src, band: int, shape: tuple[int, int]) -> int:
    """GDAL's cache for a decimated read of ``src``: enough for a row of the blocks read.

    Refuses, before reading, a raster without overviews whose read would decode more than
    :data:`DECODE_BUDGET_PIXELS` or need more than :data:`MAX_CACHE_BYTES` (minutes to hours
    of work, or gigabytes, for one small PNG)."""
    if src.overviews(band):
        return GDAL_CACHE_BYTES
    pixels, row_bytes = decimated_read_cost(src, band, shape)
    if pixels > DECODE_BUDGET_PIXELS or row_bytes > MAX_CACHE_BYTES:
        raise InputError(
            f"{src.name}: {src.width}x{src.height} px without overviews; a preview would "
            f"decode {pixels / 1e9:.1f} billion pixels in blocks of "
            f"{'x'.join(map(str, src.block_shapes[band - 1]))}. Add overviews first "
            f"(`gdaladdo -ro {src.name}` writes them beside it in a .ovr file) and rerun")
    return max(GDAL_CACHE_BYTES, row_bytes + row_bytes // 4)


def _mask_on_grid(mask, info, shape: tuple[int, int]) -> tuple[np.ndarray, MaskClasses]:
    minfo = open_raster(mask)
    if minfo.width * minfo.height > DECODE_BUDGET_PIXELS:
        raise InputError(
            f"{mask}: {minfo.width}x{minfo.height} px; a mask is shown by reading every pixel "
            f"(so thin features stay visible), more than the {DECODE_BUDGET_PIXELS / 1e9:.1f} "
            "billion a preview reads. Preview a part: `gdal_translate -srcwin ...`")
    if (minfo.width, minfo.height) != (info.width, info.height) or (
            minfo.crs and info.crs and not minfo.transform.almost_equals(info.transform)):
        raise InputError(f"{mask}: not on the image's grid ({minfo.width}x{minfo.height} vs "
                         f"{info.width}x{info.height}); give the mask predicted from this image")
    return decimate_mask(mask, shape)


def _draw_vector(canvas: Image.Image, path: Path, crs, to_preview: Affine,
                 colour_of: Callable[[int], tuple[int, int, int]] = class_colour) -> int:
    """Draw every layer of ``path`` as outlines in the preview's pixel coordinates, each
    feature in ``colour_of`` its ``class_id`` (1 without one), darker."""
    import geopandas as gpd
    import pyogrio
    import shapely

    if not path.exists():
        raise InputError(f"{path}: no such file")
    check_vector_name(path)
    try:
        layers = pyogrio.list_layers(path)[:, 0]
    except pyogrio.errors.DataSourceError as exc:
        raise InputError(f"{path}: not a readable vector file ({first_line(exc)})") from exc
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 700))
    drawn = 0
    matrix = np.array(to_preview[:6], dtype=np.float64).reshape(2, 3)

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        return xy @ matrix[:, :2].T + matrix[:, 2]

    for layer in layers:
        frame = gpd.read_file(path, layer=layer)
        if frame.empty:
            continue
        if crs is not None and frame.crs is not None and not frame.crs.equals(crs.to_wkt()):
            frame = frame.to_crs(crs.to_wkt())
        ids = (frame["class_id"].to_numpy() if "class_id" in frame
               else np.ones(len(frame), dtype=int))
        geoms = shapely.transform(frame.geometry.to_numpy(), to_pixels)
        for class_id, geom in zip(ids, geoms):
            if geom is None or geom.is_empty:
                continue
            colour = _darker(colour_of(int(class_id) if class_id else 1))
            for part in shapely.get_parts(geom):
                rings = ([part.exterior, *part.interiors] if part.geom_type == "Polygon"
                         else [part])
                for ring in rings:
                    xy = [tuple(p) for p in np.asarray(ring.coords)[:, :2]]
                    if len(xy) == 1:
                        x, y = xy[0]
                        draw.ellipse((x - 2, y - 2, x + 2, y + 2), outline=colour, width=width)
                    else:
                        draw.line(xy, fill=colour, width=width, joint="curve")
            drawn += 1
    return drawn


def _darker(colour: tuple[int, int, int]) -> tuple[int, int, int, int]:
    r, g, b = colour
    return (round(r * 0.6), round(g * 0.6), round(b * 0.6), 255)


@dataclass(frozen=True)
class _Captioned:
    image: Image.Image
    metres: float | None


def _render_caption(canvas: Image.Image, info, crs, shape, metres, legend,
                    ) -> _Captioned:
    """Add the caption strip below the image: file, size, CRS, legend and scale bar.

    The strip is as wide as the preview; text wraps onto more lines when it does not fit.
    """
    width = canvas.width
    # Text size in px, kept here: a Pillow without FreeType gives a bitmap font with no size.
    points = 13 if width >= 300 else 10
    font = ImageFont.load_default(size=points)
    line = round(points * 1.4)
    measure = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    texts = _wrap([f"{info.path.name}  {info.width} x {info.height} px  "
                   f"(preview 1:{info.width / shape[1]:.3g})", f"CRS: {_crs_label(crs)}"],
                  width - 8, font, measure)
    # Legend entries: a colour box and the class name, wrapping like words.
    entries, x, row = [], 4, len(texts)
    for name, colour, painted in legend:
        size = 16 + int(measure.textlength(name, font=font)) + 12
        if x > 4 and x + size > width:
            x, row = 4, row + 1
        entries.append((x, row, name, colour, painted))
        x += size
    bar_row = (row + 1) if legend else row
    strip = Image.new("RGBA", (width, line * (bar_row + 1) + 6), (255, 255, 255, 255))
    draw = ImageDraw.Draw(strip)
    black = (0, 0, 0, 255)
    for k, text in enumerate(texts):
        draw.text((4, 3 + k * line), text, fill=black, font=font)
    box = points - 2
    for x, k, name, colour, painted in entries:
        y = 3 + k * line
        # A class not painted over the image (the background) gets an empty box.
        draw.rectangle((x, y + 2, x + box, y + 2 + box),
                       fill=(*colour, 255) if painted else None,
                       outline=black if painted else (*colour, 255), width=1 if painted else 2)
        draw.text((x + box + 4, y), name, fill=black, font=font)
    bar_m = None
    if metres:
        bar_m = nice_length(metres * width / 5)
        pixels = max(1, round(bar_m / metres))
        y = 3 + bar_row * line + line // 2
        draw.rectangle((4, y - 3, 4 + pixels, y + 3), fill=black)
        draw.rectangle((4, y - 3, 4 + pixels // 2, y + 3), fill=(255, 255, 255, 255),
                       outline=black)
        draw.text((10 + pixels, y - line // 2), format_length(bar_m), fill=black, font=font)
    out = Image.new("RGBA", (width, canvas.height + strip.height))
    out.paste(canvas, (0, 0))
    out.paste(strip, (0, canvas.height))
    return _Captioned(out, bar_m)


def _wrap(texts: list[str], width: int, font, draw: ImageDraw.ImageDraw) -> list[str]:
    """Greedy word wrap of each text to ``width`` pixels."""
    lines = []
    for text in texts:
        current = ""
        for word in text.split(" "):
            candidate = f"{current} {word}" if current else word
            if current and draw.textlength(candidate, font=font) > width:
                lines.append(current)
                current = word
            else:
                current = candidate
        lines.append(current)
    return lines


def _crs_label(crs) -> str:
    if crs is None:
        return "none (pixel coordinates, no scale bar)"
    pcrs = _pyproj_crs(crs)
    code = pcrs.to_authority()
    return f"{':'.join(code)} {pcrs.name}" if code else pcrs.name


def nice_length(metres: float) -> float:
    """The largest 1, 2 or 5 times a power of ten not above ``metres``."""
    power = 10 ** math.floor(math.log10(metres))
    return max(m * power for m in (1, 2, 5) if m * power <= metres)


def format_length(metres: float) -> str:
    """``metres`` in km, m, cm or mm, whichever reads best."""
    for unit, size in (("km", 1000.0), ("m", 1.0), ("cm", 0.01), ("mm", 0.001)):
        if metres >= size:
            return f"{metres / size:g} {unit}"
    return f"{metres * 1000:g} mm"
