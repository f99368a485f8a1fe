"""Synthetic georeferenced scenes with exact labels, deterministic from a seed.

Each scene is written into ``out_dir`` as ``{kind}_image.tif`` (RGB uint8 GeoTIFF),
``{kind}_mask.tif`` (uint8, one band, 1 = feature, 0 = background, same grid) and
``{kind}_labels.gpkg`` (vector labels). Everything is in EPSG:32633 (UTM zone 33N) on a
north-up grid whose top-left corner is (500000 m E, 5000000 m N).

``roads``
    Aerial orthophoto, 0.5 m pixels by default. A network of smooth curved roads crossing the
    scene edge to edge, straighter streets branching off them (some ending inside the scene),
    6-14 m wide: asphalt with wheel-path wear, dashed white centre lines and solid edge lines.
    Around them: polygonal fields (crop stripes, meadow, ploughed soil, dry grass), forest
    canopy, and unlabelled distractors: unpaved farm tracks, single trees and buildings with
    red, orange or grey gabled roofs, all casting shadows to the north-east, none on a road.
    Layers ``roads`` (polygons; ``class_id`` 1, ``class_name`` "road") and ``centerlines``
    (LineStrings; ``width_m``).
``cracks``
    Pavement inspection image, 1 mm pixels by default: asphalt with aggregate texture at
    several scales, light stones, dark pits, a shading gradient, maybe a stain, a repair patch
    and a worn paint stripe, and a seed-dependent warm or cool tint. 3-8 crack systems
    (longitudinal, transverse, alligator-like networks) drawn as correlated random walks with
    branches, 1-6 px wide. Layers ``cracks`` (polygons; ``class_id`` 1, ``class_name``
    "crack") and ``centerlines`` (LineStrings; ``width_px``, the mean nominal width).

``landcover``
    Aerial image, 0.5 m pixels by default, 1024 px a side: fields (background, id 0),
    buildings (1), roads (2), ponds (3) and tree crowns (4); the mask holds class ids. Layer
    ``landcover`` (polygons; ``class_id``, ``class_name``).

Labels and pixels agree by construction. Road polygons are rasterized with rasterio's
pixel-centre rule on the image grid (what a reader does with the GeoPackage), and road
appearance is painted exactly there. Cracks are burned in pixel space, darkened exactly there
(plus a faint halo outside), and their polygons are traced from that raster. Every seed draws
from the same distribution; counts of roads, parcels, buildings and trees scale with the area.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.transform import Affine, from_origin
from scipy import ndimage, signal
from scipy.interpolate import make_interp_spline
from shapely import affinity
from shapely.geometry import LineString, MultiPoint, Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import substring

from geounet.outputs import atomic_path

CRS = "EPSG:32633"
ORIGIN = (500000.0, 5000000.0)  # top-left corner (m E, m N)
_BLOCK = 512


@dataclass(frozen=True)
class SceneFiles:
    """Paths of one generated scene."""

    image: Path
    mask: Path
    labels: Path


# -- shared helpers --------------------------------------------------------------------------

def _noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std float32 noise field (size x size) with features ~``scale`` px."""
    if scale <= 6:
        field = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32),
                                        scale / 2)
    else:
        n = max(2, round(size / scale)) + 1
        coarse = rng.standard_normal((n, n), dtype=np.float32)
        field = ndimage.zoom(coarse, size / n, order=3)[:size, :size]
    field -= field.mean()
    field /= field.std() + 1e-6
    return field


def _smooth_path(points: np.ndarray, samples: int) -> LineString:
    """Cubic spline through the control ``points`` (n, 2), sampled at ``samples`` points."""
    t = np.linspace(0.0, 1.0, len(points))
    spline = make_interp_spline(t, points, k=min(3, len(points) - 1))
    return LineString(spline(np.linspace(0.0, 1.0, samples)))


def _rasterize(shapes: Iterable, size: int, transform: Affine, dtype: str = "uint8",
               all_touched: bool = False) -> np.ndarray:
    """Burn ``shapes`` (geometries or (geometry, value) pairs) into a size x size array."""
    shapes = [s for s in shapes if not (s[0] if isinstance(s, tuple) else s).is_empty]
    if not shapes:
        return np.zeros((size, size), dtype=dtype)
    return features.rasterize(shapes, out_shape=(size, size), transform=transform,
                              all_touched=all_touched, dtype=dtype)


def _write_gtiff(path: Path, array: np.ndarray, transform: Affine, **options) -> None:
    """Write ``array`` (bands, rows, cols) as a GeoTIFF tiled 512 in EPSG:32633, atomically."""
    profile = {"driver": "GTiff", "width": array.shape[2], "height": array.shape[1],
               "count": array.shape[0], "dtype": array.dtype.name, "crs": CRS,
               "transform": transform, "tiled": True, "blockxsize": _BLOCK,
               "blockysize": _BLOCK, **options}
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(array)


def _write_labels(path: Path, layers: dict[str, gpd.GeoDataFrame]) -> None:
    """Write the layers into one GeoPackage, atomically."""
    with atomic_path(path) as tmp:
        for name, frame in layers.items():
            frame.to_file(tmp, layer=name, driver="GPKG", engine="pyogrio")


def _write_scene(out_dir: Path, kind: str, image: np.ndarray, mask: np.ndarray,
                 transform: Affine, layers: dict[str, gpd.GeoDataFrame],
                 image_options: dict) -> SceneFiles:
    """Write image, mask and labels of one scene; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = SceneFiles(out_dir / f"{kind}_image.tif", out_dir / f"{kind}_mask.tif",
                       out_dir / f"{kind}_labels.gpkg")
    _write_gtiff(files.image, image, transform, **image_options)
    _write_gtiff(files.mask, mask[None], transform, compress="deflate", predictor=2)
    _write_labels(files.labels, layers)
    return files


# -- roads -----------------------------------------------------------------------------------
# Geometry is built in local metres: x east from the left edge, y south from the top edge.

MEADOW, CROP_GREEN, CROP_RIPE, SOIL, DRY_GRASS, FOREST = range(6)
COVER_COLOURS = np.array([
    [92, 122, 62], [102, 132, 58], [172, 156, 98], [124, 98, 72], [140, 140, 94], [48, 72, 44],
], dtype=np.float32)
COVER_ODDS = np.array([0.28, 0.2, 0.2, 0.16, 0.16])      # parcel classes (forest apart)
# Per class: fine grain, mid-scale mottling, canopy crowns, stripe amplitude, stripe period px.
COVER_TEXTURE = np.array([
    [0.04, 0.07, 0.0, 0.03, 14.0], [0.04, 0.05, 0.0, 0.09, 4.0], [0.04, 0.05, 0.0, 0.07, 3.5],
    [0.06, 0.07, 0.0, 0.10, 3.0], [0.05, 0.06, 0.0, 0.0, 1.0], [0.05, 0.10, 0.32, 0.0, 1.0],
], dtype=np.float32)
ROOF_COLOURS = np.array([[160, 68, 52], [192, 112, 70], [78, 78, 84], [170, 170, 164]],
                        dtype=np.float32)
TRACK_COLOUR = np.array([150, 132, 100], dtype=np.float32)
SUN_SHIFT = np.array([1.0, -1.0]) / np.sqrt(2)          # shadows fall to the north-east


def _main_roads(rng: np.random.Generator, extent: float, count: int) -> list[LineString]:
    """Curved roads from edge to edge, about half north-south and half east-west."""
    roads: list[LineString] = []
    axes = rng.permutation(np.arange(count) % 2)
    for axis in (0, 1):
        same_axis: list[LineString] = []
        k = int((axes == axis).sum())
        for i in range(k):
            for _ in range(20):
                start = (i + rng.uniform(0.2, 0.8)) / k * extent
                end = np.clip(start + rng.normal(0, 0.08 * extent), 0.05 * extent,
                              0.95 * extent)
                along = np.linspace(-0.05, 1.05, 5) * extent
                across = np.linspace(start, end, 5) + rng.normal(0, 0.04 * extent, 5)
                pts = np.column_stack([across, along] if axis == 0 else [along, across])
                line = _smooth_path(pts, 300)
                if all(line.distance(other) > 80 for other in same_axis):
                    same_axis.append(line)
                    break
        roads += same_axis
    return roads


def _streets(rng: np.random.Generator, extent: float, roads: list[LineString],
             count: int) -> list[LineString]:
    """Nearly straight streets leaving an existing road at about a right angle; each ends
    on the first road it meets, beyond the scene edge, or (one in four) inside the scene."""
    frame = box(0, 0, extent, extent)
    streets: list[LineString] = []
    for _ in range(count * 5):
        if len(streets) == count:
            break
        parent = roads[rng.integers(len(roads))]
        d = rng.uniform(0.05, 0.95) * parent.length
        p = np.array(parent.interpolate(d).coords[0])
        tangent = np.array(parent.interpolate(d + 1.0).coords[0]) - p
        heading = (np.arctan2(tangent[1], tangent[0]) + rng.choice([-1, 1]) * np.pi / 2
                   + rng.normal(0, 0.12))
        length = rng.uniform(80, 300) if rng.random() < 0.25 else 1.5 * extent
        direction = np.array([np.cos(heading), np.sin(heading)])
        normal = np.array([-direction[1], direction[0]])
        bend = rng.normal(0, 0.03) * length
        pts = p + np.outer([0, 0.5, 1], direction) * length + np.outer([0, 1, 0], normal) * bend
        line = _smooth_path(pts, 60)
        others = shapely.union_all([r for r in roads + streets if r is not parent])
        crossings = [line.project(q) for q in shapely.get_parts(line.intersection(others))
                     if isinstance(q, Point)]
        crossings = [c for c in crossings if c > 25]
        if crossings:
            line = substring(line, 0, min(crossings))
        inside = line.intersection(frame)
        if not isinstance(inside, LineString) or inside.length < 80:
            continue
        middle = substring(line, 30, line.length - 30)
        if middle.distance(shapely.union_all(roads + streets)) < 15:
            continue
        streets.append(line)
    return streets


def _dashes(line: LineString, dash: float, gap: float) -> list[LineString]:
    """Pieces ``dash`` m long every ``dash + gap`` m along ``line``."""
    starts = np.arange(0.0, line.length, dash + gap)
    return [substring(line, s, min(s + dash, line.length)) for s in starts]


def _boxes(centres: np.ndarray, lengths: np.ndarray, depths: np.ndarray,
           angles: np.ndarray) -> np.ndarray:
    """Rectangles (array of Polygons) ``lengths`` long along ``angles`` (radians)."""
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    u = np.array([-0.5, 0.5, 0.5, -0.5])[None] * lengths[:, None]
    v = np.array([-0.5, -0.5, 0.5, 0.5])[None] * depths[:, None]
    x = centres[:, :1] + u * c - v * s
    y = centres[:, 1:] + u * s + v * c
    return shapely.polygons(np.stack([x, y], axis=-1))


def _greedy_disjoint(geoms: np.ndarray, gap: float) -> np.ndarray:
    """Indices of a subset of ``geoms`` at least ``gap`` apart (earlier ones win)."""
    pairs = shapely.STRtree(geoms).query(geoms, predicate="dwithin", distance=gap)
    neighbours: dict[int, list[int]] = {}
    for a, b in pairs.T:
        if a != b:
            neighbours.setdefault(int(a), []).append(int(b))
    blocked = np.zeros(len(geoms), dtype=bool)
    keep = []
    for i in range(len(geoms)):
        if not blocked[i]:
            keep.append(i)
            blocked[neighbours.get(i, [])] = True
    return np.array(keep, dtype=int)


def _buildings(rng: np.random.Generator, extent: float,
               centerlines: list[tuple[LineString, float]],
               keep_out: BaseGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Houses along the roads and scattered farmsteads, clear of roads and tracks.

    Returns the roof halves (2 per building, split along the ridge), the shadows and the
    roof colour index of each building.
    """
    # Gathered as lists (one entry per building), turned into arrays below.
    centre_list: list[np.ndarray] = []
    length_list: list[float] = []
    depth_list: list[float] = []
    angle_list: list[float] = []
    for line, width in centerlines:
        for d in np.arange(rng.uniform(0, 40), line.length, 40.0):
            p = np.array(line.interpolate(d).coords[0])
            t = np.array(line.interpolate(min(d + 1.0, line.length)).coords[0]) - p
            if not t.any():
                continue
            angle = np.arctan2(t[1], t[0])
            normal = np.array([-np.sin(angle), np.cos(angle)])
            for side in (-1, 1):
                if rng.random() < 0.45:
                    depth = rng.uniform(8, 13)
                    offset = width / 2 + rng.uniform(8, 16) + depth / 2
                    centre_list.append(p + side * offset * normal)
                    length_list.append(rng.uniform(9, 18))
                    depth_list.append(depth)
                    angle_list.append(angle + rng.normal(0, 0.05))
    scattered = rng.poisson(extent**2 / 250_000)
    centre_list += list(rng.uniform(0, extent, (scattered, 2)))
    length_list += list(rng.uniform(10, 30, scattered))
    depth_list += list(rng.uniform(8, 16, scattered))
    angle_list += list(rng.uniform(0, np.pi, scattered))
    if not centre_list:
        return np.empty(0, object), np.empty(0, object), np.empty(0, int)
    centres, lengths, depths, angles = map(
        np.asarray, (centre_list, length_list, depth_list, angle_list))
    roofs = _boxes(centres, lengths, depths, angles)
    shift = rng.uniform(3, 6, len(roofs))[:, None] * SUN_SHIFT
    shadows = shapely.convex_hull(shapely.union(
        roofs, _boxes(centres + shift, lengths, depths, angles)))
    clear = ~shapely.intersects(keep_out, shapely.buffer(shadows, 2.0))
    keep = np.flatnonzero(clear)[_greedy_disjoint(shadows[clear], 2.0)]
    centres, lengths, depths, angles = (a[keep] for a in (centres, lengths, depths, angles))
    across = 0.25 * depths[:, None] * np.column_stack([-np.sin(angles), np.cos(angles)])
    halves = np.column_stack([_boxes(centres + s * across, lengths, depths / 2, angles)
                              for s in (-1, 1)]).ravel()
    return halves, shadows[keep], rng.integers(len(ROOF_COLOURS), size=len(keep))


def _land_cover(rng: np.random.Generator, size: int, pixel_size: float, fine: np.ndarray,
                mid: np.ndarray) -> np.ndarray:
    """Polygonal fields, meadows, soil and irregular forest patches: float32 RGB (3, H, W)."""
    extent = size * pixel_size
    frame = box(0, 0, extent, extent)
    n = max(4, int(rng.poisson(extent**2 / 160**2)))
    cells = shapely.get_parts(shapely.voronoi_polygons(
        MultiPoint(rng.uniform(0, extent, (n, 2))), extend_to=frame))
    cells = shapely.intersection(cells, frame)
    parcel = _rasterize(zip(cells, range(1, len(cells) + 1)), size, Affine.scale(pixel_size),
                        "uint16")
    # Per-parcel look-up tables; entry 0 (a pixel centre on a cell border) copies entry 1.
    m = len(cells) + 1
    cls = rng.choice(len(COVER_ODDS), p=COVER_ODDS, size=m)
    colour = COVER_COLOURS[cls] + rng.normal(0, 8, (m, 3)).astype(np.float32)
    amp = COVER_TEXTURE[cls, 3] * rng.uniform(0.7, 1.3, m).astype(np.float32)
    k = 2 * np.pi / (COVER_TEXTURE[cls, 4] * rng.uniform(0.8, 1.25, m))
    angle = rng.uniform(0, np.pi, m)
    kx, ky = (k * np.cos(angle)).astype(np.float32), (k * np.sin(angle)).astype(np.float32)
    phase0 = rng.uniform(0, 2 * np.pi, m).astype(np.float32)
    for table in (cls, colour, amp, kx, ky, phase0):
        table[0] = table[1]

    forest = _noise(rng, size, 300 / pixel_size)
    forest += 0.25 * mid
    forest = forest > 1.0
    crowns = np.tanh(1.5 * _noise(rng, size, 4 / pixel_size))
    kind = np.where(forest, FOREST, cls[parcel]).astype(np.uint8)
    light = 1 + COVER_TEXTURE[kind, 0] * fine
    light += COVER_TEXTURE[kind, 1] * mid
    light += COVER_TEXTURE[kind, 2] * crowns
    del crowns
    cols = np.arange(size, dtype=np.float32)
    stripes = kx[parcel] * cols[None, :]
    stripes += ky[parcel] * cols[:, None]
    stripes += phase0[parcel]
    stripes += 0.8 * mid
    np.sin(stripes, out=stripes)
    stripes *= amp[parcel]
    stripes[forest] = 0
    light += stripes
    del stripes
    image = np.empty((3, size, size), dtype=np.float32)
    for band in range(3):
        image[band] = np.where(forest, COVER_COLOURS[FOREST, band], colour[parcel, band])
        image[band] *= light
    return image


def _tracks(rng: np.random.Generator, extent: float) -> list[tuple[LineString, float]]:
    """Unpaved farm tracks (unlabelled): wandering paths 2.5-4 m wide."""
    tracks = []
    for _ in range(rng.poisson(extent**2 / 1.2e6)):
        start = rng.uniform(0, extent, 2)
        heading = rng.uniform(0, 2 * np.pi)
        steps = np.cumsum(rng.uniform(100, 250, 3))
        headings = heading + np.cumsum(rng.normal(0, 0.5, 3))
        pts = np.vstack([start, start + steps[:, None]
                         * np.column_stack([np.cos(headings), np.sin(headings)])])
        tracks.append((_smooth_path(pts, 80), rng.uniform(2.5, 4.0)))
    return tracks


def _trees(rng: np.random.Generator, extent: float,
           keep_out: BaseGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Single trees clear of roads, tracks and buildings: crowns and their shadows."""
    count = rng.poisson(extent**2 / 9000)
    centres = rng.uniform(0, extent, (count, 2))
    radii = rng.uniform(2.0, 4.5, count)
    crowns = shapely.buffer(shapely.points(centres), radii, quad_segs=4)
    shadows = shapely.buffer(shapely.points(centres + 0.9 * radii[:, None] * SUN_SHIFT), radii,
                             quad_segs=4)
    clear = ~shapely.intersects(keep_out, shapely.buffer(shapely.union(crowns, shadows), 1.5))
    return crowns[clear], shadows[clear]


def generate_road_scene(out_dir: Path, seed: int = 0, size: int = 4096,
                        pixel_size: float = 0.5) -> SceneFiles:
    """Aerial RGB scene with road labels: ``size`` x ``size`` pixels of ``pixel_size`` m in
    EPSG:32633, top-left corner at ``ORIGIN``; written as ``roads_*`` into ``out_dir``."""
    rng = np.random.default_rng(seed)
    extent = size * pixel_size
    frame = box(0, 0, extent, extent)
    transform = from_origin(*ORIGIN, pixel_size, pixel_size)
    local = Affine.scale(pixel_size)                        # local metres -> pixels
    to_map = [1, 0, 0, -1, *ORIGIN]                         # local metres -> EPSG:32633

    mains = _main_roads(rng, extent, max(2, round(extent / 300)))
    streets = _streets(rng, extent, mains, max(1, round(extent**2 / 120_000)))
    widths = np.concatenate([rng.uniform(9, 14, len(mains)), rng.uniform(6, 9, len(streets))])
    lines = mains + streets
    polygons = [line.buffer(w / 2, cap_style="flat").intersection(frame)
                for line, w in zip(lines, widths)]
    centerlines = [(part, w) for line, w in zip(lines, widths)
                   for part in shapely.get_parts(line.intersection(frame))]
    road = shapely.union_all(polygons)
    road_map = affinity.affine_transform(road, to_map)
    mask = _rasterize([road_map], size, transform).astype(bool)

    fine = _noise(rng, size, 1)
    mid = _noise(rng, size, 15 / pixel_size)
    image = _land_cover(rng, size, pixel_size, fine, mid)

    tracks = _tracks(rng, extent)
    if tracks:
        bed = _rasterize([t.buffer(w / 2) for t, w in tracks], size, local).astype(bool)
        verge = _rasterize([t.buffer(0.4) for t, _ in tracks], size, local).astype(bool)
        tone = (1 + 0.08 * fine[bed]) * rng.uniform(0.9, 1.1)
        image[:, bed] = TRACK_COLOUR[:, None] * tone
        image[:, verge] = 0.5 * image[:, verge] + 0.5 * COVER_COLOURS[MEADOW][:, None]

    keep_out = shapely.union_all([road.buffer(3.0)] + [t.buffer(w / 2 + 2) for t, w in tracks])
    halves, shadows, roof_kind = _buildings(rng, extent, centerlines, keep_out)
    crowns, tree_shadows = _trees(rng, extent, shapely.union_all(
        [keep_out, *shadows]))
    shade = _rasterize(list(shadows) + list(tree_shadows), size, local).astype(bool)
    shade &= ~mask
    image[:, shade] *= 0.55
    crown = _rasterize(crowns, size, local).astype(bool)
    image[:, crown] = COVER_COLOURS[FOREST][:, None] * (1 + 0.3 * np.tanh(2 * fine[crown]))
    if len(halves):
        roof = _rasterize(zip(halves, range(1, len(halves) + 1)), size, local, "uint16")
        tone = rng.uniform(0.88, 1.12, (len(roof_kind), 1))
        colour = np.vstack([np.zeros((1, 3)), np.repeat(
            ROOF_COLOURS[roof_kind] * tone + rng.normal(0, 3, (len(roof_kind), 3)), 2, axis=0)
            * np.tile([1.08, 0.8], len(roof_kind))[:, None]]).astype(np.float32)
        on_roof = roof > 0
        ids = roof[on_roof]
        image[:, on_roof] = colour[ids].T * (1 + 0.03 * fine[on_roof])

    road_id = _rasterize(zip(polygons, range(1, len(polygons) + 1)), size, local, "uint16")
    grey = np.concatenate([[108.0], rng.uniform(88, 128, len(polygons))]).astype(np.float32)
    asphalt = grey[road_id[mask]] * (1 + 0.035 * mid[mask] + 0.05 * fine[mask])
    wear, paint = [], []
    for i, ((line, w), polygon) in enumerate(zip(zip(lines, widths), polygons)):
        wear += [line.offset_curve(s * (w / 4 + o)).buffer(0.35)
                 for s in (-1, 1) for o in (-0.8, 0.8)]
        if i < len(mains) or (w >= 7.5 and rng.random() < 0.5):
            marks = [d.buffer(0.15) for d in _dashes(line, 3.0, 6.0)]
            if i < len(mains):
                marks += [line.offset_curve(s * (w / 2 - 0.5)).buffer(0.15) for s in (-1, 1)]
            others = shapely.union_all([p for j, p in enumerate(polygons) if j != i])
            paint.append(shapely.union_all(marks).intersection(polygon).difference(
                others.buffer(1.0)))
    asphalt *= np.where(_rasterize(wear, size, local)[mask] > 0, 0.93, 1.0).astype(np.float32)
    alpha = 0.75 * _rasterize(paint, size, local, all_touched=True)[mask]
    asphalt += alpha * (225 - asphalt)
    image[0, mask] = asphalt
    image[1, mask] = asphalt
    image[2, mask] = asphalt * 1.03
    del fine, mid, road_id

    light = _noise(rng, size, size / 2)
    light *= 0.05
    light += 1
    for band in image:
        band *= light
        band += 2.0 * rng.standard_normal((size, size), dtype=np.float32)
    np.clip(image, 0, 255, out=image)
    pixels = np.rint(image, out=image).astype(np.uint8)

    layers = {
        "roads": gpd.GeoDataFrame({"class_id": 1, "class_name": "road"},
                                  index=range(len(shapely.get_parts(road_map))),
                                  geometry=shapely.get_parts(road_map), crs=CRS),
        "centerlines": gpd.GeoDataFrame(
            {"width_m": [float(w) for _, w in centerlines]},
            geometry=[affinity.affine_transform(c, to_map) for c, _ in centerlines], crs=CRS),
    }
    return _write_scene(out_dir, "roads", pixels, mask.astype(np.uint8), transform, layers,
                        {"compress": "jpeg", "photometric": "ycbcr", "jpeg_quality": 90})


# -- cracks ----------------------------------------------------------------------------------
# Geometry is built in pixel coordinates: x = column, y = row (down).

def _walk(rng: np.random.Generator, start: np.ndarray, heading: float,
          length: float, step: float = 2.0) -> np.ndarray:
    """Correlated random walk of ``length`` px: a slow meander around ``heading`` (radians)
    plus a jagged zigzag at the scale of the aggregate."""
    n = max(2, int(length / step))
    drift = signal.lfilter([1.0], [1.0, -0.92], rng.normal(0, 0.1, n))
    headings = heading + drift + rng.normal(0, 0.3, n)
    moves = np.column_stack([np.cos(headings), np.sin(headings)]) * step
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


# Std of white noise smoothed by the widths' Gaussian (sigma 8 vertices): the norm of the
# filter's impulse response (32 = its radius, 4 sigma).
_WOBBLE_SIGMA = 8
_WOBBLE_STD = float(np.linalg.norm(ndimage.gaussian_filter1d(np.eye(1, 65, 32)[0],
                                                             _WOBBLE_SIGMA)))


def _widths(rng: np.random.Generator, n: int, base: float) -> np.ndarray:
    """Widths (px, 1-6) at ``n`` vertices wobbling around ``base``, tapering to 1 at the ends.

    The wobble is smoothed noise scaled to unit variance by the filter's own std, not by
    the sample's: a short crack (a few vertices, all alike after smoothing) would otherwise
    divide by a near-zero std and blow up to infinite, then NaN, widths.
    """
    wobble = ndimage.gaussian_filter1d(rng.normal(0, 1, n), _WOBBLE_SIGMA)
    wobble /= _WOBBLE_STD
    s = np.linspace(0, 1, n)
    taper = np.clip(np.minimum(s, 1 - s) / 0.15, 0, 1) ** 0.7
    return np.clip(1 + (base * np.exp(0.25 * wobble) - 1) * taper, 1, 6)


def _alligator(rng: np.random.Generator, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fatigue (alligator) cracking: jagged Voronoi edges inside a disk, 1-2.5 px wide."""
    centre = rng.uniform(0.2, 0.8, 2) * size
    radius = rng.uniform(0.1, 0.2) * size
    count = max(6, int(np.pi * radius**2 / 55**2))
    r = radius * np.sqrt(rng.random(count))
    a = rng.uniform(0, 2 * np.pi, count)
    seeds = centre + np.column_stack([r * np.cos(a), r * np.sin(a)])
    edges = shapely.voronoi_polygons(MultiPoint(seeds), only_edges=True)
    edges = shapely.segmentize(edges.intersection(Point(centre).buffer(radius)), 3.0)
    paths = []
    for edge in shapely.get_parts(edges):
        pts = np.asarray(edge.coords)
        if len(pts) < 2:
            continue
        ends = np.minimum(np.arange(len(pts)), np.arange(len(pts))[::-1])[:, None]
        jitter = ndimage.gaussian_filter1d(rng.normal(0, 1.2, pts.shape), 1.0, axis=0)
        paths.append((pts + jitter * np.minimum(ends, 2) / 2,
                      np.clip(rng.uniform(1.0, 2.5) + rng.normal(0, 0.3, len(pts)), 1, 6)))
    return paths


def _crack_paths(rng: np.random.Generator,
                 size: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """3-8 crack systems as polylines (pixel coordinates) with widths (px) per vertex and the
    index of their system. The first is a wide longitudinal crack; branches are thinner."""
    paths = []
    for system in range(int(rng.integers(3, 9))):
        kind = 0 if system == 0 else rng.choice(3, p=[0.4, 0.45, 0.15])
        if kind == 2:
            paths += [(p, w, system) for p, w in _alligator(rng, size)]
            continue
        heading = ((np.pi / 2 if kind == 0 else 0.0) + rng.normal(0, 0.15)
                   + rng.choice([0.0, np.pi]))
        length = rng.uniform(0.4, 1.0) * size
        start = (rng.uniform(0.15, 0.85, 2) * size
                 - np.array([np.cos(heading), np.sin(heading)]) * length / 2)
        base = rng.uniform(3.5, 5.5) if system == 0 else rng.uniform(1.2, 4.0)
        stack = [(start, heading, length, base, 0)]
        while stack:
            start, heading, length, base, level = stack.pop()
            pts = _walk(rng, start, heading, length)
            widths = _widths(rng, len(pts), base)
            paths.append((pts, widths, system))
            if level < 2:
                for _ in range(int(rng.integers(1, 4) if level == 0 else rng.integers(0, 2))):
                    at = int(rng.integers(int(len(pts) * 0.15), int(len(pts) * 0.85)))
                    turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
                    stack.append((pts[at], heading + turn, length * rng.uniform(0.15, 0.4),
                                  min(widths[at], rng.uniform(1.0, 2.5)), level + 1))
    return paths


def _asphalt(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey asphalt surface (float32, size x size, grey levels): shading, aggregate texture
    at several scales, light stones, dark pits, maybe a stain, a repair patch, paint."""
    grey = _noise(rng, size, size / 2)
    grey *= 6
    grey += rng.uniform(105, 135)
    angle = rng.uniform(0, 2 * np.pi)
    axis = np.arange(size, dtype=np.float32) / size - 0.5
    grey += rng.uniform(6, 14) * (np.cos(angle) * axis[None, :] + np.sin(angle) * axis[:, None])
    for scale, amplitude in ((40, 4.0), (8, 5.0), (2, 5.0)):
        grey += amplitude * _noise(rng, size, scale)
    stones = _noise(rng, size, 4)
    grey += 32 * np.clip(stones - 1.8, 0, 0.8) / 0.8
    del stones
    pits = _noise(rng, size, 2.5)
    grey -= 28 * np.clip(-pits - 2.2, 0, 0.6) / 0.6
    del pits
    grey[rng.random((size, size), dtype=np.float32) < 0.002] += rng.uniform(20, 35)
    if rng.random() < 0.6:                                   # oil or water stain
        stain = np.clip((_noise(rng, size, size / 6) - 1.3) / 0.4, 0, 1)
        grey -= rng.uniform(8, 16) * stain
    if rng.random() < 0.4:                                   # repair patch, straight edges
        lo, hi = np.sort(rng.uniform(0, size, 2))
        patch = _rasterize([box(lo, 0, hi, size) if rng.random() < 0.5
                            else box(0, lo, size, hi)], size, Affine.identity()).astype(bool)
        grey[patch] = grey[patch] * 0.85 + rng.uniform(-12, 6)
    if rng.random() < 0.6:                                   # worn paint stripe
        width = rng.uniform(100, 150)
        x = rng.uniform(0.1, 0.9) * size
        stripe = affinity.rotate(box(x - width / 2, -size, x + width / 2, 2 * size),
                                 rng.normal(0, 4), origin=(x, size / 2))
        if rng.random() < 0.5:
            stripe = affinity.rotate(stripe, 90, origin=(size / 2, size / 2))
        inside = _rasterize([stripe], size, Affine.identity()).astype(bool)
        alpha = np.clip(0.95 + 0.2 * _noise(rng, size, 6)[inside], 0, 1)
        grey[inside] += alpha * (205 + 0.3 * (grey[inside] - 120) - grey[inside])
    return grey


def generate_crack_scene(out_dir: Path, seed: int = 0, size: int = 2048,
                         pixel_size: float = 0.001) -> SceneFiles:
    """Pavement RGB scene with crack labels: ``size`` x ``size`` pixels of ``pixel_size`` m in
    EPSG:32633, top-left corner at ``ORIGIN``; written as ``cracks_*`` into ``out_dir``."""
    rng = np.random.default_rng(seed)
    transform = from_origin(*ORIGIN, pixel_size, pixel_size)
    pixel = Affine.identity()

    paths = _crack_paths(rng, size)
    a = np.concatenate([p[:-1] for p, _, _ in paths])
    b = np.concatenate([p[1:] for p, _, _ in paths])
    width = np.concatenate([(w[:-1] + w[1:]) / 2 for _, w, _ in paths])
    system = np.concatenate([np.full(len(p) - 1, k + 1) for p, _, k in paths])
    wide = width >= 1.5
    segments = shapely.linestrings(np.stack([a, b], axis=1)[wide])
    bodies = shapely.buffer(segments, width[wide] / 2, quad_segs=3)
    crack = _rasterize(zip(bodies, system[wide]), size, pixel)
    centre = _rasterize(((LineString(p), k + 1) for p, _, k in paths), size, pixel)
    crack = np.where(crack > 0, crack, centre)
    mask = crack > 0

    grey = _asphalt(rng, size)
    # Darken the crack pixels by a share of the surface grey, less on their outer rim.
    depth = rng.uniform(0.45, 0.7, int(system.max()) + 1).astype(np.float32)
    rim = ndimage.binary_erosion(mask)
    core = ndimage.binary_erosion(rim)[mask]
    rim = rim[mask]
    grey[mask] *= 1 - depth[crack[mask]] * (0.8 + 0.1 * rim + 0.1 * core)
    halo = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
    halo *= -0.2
    halo += 1
    halo[mask] = 1
    grey *= halo
    del halo
    warm = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0)
    image = np.empty((3, size, size), dtype=np.uint8)
    for band, tint in enumerate(1 + warm * np.array([0.03, 0.0, -0.04])):
        image[band] = np.clip(np.rint(grey * np.float32(tint)), 0, 255)
    del grey

    components, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    pieces: dict[int, list[Polygon]] = {}
    for geom, value in features.shapes(components, mask=mask, transform=transform):
        pieces.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    polygons = [shapely.multipolygons(parts) for parts in pieces.values()]
    frame = box(0, 0, size, size)
    lines = [(affinity.affine_transform(part, transform.to_shapely()), float(w.mean()))
             for p, w, _ in paths for part in shapely.get_parts(LineString(p).intersection(frame))]
    layers = {
        "cracks": gpd.GeoDataFrame({"class_id": 1, "class_name": "crack"},
                                   index=range(len(polygons)), geometry=polygons, crs=CRS),
        "centerlines": gpd.GeoDataFrame({"width_px": [w for _, w in lines]},
                                        geometry=[g for g, _ in lines], crs=CRS),
    }
    return _write_scene(out_dir, "cracks", image, mask.astype(np.uint8), transform, layers,
                        {"compress": "deflate", "predictor": 2, "zlevel": 9})


# -- land cover ------------------------------------------------------------------------------

LANDCOVER_CLASSES = ("background", "building", "road", "water", "tree")
LANDCOVER_COLOURS = np.array([[112, 128, 72], [176, 84, 66], [118, 118, 122], [38, 66, 104],
                              [36, 84, 40]], dtype=np.float32)   # by class id
LANDCOVER_TEXTURE = np.array([14, 10, 5, 4, 16], dtype=np.float32)


def _ponds(rng: np.random.Generator, extent: float, count: int) -> list[BaseGeometry]:
    """Irregular ponds: buffered random polygons, 15-45 m across."""
    ponds = []
    for _ in range(count):
        centre = rng.uniform(0.1, 0.9, 2) * extent
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radii = rng.uniform(8, 22) * rng.uniform(0.6, 1.0, 9)
        ring = centre + np.column_stack([np.cos(angles), np.sin(angles)]) * radii[:, None]
        ponds.append(Polygon(ring).buffer(4).buffer(-2))
    return ponds


def generate_landcover_scene(out_dir: Path, seed: int = 0, size: int = 1024,
                             pixel_size: float = 0.5) -> SceneFiles:
    """Write a land-cover scene: buildings, roads, water and trees on fields (class ids
    :data:`LANDCOVER_CLASSES`); the mask holds class ids and the ``landcover`` layer one
    polygon per feature with ``class_id`` and ``class_name``.

    Features are painted in class order (water, trees, roads, buildings: a later one covers
    an earlier one) and the mask is burned the same way, so labels are exact.
    """
    rng = np.random.default_rng(seed)
    extent = size * pixel_size
    scale = (extent / 512) ** 2             # counts scale with the area
    roads = [line.buffer(rng.uniform(3, 6), cap_style="flat")
             for line in _main_roads(rng, extent, max(2, round(3 * np.sqrt(scale))))]
    ponds = _ponds(rng, extent, max(1, round(2 * scale)))
    crowns = [Point(rng.uniform(0, extent, 2)).buffer(rng.uniform(2, 5))
              for _ in range(round(90 * scale))]
    trees = list(shapely.get_parts(shapely.union_all(crowns)))
    keep_out = shapely.union_all(roads).buffer(3)
    houses: list[shapely.Geometry] = []
    for _ in range(round(60 * scale)):
        centre = rng.uniform(0.03, 0.97, 2) * extent
        house = affinity.rotate(box(*(centre - rng.uniform(4, 9, 2)),
                                    *(centre + rng.uniform(4, 9, 2))), rng.uniform(0, 90))
        if not house.intersects(keep_out) and all(house.distance(h) > 3 for h in houses):
            houses.append(house)
    layers_by_class = {3: ponds, 4: trees, 2: roads, 1: houses}   # paint order
    flip = Affine(1, 0, 0, 0, -1, 0)          # local metres (y south) -> map (y north)
    to_map = Affine.translation(*ORIGIN) * flip
    transform = from_origin(*ORIGIN, pixel_size, pixel_size)
    shapes = [(affinity.affine_transform(g, to_map.to_shapely()), k)
              for k, geoms in layers_by_class.items() for g in geoms]
    mask = _rasterize(shapes, size, transform)
    fine = _noise(rng, size, 2.0)
    coarse = _noise(rng, size, 40.0)
    image = LANDCOVER_COLOURS[mask] + (LANDCOVER_TEXTURE[mask] * fine)[..., None] \
        + (6 * coarse)[..., None]
    image = np.clip(np.moveaxis(image, -1, 0), 1, 255).astype(np.uint8)
    frame = gpd.GeoDataFrame({"class_id": [k for _, k in shapes],
                              "class_name": [LANDCOVER_CLASSES[k] for _, k in shapes]},
                             geometry=[g for g, _ in shapes], crs=CRS)
    return _write_scene(out_dir, "landcover", image, mask, transform, {"landcover": frame},
                        {"compress": "deflate", "predictor": 2})


SCENES: dict[str, Callable[..., SceneFiles]] = {
    "roads": generate_road_scene,
    "cracks": generate_crack_scene,
    "landcover": generate_landcover_scene,
}
