"""Centerlines of thin shapes (cracks, roads): skeleton, spur pruning, length and width.

Pure functions on binary raster patches, one connected feature each. Coordinates are in pixel
units of a patch: x = column + 0.5, y = row + 0.5 (pixel centres). The skeleton is
scikit-image's thinning (:func:`skimage.morphology.skeletonize`); its pixels are joined to
their 8-neighbours (a diagonal step only where no edge-neighbour path exists, so corners do not
form little triangles) and split into branches between junctions and free ends. Terminal
branches shorter than the spur length (by default twice the shape's radius at their junction,
at least 3 px) are pruned, shortest first, never leaving a junction with fewer than two
branches; branches meeting at a former junction are then one. Lines are smoothed
(Douglas-Peucker, 1 px, which removes the pixel staircase that would otherwise inflate lengths
by up to 8 %; 0.9 px along parts 1 or 2 px wide, so the line keeps to a thin crack's
corners) and each free end is extended by the shape's radius there, because thinning stops
about half a width short of a shape's end.

Width: every pixel of a shape is assigned to its nearest centerline pixel; a branch's mean
width is the area it collects divided by its length (exact for a straight band of any width),
its maximum width is twice the largest inscribed radius along it (pixel-accurate).

Many shapes are done at once (:func:`skeleton_branches`): each is laid, with a background
border, side by side in one image, so thinning and distances run once; branches are found with
array operations on the skeleton graph (a half-edge list ranked by pointer jumping), so a mask
with 100,000 small branches costs about as much as its polygons.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import shapely
from scipy import ndimage

SMOOTHING_PX = 1.0
THIN_SMOOTHING_PX = 0.9   # for branches of shapes 1 or 2 px wide (see _smoothed)
MIN_SPUR_PX = 3.0
PRUNE_ROUNDS = 3
GAP_PX = 2          # background between shapes laid side by side (beyond their border)
ROW_WIDTH_PX = 4096   # width of the rows shapes are laid in


@dataclass(frozen=True)
class Branches:
    """Centerline branches, one per item of each array.

    Attributes:
        shape: index of the shape (in the call) the branch belongs to.
        lines: LineStrings through pixel centres of the shape's patch (x = column + 0.5,
            y = row + 0.5), plus the corner given for the shape.
        length_px: length of each line (pixels).
        area_px: pixels of the shape nearest to the branch.
        max_width_px: twice the largest inscribed radius along the branch (pixels).
    """

    shape: np.ndarray
    lines: np.ndarray
    length_px: np.ndarray
    area_px: np.ndarray
    max_width_px: np.ndarray

    @property
    def mean_width_px(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.length_px > 0, self.area_px / self.length_px, np.nan)

    def __len__(self) -> int:
        return len(self.shape)

    def __reduce__(self):
        """Pickled as coordinate arrays (what the skeleton helper process sends back):
        shapely pickles each line on its own, ten times slower for many short lines."""
        return (_unpickle, (self.shape, shapely.get_coordinates(self.lines),
                            shapely.get_num_coordinates(self.lines), self.length_px,
                            self.area_px, self.max_width_px))

    def take(self, keep: np.ndarray) -> Branches:
        return Branches(*(getattr(self, f.name)[keep] for f in fields(Branches)))

    @staticmethod
    def concat(parts: Sequence[Branches], shapes: Sequence[int] | None = None) -> Branches:
        """One set of branches from ``parts``; ``shapes``: the shape index each part's
        branches get (by default they keep theirs)."""
        if not parts:
            return _no_branches()
        arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts])
                  for f in fields(Branches)}
        if shapes is not None:
            arrays["shape"] = np.repeat(np.asarray(shapes, np.int64), [len(p) for p in parts])
        return Branches(**arrays)


def centerlines(shape: np.ndarray, spur_length_px: float | None = None) -> Branches:
    """Centerline branches of the foreground of ``shape`` (bool array; pixels outside it are
    background). ``spur_length_px``: prune terminal branches shorter than this (pixels);
    ``None`` prunes those shorter than twice the radius at their junction (at least 3 px)."""
    return skeleton_branches([shape], spur_length_px)


def skeleton_branches(shapes: Sequence[np.ndarray], spur_length_px: float | None = None,
                      corners: np.ndarray | None = None) -> Branches:
    """:func:`centerlines` of each of ``shapes`` (bool arrays, one connected shape each),
    computed together; ``Branches.shape`` says whose each branch is. ``corners``: (n, 2)
    x, y added to the coordinates of each shape's lines (e.g. its patch's place in a
    raster); the result does not depend on which shapes are computed together."""
    from skimage.morphology import skeletonize  # heavy: loaded on use

    sheet = _Sheet(shapes)
    # two threads where the work splits in two: thinning and distance transforms, shapely's
    # operations release the GIL
    with ThreadPoolExecutor(1, thread_name_prefix="geounet-skeleton") as beside:
        distances = beside.submit(ndimage.distance_transform_edt, sheet.image)
        skeleton = skeletonize(sheet.image)
        radius = distances.result()
        graph = _Graph(skeleton, sheet.owner)
        del skeleton
        if not len(graph.u):
            return _no_branches()
        paths = graph.pruned(radius, spur_length_px)
        if not paths.count:
            return _no_branches()
        owner = sheet.owner[graph.rows[paths.start_vertex], graph.cols[paths.start_vertex]]
        radius_at = radius[graph.rows[paths.vertex], graph.cols[paths.vertex]]
        max_width = 2 * np.maximum.reduceat(radius_at, paths.offsets[:-1]) - 1
        narrowest = np.minimum.reduceat(radius_at, paths.offsets[:-1])
        areas = beside.submit(_areas, sheet, graph, paths, owner)
        if corners is None:
            corners = np.zeros((len(shapes), 2))
        lines = _lines(sheet, graph, paths, owner, radius, narrowest,
                       np.asarray(corners, np.float64))
        return Branches(owner, lines, shapely.length(lines), areas.result(), max_width)


def _unpickle(shape: np.ndarray, coords: np.ndarray, counts: np.ndarray,
              length_px: np.ndarray, area_px: np.ndarray, max_width_px: np.ndarray,
              ) -> Branches:
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    lines = shapely.from_ragged_array(shapely.GeometryType.LINESTRING, coords, (offsets,))
    return Branches(shape, lines, length_px, area_px, max_width_px)


def _no_branches() -> Branches:
    return Branches(np.zeros(0, np.int64), np.empty(0, dtype=object), np.zeros(0),
                    np.zeros(0), np.zeros(0))


class _Sheet:
    """Shapes laid side by side in rows, each with a one-pixel background border and
    :data:`GAP_PX` more between them, so that thinning (a 3 x 3 neighbourhood) and
    distances to the background see each shape alone.

    Attributes:
        image: the bool image; owner: index of the shape of each pixel's cell (-1: none);
        rows, cols: top-left corner of each shape's bordered patch in the image.
    """

    def __init__(self, shapes: Sequence[np.ndarray]) -> None:
        sizes = np.array([s.shape for s in shapes], dtype=np.int64).reshape(-1, 2) + 2
        cells = (sizes + GAP_PX).prod(axis=1).sum() if len(sizes) else 0
        width = max(int(sizes[:, 1].max()) if len(sizes) else 0,
                    min(ROW_WIDTH_PX, int(np.sqrt(cells)) + 1))   # about square
        rows, cols = np.zeros(len(sizes), np.int64), np.zeros(len(sizes), np.int64)
        top = left = tallest = 0
        for i, (h, w) in enumerate(sizes):
            if left and left + w > width:   # start a new row
                top, left, tallest = top + tallest + GAP_PX, 0, 0
            rows[i], cols[i] = top, left
            left += w + GAP_PX
            tallest = max(tallest, int(h))
        height = top + tallest
        self.image = np.zeros((height, width), bool)
        self.owner = np.full((height, width), -1, np.int32)
        for i, shape in enumerate(shapes):
            h, w = shape.shape
            self.image[rows[i] + 1:rows[i] + 1 + h, cols[i] + 1:cols[i] + 1 + w] = shape
            self.owner[rows[i]:rows[i] + h + 2, cols[i]:cols[i] + w + 2] = i
        self.rows, self.cols, self.sizes = rows, cols, sizes

    def patch(self, i: int) -> tuple[slice, slice]:
        """The bordered patch of shape ``i`` in the image."""
        (h, w), r, c = self.sizes[i], self.rows[i], self.cols[i]
        return slice(r, r + h), slice(c, c + w)


@dataclass
class _Paths:
    """Branches as vertex paths: ``vertex[offsets[k]:offsets[k + 1]]`` is branch k."""

    vertex: np.ndarray
    offsets: np.ndarray
    edges: np.ndarray          # the edge ids of all branches, branch after branch
    edge_offsets: np.ndarray
    length: np.ndarray         # pixels (1 per edge step, sqrt 2 per diagonal)

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    @property
    def start_vertex(self) -> np.ndarray:
        return self.vertex[self.offsets[:-1]]

    @property
    def end_vertex(self) -> np.ndarray:
        return self.vertex[self.offsets[1:] - 1]


class _Graph:
    """Skeleton pixels (vertices) joined to their neighbours (edges), see the module
    docstring; edges can be removed (pruning) and the rest split into branches."""

    def __init__(self, skeleton: np.ndarray, owner: np.ndarray) -> None:
        self.rows, self.cols = np.nonzero(skeleton)
        index = np.full(skeleton.shape, -1, np.int64)
        index[self.rows, self.cols] = np.arange(len(self.rows))
        s = skeleton
        steps = (  # (pixels with a neighbour in this direction, (row step, col step))
            (s[:, :-1] & s[:, 1:], (0, 1)),
            (s[:-1, :] & s[1:, :], (1, 0)),
            (s[:-1, :-1] & s[1:, 1:] & ~s[:-1, 1:] & ~s[1:, :-1], (1, 1)),
            (np.pad(s[:-1, 1:] & s[1:, :-1] & ~s[:-1, :-1] & ~s[1:, 1:], ((0, 0), (1, 0))),
             (1, -1)),
        )
        u, v, diagonal = [], [], []
        for mask, (dr, dc) in steps:
            r, c = np.nonzero(mask)
            u.append(index[r, c])
            v.append(index[r + dr, c + dc])
            diagonal.append(np.full(len(r), dr != 0 and dc != 0))
        self.u, self.v = np.concatenate(u), np.concatenate(v)
        self.step = np.where(np.concatenate(diagonal), np.sqrt(2.0), 1.0)
        self.alive = np.ones(len(self.u), bool)
        self.owner = owner

    def degree(self) -> np.ndarray:
        n = len(self.rows)
        return (np.bincount(self.u[self.alive], minlength=n)
                + np.bincount(self.v[self.alive], minlength=n))

    def paths(self) -> _Paths:
        """The living edges split into branches: maximal paths whose inner vertices have
        two edges (a closed loop without junctions is one branch)."""
        edges = np.flatnonzero(self.alive)
        degree = self.degree()
        # half-edges: 2k runs u -> v of edge edges[k], 2k + 1 runs v -> u
        tail = np.column_stack([self.u[edges], self.v[edges]]).ravel()
        head = np.column_stack([self.v[edges], self.u[edges]]).ravel()
        half = np.arange(len(tail))
        order = np.argsort(tail, kind="stable")
        first_out = np.searchsorted(tail[order], np.arange(len(degree)))
        through = degree[head] == 2
        out1 = order[np.minimum(first_out[head], len(order) - 1)]
        out2 = order[np.minimum(first_out[head] + 1, len(order) - 1)]
        following = np.where(out1 == (half ^ 1), out2, out1)   # not back where it came from
        following = np.where(through, following, -1)
        rank, last, following = _rank(following)
        starts = rank >= 0   # rank -1: the second direction of a closed loop
        starts[following[following >= 0]] = False
        start = half[starts & (half < (last ^ 1))]   # one of the two directions of each
        branch = np.full(len(half), -1, np.int64)     # branch of each chain's last half-edge
        branch[last[start]] = np.arange(len(start))
        member = np.flatnonzero((rank >= 0) & (branch[last] >= 0))
        k = branch[last[member]]
        count = rank[start] + 1
        offsets = np.concatenate([[0], np.cumsum(count)])
        steps = np.empty(offsets[-1], np.int64)   # branch after branch, in order
        steps[offsets[k] + count[k] - 1 - rank[member]] = member
        vertex_offsets = offsets + np.arange(len(offsets))
        vertex = np.empty(vertex_offsets[-1], np.int64)
        is_last = np.zeros(len(vertex), bool)
        is_last[vertex_offsets[1:] - 1] = True
        vertex[~is_last] = tail[steps]
        vertex[is_last] = head[steps[offsets[1:] - 1]]
        edge_ids = edges[steps >> 1]
        length = (np.add.reduceat(self.step[edge_ids], offsets[:-1]) if len(start)
                  else np.zeros(0))
        return _Paths(vertex, vertex_offsets, edge_ids, offsets, length)

    def pruned(self, radius: np.ndarray, spur_px: float | None) -> _Paths:
        """Remove short terminal branches (see the module docstring), up to
        :data:`PRUNE_ROUNDS` times; the branches left."""
        for _ in range(PRUNE_ROUNDS):
            paths = self.paths()
            degree = self.degree()
            a, b = paths.start_vertex, paths.end_vertex
            free_a, free_b = degree[a] == 1, degree[b] == 1
            terminal = (free_a != free_b) & (a != b)
            junction = np.where(free_a, b, a)
            limit = np.full(paths.count, float(spur_px or 0.0))
            if spur_px is None:
                limit = np.maximum(MIN_SPUR_PX, 2 * radius[self.rows[junction],
                                                           self.cols[junction]])
            spur = np.flatnonzero(terminal & (paths.length < limit))
            if not len(spur):
                return paths
            # per junction, shortest first, while it keeps at least two branches
            order = np.lexsort((spur, paths.length[spur], junction[spur]))
            spur = spur[order]
            at = junction[spur]
            group_start = np.r_[True, at[1:] != at[:-1]]
            first = np.maximum.accumulate(np.where(group_start, np.arange(len(spur)), 0))
            rank = np.arange(len(spur)) - first
            spur = spur[rank < degree[at] - 2]
            if not len(spur):
                return paths
            starts, stops = paths.edge_offsets[spur], paths.edge_offsets[spur + 1]
            steps = np.arange((stops - starts).sum()) + np.repeat(
                starts - np.cumsum(np.r_[0, (stops - starts)[:-1]]), stops - starts)
            self.alive[paths.edges[steps]] = False
        return self.paths()


def _rank(following: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each half-edge, (how many follow it on its chain, the chain's last half-edge,
    the half-edge after it), by pointer jumping. A cycle (a closed loop without a junction)
    is cut before its smallest half-edge; of its two directions, the one whose smallest
    half-edge is larger than its reverse's gets rank -1."""
    half = np.arange(len(following))
    jump = following.copy()
    rank = (jump >= 0).astype(np.int64)
    last = np.where(jump >= 0, jump, half)
    active = np.flatnonzero(jump >= 0)
    rounds = int(np.ceil(np.log2(max(2, len(half))))) + 1   # enough for any open chain
    for _ in range(rounds):
        if not len(active):
            return rank, last, following
        target = jump[active]
        rank[active] += rank[target]
        last[active] = last[target]
        jump[active] = jump[target]
        active = active[jump[active] >= 0]
    cycle = active   # still going: on cycles, of ``following`` itself
    low, low_reverse, step = cycle.copy(), cycle ^ 1, following[cycle]
    where = np.full(len(half), -1, np.int64)
    where[cycle] = np.arange(len(cycle))
    step = where[step]   # positions within ``cycle``
    for _ in range(rounds):
        low, low_reverse = np.minimum(low, low[step]), np.minimum(low_reverse, low_reverse[step])
        step = step[step]
    cut = following.copy()
    cut[cycle[following[cycle] == low]] = -1
    rank[cycle], last[cycle], _ = _rank(np.where(cut[cycle] >= 0, where[cut[cycle]], -1))
    last[cycle] = cycle[last[cycle]]
    rank[cycle[low > low_reverse]] = -1
    return rank, last, cut


def _areas(sheet: _Sheet, graph: _Graph, paths: _Paths, owner: np.ndarray) -> np.ndarray:
    """Pixels of each shape nearest to each of its branches (first branch on ties): all of
    them for a shape of one branch, else by a distance transform on the shape's patch."""
    pixels = np.bincount(sheet.owner[sheet.image], minlength=len(sheet.sizes))
    per_shape = np.bincount(owner, minlength=len(sheet.sizes))
    area = pixels[owner].astype(np.float64)
    branch = np.repeat(np.arange(len(owner)), np.diff(paths.offsets))   # of each vertex
    shapes = np.flatnonzero(per_shape > 1)
    several = np.isin(owner[branch], shapes)
    branch, vertex = branch[several], paths.vertex[several]
    order = np.argsort(owner[branch], kind="stable")
    branch, vertex = branch[order], vertex[order]
    ends = np.searchsorted(owner[branch], np.append(shapes, len(sheet.sizes)))
    for i, start, stop in zip(shapes, ends[:-1], ends[1:]):
        rows, cols = sheet.patch(int(i))
        mine = np.flatnonzero(owner == i)
        at, at_branch = vertex[start:stop], branch[start:stop]
        kept = np.full((rows.stop - rows.start, cols.stop - cols.start), len(owner) + 1)
        np.minimum.at(kept, (graph.rows[at] - rows.start, graph.cols[at] - cols.start),
                      at_branch + 1)
        kept[kept == len(owner) + 1] = 0
        nearest = ndimage.distance_transform_edt(kept == 0, return_distances=False,
                                                 return_indices=True)
        inside = sheet.image[rows, cols]
        found = np.bincount(kept[nearest[0][inside], nearest[1][inside]],
                            minlength=len(owner) + 1)
        area[mine] = found[mine + 1]
    return area


def _lines(sheet: _Sheet, graph: _Graph, paths: _Paths, owner: np.ndarray,
           radius: np.ndarray, narrowest: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """The branches as smoothed LineStrings with free ends extended, computed in each
    shape's own patch (so they do not depend on where it lies in the sheet), then moved to
    pixel centres plus ``corners``. ``narrowest``: the smallest inscribed radius along each
    branch (pixels)."""
    own = np.repeat(owner, np.diff(paths.offsets))
    xy = np.column_stack([graph.cols[paths.vertex] - sheet.cols[own],
                          graph.rows[paths.vertex] - sheet.rows[own]]).astype(np.float64)
    raw = shapely.from_ragged_array(shapely.GeometryType.LINESTRING, xy, (paths.offsets,))
    smooth = _smoothed(raw, narrowest)
    xy, index = shapely.get_coordinates(smooth, return_index=True)
    first = np.searchsorted(index, np.arange(len(smooth)))
    last = np.searchsorted(index, np.arange(len(smooth)), side="right") - 1
    degree = graph.degree()
    for end, inner, vertex in ((first, first + 1, paths.start_vertex),
                               (last, last - 1, paths.end_vertex)):
        # a free end moves outwards by the inscribed radius there, less the half pixel
        # that the pixel-centre skeleton already covers (thinning stops short of an end)
        direction = xy[end] - xy[inner]
        norm = np.hypot(direction[:, 0], direction[:, 1])
        free = (degree[vertex] == 1) & (norm > 0)
        reach = np.maximum(radius[graph.rows[vertex], graph.cols[vertex]] - 0.5, 0.0)
        xy[end[free]] += direction[free] / norm[free, None] * reach[free, None]
    xy += (corners - 0.5)[owner[index]]   # bordered patch index -> x/y of the shape
    return shapely.from_ragged_array(shapely.GeometryType.LINESTRING, xy,
                                     (np.append(first, len(xy)),))


def _smoothed(raw: np.ndarray, narrowest: np.ndarray) -> np.ndarray:
    """``raw`` (pixel-centre paths) simplified by :data:`SMOOTHING_PX`, or by
    :data:`THIN_SMOOTHING_PX` where the shape is 1 or 2 px wide somewhere along the branch
    (``narrowest`` inscribed radius under 1.5): a whole pixel there let the line cut the
    corner of a 1 px crack, a quarter of its length outside the crack."""
    tolerance = np.where(narrowest < 1.5, THIN_SMOOTHING_PX, SMOOTHING_PX)
    return shapely.simplify(raw, tolerance, preserve_topology=False)
