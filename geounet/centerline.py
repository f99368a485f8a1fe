"""Centerlines of thin shapes (cracks, roads): skeleton, spur pruning, length and width.

Pure functions on one binary raster patch (one connected feature). Coordinates are in pixel
units of the patch: x = column + 0.5, y = row + 0.5 (pixel centres). The skeleton is
scikit-image's thinning (:func:`skimage.morphology.skeletonize`); its pixels are joined to
their 8-neighbours (a diagonal step only where no edge-neighbour path exists, so corners do not
form little triangles) and merged into lines between junctions and free ends. Terminal branches
shorter than the spur length (by default twice the shape's radius at their junction, at least
3 px) are pruned. Lines are then smoothed (Douglas-Peucker, 1 px, which removes the pixel
staircase that would otherwise inflate lengths by up to 8 %) and each free end is extended by
the shape's radius there, because thinning stops about half a width short of a shape's end.

Width: every foreground pixel is assigned to its nearest centerline pixel; a line's mean width
is the area it collects divided by its length (exact for a straight band of any width), its
maximum width is twice the largest inscribed radius along it (pixel-accurate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import LineString
from skimage.morphology import skeletonize

SMOOTHING_PX = 1.0
MIN_SPUR_PX = 3.0


@dataclass(frozen=True)
class Centerline:
    """One branch of a shape's centerline, in pixel units of its patch.

    Attributes:
        line: LineString through pixel centres (x = column + 0.5, y = row + 0.5).
        length_px: length of ``line`` (pixels).
        area_px: foreground pixels nearest to this branch.
        max_width_px: twice the largest inscribed radius along the branch (pixels).
    """

    line: LineString
    length_px: float
    area_px: float
    max_width_px: float

    @property
    def mean_width_px(self) -> float:
        return self.area_px / self.length_px if self.length_px > 0 else float("nan")


def centerlines(shape: np.ndarray, spur_length_px: float | None = None) -> list[Centerline]:
    """Centerline branches of the foreground of ``shape`` (bool array; pixels outside it are
    background). ``spur_length_px``: prune terminal branches shorter than this (pixels);
    ``None`` prunes those shorter than twice the radius at their junction (at least 3 px)."""
    shape = np.pad(shape.astype(bool), 1)
    radius = ndimage.distance_transform_edt(shape)
    skeleton = skeletonize(shape)
    lines = _prune(_skeleton_lines(skeleton), radius, spur_length_px)
    if not lines:
        return []
    kept = np.zeros(shape.shape, np.int32)
    for index, line in enumerate(lines, start=1):
        cols, rows = _pixels(line)
        kept[rows, cols] = np.where(kept[rows, cols] == 0, index, kept[rows, cols])
    nearest = ndimage.distance_transform_edt(kept == 0, return_distances=False,
                                             return_indices=True)
    owner = kept[nearest[0][shape], nearest[1][shape]]
    areas = np.bincount(owner, minlength=len(lines) + 1)
    degree = _endpoint_degree(lines)
    result = []
    for index, line in enumerate(lines, start=1):
        cols, rows = _pixels(line)
        smooth = _extend_free_ends(shapely.simplify(line, SMOOTHING_PX), radius, degree)
        smooth = shapely.transform(smooth, lambda xy: xy - 0.5)   # padded index -> patch x/y
        result.append(Centerline(smooth, float(smooth.length), float(areas[index]),
                                 float(2 * radius[rows, cols].max() - 1)))
    return result


def _skeleton_lines(skeleton: np.ndarray) -> list[LineString]:
    """Skeleton pixels joined to neighbours, merged into lines between nodes (pixel centres
    of the padded array, without the +0.5: vertices are integer (col, row))."""
    s = skeleton
    right = s[:, :-1] & s[:, 1:]
    down = s[:-1, :] & s[1:, :]
    down_right = s[:-1, :-1] & s[1:, 1:] & ~s[:-1, 1:] & ~s[1:, :-1]
    down_left = s[:-1, 1:] & s[1:, :-1] & ~s[:-1, :-1] & ~s[1:, 1:]
    starts, ends = [], []
    for mask, (dr, dc), (r0, c0) in ((right, (0, 1), (0, 0)), (down, (1, 0), (0, 0)),
                                     (down_right, (1, 1), (0, 0)),
                                     (down_left, (1, -1), (0, 1))):
        rows, cols = np.nonzero(mask)
        rows, cols = rows + r0, cols + c0
        starts.append(np.column_stack([cols, rows]))
        ends.append(np.column_stack([cols + dc, rows + dr]))
    starts, ends = np.concatenate(starts), np.concatenate(ends)
    if not len(starts):
        return []
    segments = shapely.linestrings(np.stack([starts, ends], axis=1).astype(np.float64))
    merged = shapely.line_merge(shapely.multilinestrings(segments))
    return list(shapely.get_parts(merged))


def _endpoint_degree(lines: list[LineString]) -> dict[tuple[float, float], int]:
    """How many line ends meet at each end point."""
    degree: dict[tuple[float, float], int] = {}
    for line in lines:
        coords = line.coords
        for end in (coords[0], coords[-1]):
            degree[end] = degree.get(end, 0) + 1
    return degree


def _prune(lines: list[LineString], radius: np.ndarray, spur_length_px: float | None,
           rounds: int = 3) -> list[LineString]:
    """Remove short terminal branches (free end on one side, a junction on the other), never
    leaving a junction with fewer than two branches; re-merge through former junctions."""
    for _ in range(rounds):
        degree = _endpoint_degree(lines)
        spurs = []
        for i, line in enumerate(lines):
            a, b = line.coords[0], line.coords[-1]
            if a == b or (degree[a] == 1) == (degree[b] == 1):
                continue   # a loop, an isolated line or a link between junctions
            junction = b if degree[a] == 1 else a
            limit = spur_length_px if spur_length_px is not None else max(
                MIN_SPUR_PX, 2 * radius[int(junction[1]), int(junction[0])])
            if line.length < limit:
                spurs.append((line.length, i, junction))
        removed = set()
        for _, i, junction in sorted(spurs):
            if degree[junction] >= 3:
                degree[junction] -= 1
                removed.add(i)
        if not removed:
            break
        kept = [line for i, line in enumerate(lines) if i not in removed]
        lines = list(shapely.get_parts(shapely.line_merge(shapely.multilinestrings(kept))))
    return lines


def _pixels(line: LineString) -> tuple[np.ndarray, np.ndarray]:
    """(columns, rows) of the integer vertices of an unsmoothed skeleton line."""
    xy = shapely.get_coordinates(line).astype(np.intp)
    return xy[:, 0], xy[:, 1]


def _extend_free_ends(line: LineString, radius: np.ndarray,
                      degree: dict[tuple[float, float], int]) -> LineString:
    """Move each free end outwards along the line by the inscribed radius there, minus the
    half pixel that the pixel-centre skeleton already covers."""
    xy = shapely.get_coordinates(line).copy()
    if len(xy) < 2:
        return line
    for end, inner in ((0, 1), (-1, -2)):
        key = (float(xy[end, 0]), float(xy[end, 1]))
        if degree.get(key, 0) != 1:
            continue
        direction = xy[end] - xy[inner]
        norm = np.hypot(*direction)
        if norm == 0:
            continue
        reach = radius[int(key[1]), int(key[0])] - 0.5
        xy[end] = xy[end] + direction / norm * max(reach, 0.0)
    return LineString(xy)
