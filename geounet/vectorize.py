"""Class masks to polygons, block by block, merged exactly across block edges.

The mask is read in square blocks. Each block is polygonized with
:func:`rasterio.features.shapes` (GDAL's polygonizer) in pixel coordinates, where every vertex
is an integer, so geometry operations on them are exact. A polygon that does not reach an
inner block edge is complete and final. A polygon that reaches one may continue in the
neighbouring block: such pieces are kept aside, grouped with the pieces they share a boundary
with (an edge for 4-connectivity, also a corner for 8-connectivity) and unioned. The result
equals polygonizing the whole mask at once (same features, same areas, same union), while only
one block of pixels is ever in memory. Coordinates are finally mapped through the raster's
transform into its CRS.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyproj
import rasterio
import shapely
from rasterio import features
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry

from geounet.errors import ConfigError, InputError
from geounet.export import to_frame, vector_format, write_frame
from geounet.io import check_output, open_raster


@dataclass(frozen=True)
class VectorizeConfig:
    """Polygonization settings.

    Attributes:
        connectivity: 4 (edge neighbours) or 8 (edge and corner neighbours).
        block_size: edge of the square blocks read at a time (pixels).
        classes: class ids to vectorize; ``None``: every class except 0 (background).
        min_area: drop polygons smaller than this, in square map units (after merging).
        simplify: topology-preserving simplification tolerance in map units (0: none).
    """

    connectivity: int = 4
    block_size: int = 2048
    classes: tuple[int, ...] | None = None
    min_area: float = 0.0
    simplify: float = 0.0

    def __post_init__(self) -> None:
        if self.connectivity not in (4, 8):
            raise ConfigError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.block_size < 2:
            raise ConfigError(f"block size must be >= 2 pixels, got {self.block_size}")


def polygonize_blocks(mask_path: str | Path, config: VectorizeConfig | None = None,
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(class ids, polygons)`` arrays, block by block, in the raster's CRS.

    Nodata pixels and class 0 are not vectorized. Pieces that reach an inner block edge are
    held back and yielded, merged, at the end (see the module docstring).
    """
    config = config or VectorizeConfig()
    info = open_raster(mask_path)
    pending: dict[int, list[np.ndarray]] = {}
    for ids, polygons in _block_pieces(mask_path, info.width, info.height, config, pending):
        yield ids, _finish(polygons, info.transform, config)
    for class_id, pieces in pending.items():
        merged = np.array(list(_merge_touching(np.concatenate(pieces), config.connectivity)),
                          dtype=object)
        yield np.full(len(merged), class_id, np.int32), _finish(merged, info.transform, config)


def _block_pieces(mask_path, width: int, height: int, config: VectorizeConfig,
                  pending: dict[int, list[np.ndarray]],
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Complete polygons of each block (pixel coordinates); pieces touching inner block
    edges are appended to ``pending`` by class."""
    size = config.block_size
    with rasterio.open(mask_path) as src:
        for row in range(0, height, size):
            for col in range(0, width, size):
                window = Window(col, row, min(size, width - col), min(size, height - row))
                values = src.read(1, window=window)
                keep = src.read_masks(1, window=window) > 0
                keep &= values != 0
                if config.classes is not None:
                    keep &= np.isin(values, config.classes)
                if not keep.any():
                    continue
                offset = rasterio.Affine.translation(col, row)
                found = list(features.shapes(values, mask=keep, transform=offset,
                                             connectivity=config.connectivity))
                polygons = _polygons([geom for geom, _ in found])
                ids = np.array([value for _, value in found], dtype=np.int32)
                x0, y0, x1, y1 = shapely.bounds(polygons).T
                on_edge = ((col > 0) & (x0 == col)) | ((row > 0) & (y0 == row))
                on_edge |= (col + window.width < width) & (x1 == col + window.width)
                on_edge |= (row + window.height < height) & (y1 == row + window.height)
                for class_id in np.unique(ids[on_edge]):
                    pending.setdefault(int(class_id), []).append(
                        polygons[on_edge & (ids == class_id)])
                yield ids[~on_edge], polygons[~on_edge]


def _polygons(geojson: list[dict]) -> np.ndarray:
    """GeoJSON polygon dicts to an array of shapely Polygons, built in one vectorized call."""
    rings = [np.asarray(ring, dtype=np.float64) for g in geojson for ring in g["coordinates"]]
    ring_ends = np.cumsum([len(r) for r in rings])
    polygon_ends = np.cumsum([len(g["coordinates"]) for g in geojson])
    return shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, np.concatenate(rings),
        (np.concatenate([[0], ring_ends]), np.concatenate([[0], polygon_ends])),
    )


def _merge_touching(pieces: np.ndarray, connectivity: int) -> Iterator[BaseGeometry]:
    """Union pieces into connected groups: sharing an edge (4) or any point (8)."""
    tree = shapely.STRtree(pieces)
    left, right = tree.query(pieces, predicate="touches")
    if connectivity == 4:  # corner-only contacts do not connect under 4-connectivity
        shared = shapely.intersection(np.take(pieces, left), np.take(pieces, right))
        edge = shapely.length(shared) > 0
        left, right = left[edge], right[edge]
    parent = list(range(len(pieces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left.tolist(), right.tolist()):
        parent[find(a)] = find(b)
    groups: dict[int, list[BaseGeometry]] = {}
    for i, piece in enumerate(pieces):
        groups.setdefault(find(i), []).append(piece)
    for members in groups.values():
        yield members[0] if len(members) == 1 else shapely.union_all(members)


def _finish(polygons: np.ndarray, transform: rasterio.Affine, config: VectorizeConfig,
            ) -> np.ndarray:
    """Pixel coordinates to map coordinates; valid geometry; optional simplification."""
    a, b, d, e, xoff, yoff = transform.to_shapely()
    matrix = np.array([[a, d], [b, e]])
    geometries = shapely.transform(polygons, lambda xy: xy @ matrix + (xoff, yoff))
    invalid = ~shapely.is_valid(geometries)
    if invalid.any():
        # 8-connected outlines touch themselves at pixel corners; split them there.
        geometries[invalid] = shapely.make_valid(geometries[invalid], method="structure")
    if config.simplify > 0:
        geometries = shapely.simplify(geometries, config.simplify, preserve_topology=True)
    return geometries


@dataclass
class VectorizeResult:
    """What a vectorization run wrote."""

    output: Path
    features: int
    area_m2: float
    driver: str


def vectorize_raster(mask_path: str | Path, output: str | Path,
                     config: VectorizeConfig | None = None, driver: str | None = None,
                     crs: str | None = None, pixel_coordinates: bool = False,
                     overwrite: bool = False) -> VectorizeResult:
    """Polygonize a class mask and write the features with their measurements.

    Args:
        mask_path: class mask raster (band 1; 0 is background, nodata is skipped).
        output: vector file; its format comes from ``driver`` or the extension.
        config: polygonization settings.
        driver: format name (gpkg, geojson, shapefile, parquet) overriding the extension.
        crs: reproject features to this CRS; for a raster without a CRS, declares its CRS.
        pixel_coordinates: accept a raster without a CRS and write pixel coordinates.
        overwrite: replace an existing output.
    """
    config = config or VectorizeConfig()
    output = Path(output)
    info = open_raster(mask_path)
    check_output(output, [mask_path], overwrite)
    fmt = vector_format(output, driver)
    source_crs = info.crs
    if source_crs is None:
        if crs is not None:
            source_crs, crs = rasterio.crs.CRS.from_user_input(crs), None
        elif not pixel_coordinates:
            raise InputError(f"{mask_path}: raster has no CRS; declare it with --crs EPSG:XXXX "
                             "or accept pixel coordinates with --pixel-coordinates")
    with rasterio.open(mask_path) as src:
        names = src.tags().get("GEOUNET_CLASSES", "")
    class_names = dict(enumerate(n for n in names.split(",") if n)) if names else {}
    ids, geometries = [np.zeros(0, np.int32)], [np.zeros(0, dtype=object)]
    for block_ids, block_geometries in polygonize_blocks(mask_path, config):
        keep = shapely.area(block_geometries) >= config.min_area
        ids.append(block_ids[keep])
        geometries.append(block_geometries[keep])
    pyproj_crs = pyproj.CRS.from_user_input(source_crs.to_wkt()) if source_crs else None
    frame = to_frame(np.concatenate(ids), np.concatenate(geometries), pyproj_crs, class_names)
    if crs is not None:
        frame = frame.to_crs(crs)
    write_frame(frame, output, fmt)
    return VectorizeResult(output, len(frame), float(frame.area_m2.sum()), fmt)
