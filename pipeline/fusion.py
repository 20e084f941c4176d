"""Fuse per-frame TripoSR meshes into one result (pure numpy/scipy/trimesh/PyMCubes, no Ray).

`fuse_meshes(meshes, strategy=..., scores=..., resolution=...) -> FusionResult` cleans every frame, picks a
reference (the best-scoring frame, else the shape medoid), aligns the others to it (`pipeline.alignment`),
rejects frames whose alignment error is an outlier, and then, by strategy:

* `fused` (default for 2+ frames): averages a truncated signed distance field of the aligned frames on one
  grid and runs marching cubes once -> one watertight mesh; vertex colours come from the nearest input
  surfaces, weighted towards frames that saw that side (their camera on +X).
* `best`: the reference frame alone (cleaned, centred). No alignment is run.
* `all`: a `trimesh.Scene` with one node per kept, aligned frame, for inspection.

The result is in TripoSR's native frame (Z up, camera of the reference frame on +X), centred on the
reference's surface centroid, in the reference's units; `pipeline.export` turns it Y-up for glTF. `report` is
JSON-able. Decimation and scaling to a real size are export options (`pipeline.export`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree

from pipeline.alignment import (
    Alignment,
    CleanMesh,
    _signed_volume,
    _Target,
    align_to_reference,
    clean_mesh,
    main_components,
    sample_surface,
    shape_outliers,
)
from pipeline.errors import FusionError, InvalidParameter
from pipeline.parallel import cpu_workers, ordered_map
from pipeline.params import MergeStrategy

logger = logging.getLogger(__name__)

RESOLUTION_RANGE = (32, 512)
# Grid cells along the longest side. 128 gives ~90k faces for a tyre (a TripoSR frame at 256: ~100k) and costs
# ~1 s CPU per 100k-face frame on the 2-core dev box (160: ~1.4 s); benchmarks/bench_fusion.py measures it.
DEFAULT_RESOLUTION = 128
BAND_VOXELS = 2  # the signed distance is computed within this many voxels of a surface, clamped beyond
PAD_VOXELS = 3  # empty margin around the objects so marching cubes closes the surface
SAMPLES_PER_VOXEL_AREA = (
    2.0  # surface samples per voxel face area (~0.7 voxel apart): every crossed voxel gets one
)
# Outlier rule on alignment errors (fraction of the reference RMS radius): reject when above
# median + MAD_K * 1.4826 * MAD and above RELATIVE_FLOOR * median; always reject above HARD_ERROR_LIMIT.
MAD_K = 4.0
RELATIVE_FLOOR = 1.5
HARD_ERROR_LIMIT = 0.08
ERROR_FLOOR = 0.01  # never reject below 1% of the RMS radius (near-identical frames have a MAD of ~0)
DEGENERATE_FRACTION = 0.5  # the axis is degenerate when at least this share of aligned frames is ambiguous


@dataclass
class FusionResult:
    """Output of `fuse_meshes`: exactly one of `mesh` / `scene` is set."""

    mesh: trimesh.Trimesh | None  # fused or best mesh (native Z-up frame); None for strategy ALL
    scene: trimesh.Scene | None  # strategy ALL: one node per kept, aligned frame
    report: dict  # JSON-able: per-frame alignment error, kept/rejected + reason, degenerate_axis, faces


def fuse_meshes(
    meshes: Sequence[trimesh.Trimesh],
    *,
    strategy: MergeStrategy | str = MergeStrategy.FUSED,
    scores: Sequence[float] | None = None,
    resolution: int = DEFAULT_RESOLUTION,
    job_id: str | None = None,
    workers: int | None = None,
) -> FusionResult:
    """Fuse per-frame meshes (TripoSR native frame, any units) into one result.

    Parameters
    ----------
    meshes : per-frame meshes in frame order; empty meshes and non-finite vertices are handled (reported).
    strategy : fused | best | all (see the module docstring). With one usable frame every strategy returns it.
    scores : per-frame quality (higher = better), same length as `meshes`; picks the reference frame.
        Without scores the reference is the medoid of a turn-invariant shape descriptor.
    resolution : grid cells along the longest side of the fused volume (32..512).
    job_id : only used in log lines.
    workers : threads for the per-frame steps (cleaning, alignment, fields, colour look-ups); default
        `pipeline.parallel.cpu_workers()`. The result does not depend on it.

    Raises
    ------
    InvalidParameter : bad strategy, resolution or scores length.
    FusionError : no meshes, or no usable mesh (the message gives each frame's reason).
    """
    clock = _Stopwatch()
    try:
        strategy = MergeStrategy(strategy)
    except ValueError:
        raise InvalidParameter("merge", f"{strategy!r} is not one of fused, best, all") from None
    if not RESOLUTION_RANGE[0] <= int(resolution) <= RESOLUTION_RANGE[1]:
        raise InvalidParameter("resolution", f"{resolution} is outside {list(RESOLUTION_RANGE)}")
    if len(meshes) == 0:
        raise FusionError("no meshes to fuse (0 frames)")
    if scores is not None:
        if len(scores) != len(meshes):
            raise InvalidParameter("scores", f"{len(scores)} scores for {len(meshes)} meshes")
        try:
            scores = [float(s) if s is not None else -np.inf for s in scores]
        except (TypeError, ValueError):
            raise InvalidParameter("scores", f"expected numbers, got {list(scores)!r}") from None
        scores = [s if np.isfinite(s) else -np.inf for s in scores]

    workers = cpu_workers() if workers is None else max(1, int(workers))
    clock.restart()
    cleans: list[CleanMesh] = []
    frames: list[dict] = []
    cleaned = ordered_map(lambda im: clean_mesh(im[1], im[0]), enumerate(meshes), workers)
    for clean, info in cleaned:
        info.update(
            kept=clean is not None,
            alignment_error=None,
            turn_deg=None,
            tilt_deg=None,
            scale=None,
            turn_ambiguous=None,
            transform=None,
            reference=False,
        )
        frames.append(info)
        if clean is not None:
            cleans.append(clean)
    clock.lap("clean")
    if not cleans:
        reasons = ", ".join(f"frame {f['index']}: {f['reason']}" for f in frames)
        raise FusionError(f"no usable mesh among {len(meshes)} frames ({reasons})")

    # reference: the best score among frames whose shape is not an outlier, else the shape medoid
    medoid, odd = shape_outliers(cleans)
    if scores is not None:
        candidates = [k for k in range(len(cleans)) if not odd[k]]
        ref_pos = max(candidates, key=lambda k: scores[cleans[k].index])
        reference_choice = "best_score"
    elif len(cleans) > 2:
        ref_pos = medoid
        reference_choice = "medoid"
    else:
        ref_pos = 0
        reference_choice = "first_usable"
    ref = cleans[ref_pos]
    report: dict = {
        "strategy_requested": strategy.value,
        "strategy": strategy.value,
        "reference_frame": ref.index,
        "reference_choice": reference_choice,
        "units": "input mesh units (TripoSR: [-0.87, 0.87] box); alignment errors: fraction of RMS radius",
        "resolution": int(resolution),
        "degenerate_axis": None,
        "warnings": [],
        "frames": frames,
    }
    frames[ref.index].update(
        alignment_error=0.0,
        turn_deg=0.0,
        tilt_deg=0.0,
        scale=1.0,
        reference=True,
        transform=_to_list(_translation(-ref.centroid)),
    )

    if strategy is MergeStrategy.BEST or len(cleans) == 1:
        for c in cleans:
            if c is not ref:
                frames[c.index].update(kept=False, reason="not_used_by_strategy_best")
        if strategy is MergeStrategy.ALL:  # one usable frame: a one-node scene, still a scene
            return _finish(FusionResult(None, _scene([ref], [ref.mesh]), report), report, clock, job_id)
        if strategy is not MergeStrategy.BEST:
            report["warnings"].append("only one usable frame: returning it unfused (asked for fused)")
            report["strategy"] = MergeStrategy.BEST.value
        return _finish(FusionResult(ref.mesh.copy(), None, report), report, clock, job_id)

    # align every other frame to the reference
    clock.restart()
    target = _Target(ref)  # read-only from here on: the worker threads share it
    aligned: dict[int, Alignment] = {}
    others = [c for c in cleans if c is not ref]
    for c, a in zip(
        others, ordered_map(lambda c: align_to_reference(c, ref, target), others, workers), strict=True
    ):
        aligned[c.index] = a
        frames[c.index].update(
            alignment_error=round(a.error, 6),
            turn_deg=round(a.turn_deg, 3),
            tilt_deg=round(a.tilt_deg, 3),
            scale=round(a.scale, 6),
            turn_ambiguous=a.turn_ambiguous,
            transform=_to_list(a.matrix @ _translation(-c.centroid)),
        )
    clock.lap("align")

    rejected = _reject_outliers({i: a.error for i, a in aligned.items()}, report)
    for i in rejected:
        frames[i].update(kept=False, reason="alignment_outlier")
    kept = [ref] + [c for c in cleans if c is not ref and c.index not in rejected]
    kept_aligned = [aligned[c.index] for c in kept[1:]]
    if kept_aligned:
        ambiguous = sum(a.turn_ambiguous for a in kept_aligned)
        report["degenerate_axis"] = bool(ambiguous >= DEGENERATE_FRACTION * len(kept_aligned))
    if report["degenerate_axis"]:
        report["warnings"].append(
            "the object looks rotationally symmetric about its vertical axis: the turn between frames cannot "
            "be observed from shape, so turns are not reported and colours around the axis may be mixed"
        )
        for c in kept[1:]:
            frames[c.index]["turn_deg"] = None

    moved = ordered_map(lambda c: _transformed(c.mesh, aligned[c.index].matrix), kept[1:], workers)
    meshes_aligned = [ref.mesh, *moved]
    if strategy is MergeStrategy.ALL:
        return _finish(FusionResult(None, _scene(kept, meshes_aligned), report), report, clock, job_id)

    if len(kept) == 1:
        report["warnings"].append("every other frame was rejected: returning the reference frame unfused")
        report["strategy"] = MergeStrategy.BEST.value
        return _finish(FusionResult(ref.mesh.copy(), None, report), report, clock, job_id)

    cameras = [np.array([1.0, 0.0, 0.0])] + [_unit(a.matrix[:3, :3] @ [1.0, 0.0, 0.0]) for a in kept_aligned]
    mesh = fuse_aligned(meshes_aligned, cameras, resolution, clock, workers=workers)
    return _finish(FusionResult(mesh, None, report), report, clock, job_id)


def fuse_aligned(
    meshes: Sequence[trimesh.Trimesh],
    cameras: Sequence[np.ndarray],
    resolution: int,
    clock: _Stopwatch | None = None,
    *,
    workers: int = 1,
) -> trimesh.Trimesh:
    """Average the truncated signed distance of already aligned meshes and extract one watertight surface.

    cameras: per mesh, the unit direction (3,) towards the camera that saw it, used to weight colours.
    workers: threads computing per-frame fields and colour look-ups; the sums run in frame order, so the
    result is the same for any count.
    """
    clock = clock if clock is not None else _Stopwatch()
    clock.restart()
    lo = np.min([m.bounds[0] for m in meshes], axis=0)
    hi = np.max([m.bounds[1] for m in meshes], axis=0)
    voxel = float((hi - lo).max()) / (resolution - 1)
    origin = lo - PAD_VOXELS * voxel
    shape = tuple(int(n) for n in np.ceil((hi - lo) / voxel).astype(int) + 1 + 2 * PAD_VOXELS)
    total = np.zeros(shape, dtype=np.float32)
    rng = np.random.default_rng(0)
    # the random numbers are drawn here, frame after frame, exactly as a sequential loop draws them
    draws = [_draw_samples(mesh, voxel, rng) for mesh in meshes]
    fields = ordered_map(
        lambda md: _truncated_sdf(md[0], origin, voxel, shape, md[1]),
        zip(meshes, draws, strict=True),
        workers,
    )
    for field in fields:
        total += field
    total /= len(meshes)
    # frames that disagree far from any surface (+trunc vs -trunc) can cancel to exactly 0; a vertex placed
    # exactly on a grid corner is shared by several cells and breaks manifoldness, so break such ties outward
    total[total == 0.0] = np.float32(1e-3 * voxel)
    clock.lap("field")

    clock.restart()
    import mcubes  # PyMCubes; imported here so importing the module stays cheap

    # PyMCubes treats values above the iso-level as inside and winds triangles counter-clockwise seen from
    # outside for that convention, so hand it -sdf (inside positive)
    vertices, faces = mcubes.marching_cubes(-total, 0.0)
    vertices = origin + vertices * voxel
    # PyMCubes already shares each edge vertex between cells: merging by position would fuse distinct vertices
    # that sit within rounding of one grid corner and create non-manifold edges
    mesh = trimesh.Trimesh(vertices, faces.astype(np.int64), process=False)
    if len(mesh.faces) == 0:
        raise FusionError("the fused surface is empty (the aligned frames share no inside)")
    mesh, _ = main_components(mesh, 0.05)
    if mesh.is_watertight and _signed_volume(mesh) < 0:
        mesh.invert()
    clock.lap("marching_cubes")

    clock.restart()
    colours = _transfer_colours(mesh, meshes, cameras, voxel, workers)
    if colours is not None:
        mesh.visual.vertex_colors = colours
    clock.lap("colours")
    return mesh


def _draw_samples(mesh: trimesh.Trimesh, voxel: float, rng: np.random.Generator) -> _Draws:
    """The uniforms `sample_surface` would draw from `rng` for this mesh's sample count, drawn now."""
    count = int(np.clip(SAMPLES_PER_VOXEL_AREA * mesh.area / voxel**2, 10_000, 4_000_000))
    return _Draws(rng.random(count), rng.random((2, count)))


class _Draws:
    """Pre-drawn uniforms standing in for a Generator in `sample_surface`, so frames can be sampled on
    worker threads with the numbers a sequential loop would use: `uniform(0, high, n)` is `high *
    random(n)` bit for bit (numpy computes low + (high - low) * u)."""

    def __init__(self, first: np.ndarray, pairs: np.ndarray) -> None:
        self.count = len(first)
        self._queue = [first, pairs]

    def uniform(self, low: float = 0.0, high: float = 1.0, size=None) -> np.ndarray:
        u = self._queue.pop(0)
        return u if high == 1.0 and low == 0.0 else low + (high - low) * u


def _truncated_sdf(mesh: trimesh.Trimesh, origin, voxel: float, shape, draws: _Draws) -> np.ndarray:
    """Truncated signed distance (negative inside) of one closed mesh on the grid, float32 `shape`.

    Narrow band: dense surface samples mark the voxels the surface crosses; within BAND_VOXELS of them the
    distance is point-to-plane to the nearest sample (a smooth, signed estimate). Beyond the band the value is
    +-trunc, the sign found by flood fill: band-free regions connected to the grid border are outside. An open
    mesh lets the fill leak inside; then a far voxel takes the sign of its nearest band voxel.
    Cost ~ surface area / voxel^2, not grid volume: a KD-tree query only for band voxels.
    """
    trunc = BAND_VOXELS * voxel
    points, face = sample_surface(mesh, draws.count, draws)
    normals = mesh.face_normals[face]
    ijk = np.clip(np.rint((points - origin) / voxel).astype(np.int64), 0, np.array(shape) - 1)
    band = np.zeros(shape, dtype=bool)
    band[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = True
    band = ndimage.binary_dilation(
        band, structure=ndimage.generate_binary_structure(3, 3), iterations=BAND_VOXELS
    )
    labels, _ = ndimage.label(~band)
    border = np.unique(
        np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()])
    )
    border = border[border > 0]
    inside = (labels > 0) & ~np.isin(labels, border)
    tree = cKDTree(points)
    field = np.where(inside, -trunc, trunc).astype(np.float32)
    # nothing inside means the fill leaked through a hole (or the object is thinner than the band); a closed
    # mesh also tells how many voxels it should enclose
    n_inside = int(inside.sum())
    leaked = n_inside == 0
    if mesh.is_watertight and not leaked:
        leaked = n_inside + 0.5 * band.sum() < 0.5 * abs(_signed_volume(mesh)) / voxel**3
    idx = np.nonzero(band)
    coords = origin + np.stack(idx, axis=1) * voxel
    # band voxels lie within (BAND_VOXELS + 0.5) * sqrt(3) voxels of a sample; the bound speeds the search up
    _, nearest = tree.query(coords, distance_upper_bound=(BAND_VOXELS + 0.5) * 1.75 * voxel)
    found = nearest < len(points)
    signed = np.einsum("ij,ij->i", coords[found] - points[nearest[found]], normals[nearest[found]])
    field[tuple(i[found] for i in idx)] = np.clip(signed, -trunc, trunc)
    if leaked:
        # open mesh: each far voxel takes the sign of the nearest band voxel (one distance transform, no
        # unbounded nearest-neighbour queries, which are slow far from a surface)
        far = ~band
        near_band = ndimage.distance_transform_edt(far, return_distances=False, return_indices=True)
        field[far] = np.where(field[tuple(i[far] for i in near_band)] < 0, -trunc, trunc)
        logger.debug("mesh not closed (or the fill leaked): far-field sign from the nearest band voxel")
    # the outer layer is always outside, so marching cubes closes the surface even for open inputs
    field[[0, -1]] = trunc
    field[:, [0, -1]] = trunc
    field[:, :, [0, -1]] = trunc
    return field


def _transfer_colours(mesh, sources, cameras, voxel: float, workers: int = 1) -> np.ndarray | None:
    """(V, 4) uint8 sRGB colours for `mesh` from the nearest vertices of the coloured `sources`.

    Averaged in linear light, weighted by closeness (1 / (d + voxel/2)^2) and by how squarely each source's
    camera saw that side (0.2 + max(0, normal . camera)): TripoSR invents the far side of every frame.
    """
    from pipeline.export import linear_to_srgb, srgb_to_linear

    normals = mesh.vertex_normals
    points = np.asarray(mesh.vertices)
    acc = np.zeros((len(points), 3))
    weight = np.zeros(len(points))
    coloured = [(s, c) for s, c in zip(sources, cameras, strict=True) if s.visual.kind == "vertex"]

    def look_up(source_camera) -> tuple[np.ndarray, np.ndarray]:
        src, cam = source_camera
        lin = srgb_to_linear(np.asarray(src.visual.vertex_colors[:, :3], dtype=np.float64) / 255.0)
        dist, nearest = cKDTree(src.vertices).query(points)
        w = (0.2 + np.maximum(0.0, normals @ cam)) / (dist + 0.5 * voxel) ** 2
        return w, lin[nearest]

    for w, lin in ordered_map(look_up, coloured, workers):  # summed in frame order
        acc += w[:, None] * lin
        weight += w
    if not weight.any():
        return None
    lin = acc / np.maximum(weight, 1e-30)[:, None]
    rgb = np.rint(linear_to_srgb(lin) * 255.0)
    return np.concatenate([rgb, np.full((len(rgb), 1), 255.0)], axis=1).astype(np.uint8)


def _reject_outliers(errors: dict[int, float], report: dict) -> set[int]:
    """Frames whose alignment error is an outlier (robust: median / MAD), or above the hard limit."""
    if not errors:
        return set()
    values = np.array(list(errors.values()))
    rejected = {i for i, e in errors.items() if e > HARD_ERROR_LIMIT}
    threshold = HARD_ERROR_LIMIT
    if len(values) >= 3:
        med = float(np.median(values))
        mad = float(np.median(np.abs(values - med)))
        threshold = min(HARD_ERROR_LIMIT, max(med + MAD_K * 1.4826 * mad, RELATIVE_FLOOR * med, ERROR_FLOOR))
        rejected |= {i for i, e in errors.items() if e > threshold}
    report["outlier_threshold"] = round(threshold, 6)
    return rejected


def _finish(result: FusionResult, report: dict, clock: _Stopwatch, job_id: str | None) -> FusionResult:
    frames = report["frames"]
    report["frames_used"] = [f["index"] for f in frames if f["kept"]]
    report["frames_rejected"] = [
        {"index": f["index"], "reason": f["reason"]} for f in frames if not f["kept"]
    ]
    if result.mesh is not None:
        report["faces"] = len(result.mesh.faces)
        report["vertices"] = len(result.mesh.vertices)
        report["watertight"] = bool(result.mesh.is_watertight)
    else:
        report["faces"] = int(sum(len(g.faces) for g in result.scene.geometry.values()))
        report["vertices"] = int(sum(len(g.vertices) for g in result.scene.geometry.values()))
        report["watertight"] = None
    clock.total()
    report["timings_s"] = {k: round(v, 4) for k, v in clock.wall.items()}
    report["cpu_s"] = {k: round(v, 4) for k, v in clock.cpu.items()}
    logger.info(
        "fusion done job_id=%s strategy=%s frames_used=%s rejected=%s degenerate_axis=%s faces=%d in %.2fs",
        job_id,
        report["strategy"],
        report["frames_used"],
        report["frames_rejected"],
        report["degenerate_axis"],
        report["faces"],
        clock.wall["total"],
    )
    return result


class _Stopwatch:
    """Wall and process-CPU seconds per stage (CPU time is the honest number on a shared machine)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._start = (time.perf_counter(), time.process_time())
        self.restart()

    def restart(self) -> None:
        self._lap = (time.perf_counter(), time.process_time())

    def lap(self, stage: str) -> None:
        self.wall[stage] = time.perf_counter() - self._lap[0]
        self.cpu[stage] = time.process_time() - self._lap[1]
        self.restart()

    def total(self) -> None:
        self.wall["total"] = time.perf_counter() - self._start[0]
        self.cpu["total"] = time.process_time() - self._start[1]


def _scene(cleans: Sequence[CleanMesh], meshes: Sequence[trimesh.Trimesh]) -> trimesh.Scene:
    scene = trimesh.Scene()
    for c, m in zip(cleans, meshes, strict=True):
        scene.add_geometry(m.copy(), node_name=f"frame_{c.index:03d}", geom_name=f"frame_{c.index:03d}")
    return scene


def _translation(offset: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = offset
    return m


def _transformed(mesh: trimesh.Trimesh, matrix: np.ndarray) -> trimesh.Trimesh:
    out = mesh.copy()
    out.apply_transform(matrix)
    return out


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _to_list(matrix: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 8) for x in row] for row in matrix]
