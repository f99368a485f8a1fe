"""Synthetic, georeferenced sample scenes with exact labels, deterministic from a seed.

Two kinds of scene, each written as ``{kind}_image.tif``, ``{kind}_mask.tif`` (uint8, 1 =
feature, 0 = background, same grid) and ``{kind}_labels.gpkg`` (vector labels):

- ``roads``: an aerial orthophoto, RGB uint8, EPSG:32633 (UTM 33N), 0.5 m pixels. A network
  of curved and straight roads 6-14 m wide (asphalt with lane markings) over fields, grass,
  forest and bare soil, with buildings and their shadows as distractors. Layers ``roads``
  (road polygons) and ``centerlines`` (LineStrings with ``width_m``).
- ``cracks``: a pavement inspection image, RGB uint8, EPSG:32633, 1 mm pixels. Textured
  asphalt (aggregate, pits, stains, a paint stripe) with branching cracks 1-6 px wide. Layers
  ``cracks`` (crack polygons) and ``centerlines`` (LineStrings with ``width_px``).

Labels are made first as geometry, rasterized with rasterio's pixel-centre rule, and the image
is drawn from that raster, so the mask, the vector labels and what is visible agree exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio import features
from rasterio.transform import Affine, from_origin
from scipy import ndimage
from shapely import affinity
from shapely.geometry import LineString, box, shape
from shapely.ops import substring, unary_union

CRS = "EPSG:32633"
ORIGIN = (500000.0, 5000000.0)


@dataclass(frozen=True)
class SceneFiles:
    """Paths of one generated scene."""

    image: Path
    mask: Path
    labels: Path


# -- shared helpers -----------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Zero-mean, unit-std noise with features about ``scale`` pixels wide (float32)."""
    coarse = max(2, size // scale + 2)
    field = ndimage.zoom(rng.standard_normal((coarse, coarse)).astype(np.float32),
                         size / (coarse - 1), order=3, grid_mode=False)[:size, :size]
    return (field - field.mean()) / (field.std() + 1e-6)


def _random_walk(rng: np.random.Generator, start: np.ndarray, heading: float, steps: int,
                 step: float, turn: float) -> np.ndarray:
    """Points of a correlated random walk (heading changes ~ N(0, turn) per step)."""
    headings = heading + np.cumsum(rng.normal(0, turn, steps))
    moves = np.stack([np.cos(headings), np.sin(headings)], axis=1) * step
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


def _write_gtiff(path: Path, array: np.ndarray, transform: Affine, **options) -> None:
    """Write ``array`` (bands, rows, cols) atomically as a tiled GeoTIFF in EPSG:32633."""
    tmp = path.with_name(f".{path.name}.part")
    profile = {"driver": "GTiff", "width": array.shape[2], "height": array.shape[1],
               "count": array.shape[0], "dtype": array.dtype.name, "crs": CRS,
               "transform": transform, "tiled": True, "blockxsize": 512, "blockysize": 512,
               **options}
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(array)
    os.replace(tmp, path)


def _write_labels(path: Path, layers: dict[str, gpd.GeoDataFrame]) -> None:
    tmp = path.with_name(f".{path.name}.part.gpkg")
    tmp.unlink(missing_ok=True)
    for name, frame in layers.items():
        frame.to_file(tmp, layer=name, driver="GPKG", engine="pyogrio")
    os.replace(tmp, path)


def _write_scene(out_dir: Path, kind: str, image: np.ndarray, mask: np.ndarray,
                 transform: Affine, layers: dict[str, gpd.GeoDataFrame],
                 image_options: dict) -> SceneFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = SceneFiles(out_dir / f"{kind}_image.tif", out_dir / f"{kind}_mask.tif",
                       out_dir / f"{kind}_labels.gpkg")
    _write_gtiff(files.image, image, transform, **image_options)
    _write_gtiff(files.mask, mask[None], transform, compress="deflate", predictor=2)
    _write_labels(files.labels, layers)
    return files


# -- roads --------------------------------------------------------------------------------

LAND_COVER = np.array([
    [92, 128, 62],    # grass
    [150, 140, 84],   # ripe field
    [44, 74, 40],     # forest
    [128, 100, 74],   # bare soil
    [110, 140, 70],   # young crop
], dtype=np.float32)
ROOFS = np.array([[168, 72, 56], [196, 120, 80], [72, 72, 78], [176, 176, 170]], np.float32)


def _road_centerlines(rng: np.random.Generator, extent: float) -> list[tuple[LineString, float]]:
    """Long curved roads across the scene, straighter streets, a few dead ends (map units
    relative to the scene's top-left corner, y down)."""
    roads = []
    for i in range(int(rng.integers(3, 5))):
        side = i % 4
        t = rng.uniform(0.15, 0.85) * extent
        start, heading = {
            0: (np.array([0.0, t]), 0.0), 1: (np.array([t, 0.0]), np.pi / 2),
            2: (np.array([extent, t]), np.pi), 3: (np.array([t, extent]), -np.pi / 2),
        }[side]
        pts = _random_walk(rng, start, heading + rng.normal(0, 0.2), 120, extent / 60, 0.05)
        roads.append((LineString(pts), rng.uniform(8, 14)))
    for _ in range(int(rng.integers(4, 7))):
        start = rng.uniform(0.1, 0.9, 2) * extent
        heading = rng.choice([0, np.pi / 2, np.pi, -np.pi / 2]) + rng.normal(0, 0.05)
        pts = _random_walk(rng, start, heading, int(rng.integers(20, 60)), extent / 60, 0.01)
        roads.append((LineString(pts), rng.uniform(6, 9)))
    frame = box(0, 0, extent, extent)
    return [(line.intersection(frame), w) for line, w in roads if line.intersects(frame)]


def _dashes(line: LineString, dash: float, gap: float) -> list[LineString]:
    out, d = [], 0.0
    while d < line.length:
        out.append(substring(line, d, min(d + dash, line.length)))
        d += dash + gap
    return out


def generate_road_scene(out_dir: Path, seed: int = 0, size: int = 4096,
                        pixel_size: float = 0.5) -> SceneFiles:
    """Aerial RGB scene (EPSG:32633, ``pixel_size`` metres) with road labels."""
    rng = np.random.default_rng(seed)
    extent = size * pixel_size
    transform = from_origin(*ORIGIN, pixel_size, pixel_size)
    # Geometry in local metres (x right, y down) -> map coordinates.
    to_map = [1, 0, 0, -1, ORIGIN[0], ORIGIN[1]]
    local = [1 / pixel_size, 0, 0, 1 / pixel_size, 0, 0]

    centerlines = [(line, w) for line, w in _road_centerlines(rng, extent) if not line.is_empty]
    road_geom = unary_union([line.buffer(w / 2, cap_style="flat") for line, w in centerlines])
    shape_px = (size, size)

    def rasterize(geoms, all_touched=False) -> np.ndarray:
        geoms = [affinity.affine_transform(g, local) for g in geoms if not g.is_empty]
        if not geoms:
            return np.zeros(shape_px, dtype=bool)
        return features.rasterize(geoms, out_shape=shape_px, all_touched=all_touched,
                                  dtype="uint8").astype(bool)

    mask = rasterize([road_geom])

    # Land cover patches: argmax of smooth random fields.
    cover = np.argmax(np.stack([_smooth_noise(rng, size, 400) for _ in LAND_COVER]), axis=0)
    image = LAND_COVER[cover].transpose(2, 0, 1).copy()
    texture = _smooth_noise(rng, size, 6) * 10 + rng.normal(0, 6, shape_px).astype(np.float32)
    stripes = np.sin(np.add.outer(np.arange(size) * 0.7, np.arange(size) * 0.2)) * 8
    image += texture + np.where(cover == 1, stripes, 0)
    canopy = np.where(cover == 2, np.clip(_smooth_noise(rng, size, 5), -1, 2) * 14, 0)
    image += canopy

    # Buildings away from roads, with shadows to the south-east.
    keep_out = road_geom.buffer(4)
    roofs, shadows, colours = [], [], []
    for _ in range(int(size * size / 150_000)):
        w, h = rng.uniform(8, 22, 2)
        cx, cy = rng.uniform(0, extent, 2)
        roof = affinity.rotate(box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2),
                               rng.uniform(0, 90))
        if roof.intersects(keep_out) or any(roof.intersects(r) for r in roofs):
            continue
        roofs.append(roof)
        shadows.append(affinity.translate(roof, 3, 3).difference(keep_out))
        colours.append(ROOFS[rng.integers(len(ROOFS))])
    shadow = rasterize(shadows) & ~mask
    image[:, shadow] *= 0.55
    for roof, colour in zip(roofs, colours):
        px = rasterize([roof])
        image[:, px] = colour[:, None] + rng.normal(0, 4, (3, int(px.sum())))

    # Asphalt and markings, only where the mask says road.
    asphalt = 100 + _smooth_noise(rng, size, 40) * 6 + rng.normal(0, 5, shape_px)
    image[:, mask] = (asphalt[mask] * np.array([1.0, 1.0, 1.04])[:, None]).astype(np.float32)
    marks = []
    for line, width in centerlines:
        if width >= 8:
            marks += [d.buffer(0.3) for d in _dashes(line, 3.0, 6.0)]
            marks += [line.offset_curve(s * (width / 2 - 0.6)).buffer(0.25) for s in (-1, 1)]
    paint = rasterize(marks, all_touched=True) & mask
    image[:, paint] = 215

    light = 1 + _smooth_noise(rng, size, 1500) * 0.06
    image = np.clip(image * light + rng.normal(0, 2, (3, *shape_px)), 0, 255).astype(np.uint8)

    to_geo = lambda g: affinity.affine_transform(g, to_map)  # noqa: E731
    layers = {
        "roads": gpd.GeoDataFrame({"class_id": [1], "class_name": ["road"]},
                                  geometry=[to_geo(road_geom)], crs=CRS).explode(
                                      ignore_index=True),
        "centerlines": gpd.GeoDataFrame(
            {"width_m": [w for _, w in centerlines]},
            geometry=[to_geo(line) for line, _ in centerlines], crs=CRS),
    }
    return _write_scene(
        Path(out_dir), "roads", image, mask.astype(np.uint8), transform, layers,
        {"compress": "jpeg", "photometric": "ycbcr", "jpeg_quality": 90},
    )


# -- cracks -------------------------------------------------------------------------------

def _crack_paths(rng: np.random.Generator, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Crack polylines in pixel coordinates with a width (px) per vertex, branches included."""
    paths = []
    for _ in range(int(rng.integers(3, 8))):
        start = rng.uniform(0.05, 0.95, 2) * size
        heading = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.3) + rng.choice([0, np.pi])
        queue = [(start, heading, int(rng.integers(150, 450)), 0)]
        while queue:
            start, heading, steps, level = queue.pop()
            pts = _random_walk(rng, start, heading, steps, 3.0, 0.18)
            base = rng.uniform(1.0, 6.0) if level == 0 else rng.uniform(1.0, 3.0)
            wobble = ndimage.gaussian_filter1d(rng.normal(0, 1.5, len(pts)), 8)
            widths = np.clip(base + wobble * 3, 1.0, 6.0)
            paths.append((pts, widths))
            if level < 2:
                for _ in range(int(rng.integers(0, 3))):
                    at = int(rng.integers(len(pts) // 4, len(pts)))
                    turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.3)
                    queue.append((pts[at], heading + turn, steps // 2, level + 1))
    return paths


def generate_crack_scene(out_dir: Path, seed: int = 0, size: int = 2048,
                         pixel_size: float = 0.001) -> SceneFiles:
    """Pavement inspection RGB scene (EPSG:32633, ``pixel_size`` metres) with crack labels."""
    rng = np.random.default_rng(seed)
    transform = from_origin(*ORIGIN, pixel_size, pixel_size)
    shape_px = (size, size)

    paths = _crack_paths(rng, size)
    segments = []
    for pts, widths in paths:
        for a, b, w in zip(pts[:-1], pts[1:], (widths[:-1] + widths[1:]) / 2):
            segments.append(LineString([a, b]).buffer(max(w, 1.5) / 2, cap_style="round"))
    mask = features.rasterize(segments, out_shape=shape_px, dtype="uint8").astype(bool)

    surface = 112 + _smooth_noise(rng, size, 700) * 8          # shading
    surface += _smooth_noise(rng, size, 12) * 7 + _smooth_noise(rng, size, 3) * 6
    surface += rng.normal(0, 5, shape_px)
    stones = ndimage.grey_dilation(rng.random(shape_px) < 0.004, size=3)
    pits = ndimage.grey_dilation(rng.random(shape_px) < 0.0015, size=2)
    surface += stones * rng.uniform(20, 45) - pits * 30
    stain = _smooth_noise(rng, size, 250) > 1.3                  # oil/patch of another tone
    surface[stain] -= 14
    if rng.random() < 0.7:                                       # a painted stripe
        x0 = int(rng.uniform(0.1, 0.8) * size)
        surface[:, x0 : x0 + size // 12] += 70
    depth = rng.uniform(45, 85)
    soft = ndimage.gaussian_filter(mask.astype(np.float32), 0.7)
    surface -= np.where(mask, depth, soft * 15)
    tint = 1 + rng.normal(0, 0.03, 3)
    gray = np.clip(surface, 0, 255)
    image = np.clip(gray[None] * tint[:, None, None], 0, 255).astype(np.uint8)

    polygons = [shape(g) for g, v in features.shapes(mask.astype(np.uint8), mask=mask,
                                                     transform=transform)]
    lines = [affinity.affine_transform(LineString(pts), transform.to_shapely()) for pts, _ in paths]
    layers = {
        "cracks": gpd.GeoDataFrame({"class_id": [1] * len(polygons),
                                    "class_name": ["crack"] * len(polygons)},
                                   geometry=polygons, crs=CRS),
        "centerlines": gpd.GeoDataFrame({"width_px": [float(w.mean()) for _, w in paths]},
                                        geometry=lines, crs=CRS),
    }
    return _write_scene(Path(out_dir), "cracks", image, mask.astype(np.uint8), transform,
                        layers, {"compress": "deflate", "predictor": 2, "zlevel": 9})


SCENES: dict[str, Callable[..., SceneFiles]] = {
    "roads": generate_road_scene, "cracks": generate_crack_scene,
}
