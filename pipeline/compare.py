"""Compare two reconstructions of one object (a tyre before and after a run): where it changed, how much.

`compare_meshes(reference, candidate, *, object_size_m=None, threshold_mm=1.0) -> CompareResult` (no Ray).

The candidate is a separate TripoSR run: any rotation and translation, and a scale off by up to +-15%. It is
aligned to the reference with a similarity transform estimated only from the surface that did not change:

1. Both meshes lose floaters (components under 2% of the area) and are sampled uniformly by area.
2. Axis: a tyre is a near body of revolution. Two equal principal moments of the surface and an odd third give
   the axis; a check that the radius does not depend on the angle confirms it (a square box has two equal
   moments too). Reference and candidate must agree on having one, or they are different objects.
3. Turn about the axis: cylindrical maps (angle x height) of the detail — tread radius, sidewall relief,
   luminance where both carry colour — are circularly correlated for both ends of the axis; the peak gives
   the turn, and `turn_determined` is false when the peak does not stand out. The same correlation of the
   mirror image flags a mirrored candidate. Objects without an axis try the 24 turns of their principal frame.
4. Trimmed ICP, point-to-plane, with scale: each iteration weights a correspondence by Tukey's biweight of
   its residual *averaged over its neighbourhood*; the biweight's width anneals from the spread of those
   averages down to their noise (read off the high-frequency part of the residual, which systematic change
   does not carry). So a worn patch stands out of the averaged noise and is left out. A uniformly worn tread
   is ~40% of a tyre, as much as its sidewalls: no robust statistic can tell which of the two changed, so a
   tyre's fit is anchored on the sidewalls and bead (weight 1; shoulder 0.3, tread 0.05), where rubber is
   not lost. The scale is never taken from the overall size, which would hide a uniformly worn tread.
5. Signed distance from every reference vertex to the aligned candidate (point-to-plane over its nearest
   vertices; negative = material lost), smoothed over `smooth_fraction` of the object size, in mm when
   `object_size_m` (the reference's largest dimension) is given, else as a fraction of that dimension.
6. Noise floor: 3 sigma of the smoothed distance over the unchanged surface (a truncated, iterated robust
   estimate; a tyre's sidewalls and bead). Figures below it are indistinguishable from reconstruction noise.

Frames and conventions (reference coordinates): `axis` points so that its largest component is positive;
sector angle 0 is world X projected onto the plane of the wheel (world Y when the axis is within 45 degrees of
X); angles grow counter-clockwise seen from the axis' tip (right-handed about the axis).
Per sector and band: `mean_loss` is the net mean of -distance (noise cancels; negative = net gain),
`max_loss` the largest loss, `area_fraction_over_threshold` the share losing more than the threshold.
Bands by distance r from the axis, with R_in/R_out the reference's 0.5/99.5th percentile radii and
h = R_out - R_in: tread r >= R_out - 0.1 h, shoulder down to R_out - 0.35 h, sidewall (and bead) below.
Sectors: 36 x 10 degrees over the tread band, where a tyre wears.

Not here: the heat-map GLB and chart PNG (`pipeline/compare_export.py`), jobs and HTTP (serve_app).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trimesh
from scipy.sparse import coo_matrix, diags, identity
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from pipeline.errors import CompareError, InvalidParameter

logger = logging.getLogger(__name__)

NOISE_FLOOR_SIGMAS = 3.0  # noise floor = 3 sigma: 99.7% of unchanged-surface differences lie within
SMOOTH_FRACTION = 0.015  # smoothing radius / object size: 11 mm on a 0.72 m tyre, ~2.6 voxels at mc 256
MIN_COMPONENT_AREA = 0.02  # components below this share of the area are floaters
MAX_SCALE = 1.25  # TripoSR rescales each crop by +-15%; beyond this the meshes are not the same object
ICP_SAMPLES = 20_000  # surface samples per mesh for the alignment
MAP_SAMPLES = 160_000  # samples for the cylindrical detail maps (~5 per map cell)
ANNEAL = 0.75  # per iteration, the biweight width shrinks from the residuals' spread towards the noise
LOCAL_NOISE_FACTOR = 1.5  # neighbouring samples share candidate points: their mean is noisier than 1/sqrt(k)
ICP_ITERATIONS = 30  # upper bound for the fine stage (after 20 coarse ones); converges in 10-20
THETA_BINS = 360  # 1-degree cells of the detail maps (peak refined by a parabola)
TURN_MIN_PEAK = 0.2  # normalised correlation the turn's peak must reach ...
TURN_MIN_MARGIN = 0.08  # ... and by which it must beat every other turn more than 12 degrees away
MIRROR_MARGIN = 0.15  # a mirror image correlating this much better than every proper turn -> mirrored
MATCH_MEDIAN = 0.01  # aligned surfaces whose median distance exceeds 1% of the size are different objects
MATCH_GATE = 0.02  # ... as are surfaces of which under 80% lies within 2% of the size of the other
MATCH_SHARE = 0.8
SECTORS = 36
# across-normal Gaussian of the distance estimate, in sample spacings: wider averages more noise away, but
# reads curved surfaces low (a 45 mm shoulder by 0.1 mm at 1.0); the smoothing that follows does the averaging
ACROSS_SIGMA = 0.5
BANDS = {
    "tread": (0.0, 0.10),
    "shoulder": (0.10, 0.35),
    "sidewall": (0.35, np.inf),
}  # depth below R_out, in h


@dataclass
class CompareResult:
    """The reference coloured by signed distance, the aligned candidate, and the JSON-able report."""

    mesh: trimesh.Trimesh  # reference surface (its coordinates), sRGB uint8 heat-map vertex colours
    candidate: trimesh.Trimesh  # candidate moved into the reference's coordinates
    distance: (
        np.ndarray
    )  # (V,) float64 smoothed signed distance per reference vertex, report units; NaN unmatched
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Surface:
    mesh: trimesh.Trimesh
    points: np.ndarray  # (N, 3) area-uniform samples
    normals: np.ndarray  # (N, 3) outward unit normals
    luminance: np.ndarray | None  # (N,) in [0, 1] when the mesh carries colour
    centroid: np.ndarray  # (3,)
    size: float  # largest bounding-box dimension
    removed_components: int
    prior: np.ndarray | float = 1.0  # per-sample weight of the alignment (tyres: by band)


def compare_meshes(
    reference: trimesh.Trimesh | trimesh.Scene,
    candidate: trimesh.Trimesh | trimesh.Scene,
    *,
    object_size_m: float | None = None,
    threshold_mm: float = 1.0,
    smooth_fraction: float = SMOOTH_FRACTION,
    seed: int = 0,
) -> CompareResult:
    """Align `candidate` to `reference` and measure the signed change of every reference vertex.

    Parameters
    ----------
    reference, candidate : meshes (or scenes, concatenated) in any units and pose; the report's frame is the
        reference's.
    object_size_m : the reference's largest dimension in metres; figures in mm. None: figures as a fraction
        of that dimension, and `threshold_mm` is read as thousandths of it.
    threshold_mm : losses and gains larger than this count as area over the threshold.
    smooth_fraction : radius of the smoothing of the distance field, as a share of the object size.

    Raises
    ------
    InvalidParameter : a bad number, or an empty / degenerate mesh.
    CompareError : different objects, a mirror image, or no alignment near the noise (`not_comparable`).
    """
    started = time.perf_counter()
    if object_size_m is not None and not (
        isinstance(object_size_m, (int, float)) and 1e-3 <= object_size_m <= 100
    ):
        raise InvalidParameter("object_size_m", f"{object_size_m!r} is not a size in [0.001, 100] metres")
    if (
        isinstance(threshold_mm, bool)
        or not isinstance(threshold_mm, (int, float))
        or not 0 < threshold_mm <= 1e3
    ):
        raise InvalidParameter("threshold_mm", f"{threshold_mm!r} is not in (0, 1000]")
    if not 0 < smooth_fraction <= 0.1:
        raise InvalidParameter("smooth_fraction", f"{smooth_fraction!r} is not in (0, 0.1]")
    rng = np.random.default_rng(seed)
    ref = _surface(reference, "reference", MAP_SAMPLES, rng)
    cand = _surface(candidate, "candidate", MAP_SAMPLES, rng)
    size = ref.size

    # -- coarse pose: axis, turn, mirror check -----------------------------------------------------------
    ref_axis, ref_axis_info = _find_axis(ref)
    cand_axis, cand_axis_info = _find_axis(cand)
    if (ref_axis is None) != (cand_axis is None):
        which = "reference" if ref_axis is not None else "candidate"
        raise CompareError(
            f"not comparable: the {which} is a body of revolution (a tyre) and the other is not "
            f"(principal moments {ref_axis_info['moments']} vs {cand_axis_info['moments']})"
        )
    scale0 = np.sqrt(_spread(ref.points) / _spread(cand.points))  # a start only; the fit sets the scale
    turn: dict[str, Any] = {
        "turn_deg": None,
        "turn_determined": None,
        "turn_peak": None,
        "turn_second_peak": None,
    }
    if ref_axis is not None:
        ref_frame = _wheel_frame(_canonical_axis(ref_axis))
        cand_frame = _wheel_frame(_canonical_axis(cand_axis))
        starts, turn = _turn_hypotheses(ref, cand, ref_frame, cand_frame, scale0, rng)
    else:
        ref_frame = cand_frame = None
        starts = _frame_hypotheses(ref, cand, scale0)

    # -- fine pose: robust ICP with scale, from the best start(s) ----------------------------------------
    coarse, fine = _subset(ref, 5000), _subset(ref, ICP_SAMPLES)
    cand_fine = _subset(cand, ICP_SAMPLES)
    if ref_frame is not None:  # a tyre: anchor the fit on the sidewalls and bead, which do not wear
        coarse.prior, fine.prior = (_band_prior(x.points, ref_frame, ref.centroid) for x in (coarse, fine))
    coarse_neighbours = cKDTree(coarse.points).query(coarse.points, k=8)[1]
    fine_neighbours = cKDTree(fine.points).query(fine.points, k=24)[1]
    best = None
    for start in starts:
        fit = _robust_icp(coarse, cand_fine, start, coarse_neighbours, size, iterations=20)
        fit = _robust_icp(fine, cand_fine, fit["matrix"], fine_neighbours, size, anneal_from=20)
        if best is None or fit["cost"] < best["cost"]:
            best = fit
    assert best is not None
    matrix = best["matrix"]
    scale = float(np.cbrt(np.linalg.det(matrix[:3, :3])))
    if not 1 / MAX_SCALE <= scale <= MAX_SCALE:
        raise CompareError(
            f"not comparable: the candidate would need a scale of {scale:.3f} to match the reference "
            f"(TripoSR varies by +-15%; are the meshes in different units?)"
        )

    # -- distances on the reference's own vertices --------------------------------------------------------
    aligned = cand.mesh.copy()
    aligned.apply_transform(matrix)
    vertices = np.asarray(ref.mesh.vertices)
    areas = _vertex_areas(ref.mesh)
    radius = smooth_fraction * size
    smoother = _Smoother(ref.mesh, areas, radius)
    # dense samples of the candidate, not its vertices: a coarse mesh has few, far apart
    dense = trimesh.sample.sample_surface(
        aligned, max(2 * len(vertices), 100_000), seed=int(rng.integers(1 << 31))
    )[0]
    raw, nearest = _signed_distance(vertices, smoother.normals(), np.asarray(dense))
    _check_match(ref, aligned, nearest, size)
    matched = nearest <= MATCH_GATE * size
    smooth = smoother(np.where(matched, raw, np.nan))
    # the noise of the unchanged part: for a tyre the sidewalls and bead (the fit's anchor), else everything
    anchor = (
        np.ones(len(vertices), bool)
        if ref_frame is None
        else _band_prior(vertices, ref_frame, ref.centroid) == 1
    )
    sigma = _robust_sigma(np.where(anchor, smooth, np.nan), areas)

    to_units, units = (
        (object_size_m * 1000.0 / size, "mm") if object_size_m is not None else (1.0 / size, "fraction")
    )
    threshold = threshold_mm if object_size_m is not None else threshold_mm * 1e-3
    area_units = (
        ("m2", (object_size_m / size) ** 2) if object_size_m is not None else ("fraction2", 1.0 / size**2)
    )
    d = smooth * to_units
    floor = NOISE_FLOOR_SIGMAS * sigma * to_units

    ref_axis_frame = None if ref_frame is None else (ref_frame, ref.centroid)
    if ref_frame is not None:
        turn["turn_deg"] = _turn_of(matrix, ref_frame, cand_frame)
    report = _report(
        d, areas, vertices, ref_axis_frame, floor=floor, threshold=threshold, units=units,
        area_units=area_units,
        alignment={
            "rms": float(best["rms"] * to_units),
            "scale": scale,
            "axis": None if ref_frame is None else [float(x) for x in ref_frame[:, 2]],
            **turn,
            "inlier_fraction": float(best["inliers"]),
            "iterations": int(best["iterations"]),
            "matrix": matrix.tolist(),  # 4x4: candidate coordinates -> reference coordinates
            "axis_check": {"reference": ref_axis_info, "candidate": cand_axis_info},
        },
    )  # fmt: skip
    report["object_size_m"] = object_size_m
    report["smoothing_radius"] = float(radius * to_units)
    report["surface"] = {
        "reference": {"vertices": len(ref.mesh.vertices), "faces": len(ref.mesh.faces),
                      "floaters_removed": ref.removed_components},
        "candidate": {"vertices": len(cand.mesh.vertices), "faces": len(cand.mesh.faces),
                      "floaters_removed": cand.removed_components},
        "unmatched_area_fraction": float(areas[~matched].sum() / areas.sum()),
    }  # fmt: skip
    heat = ref.mesh.copy()
    colours, scale_doc = heat_colours(d, floor, _colour_limit(d, floor, threshold), units)
    heat.visual = trimesh.visual.ColorVisuals(heat, vertex_colors=colours)
    report["colour_scale"] = scale_doc
    report["seconds"] = round(time.perf_counter() - started, 3)
    logger.info(
        "compared: scale=%.4f rms=%.3g%s noise_floor=%.3g loss_max=%.3g in %.2fs",
        scale, report["alignment"]["rms"], units, floor, report["loss"]["max"], report["seconds"],
    )  # fmt: skip
    return CompareResult(mesh=heat, candidate=aligned, distance=d, report=report)


# -- surfaces ----------------------------------------------------------------------------------------------
def as_mesh(obj: trimesh.Trimesh | trimesh.Scene, name: str) -> trimesh.Trimesh:
    """One Trimesh from a mesh or a scene (geometry with its node transforms, concatenated)."""
    if isinstance(obj, trimesh.Scene):
        geometry = [g for g in obj.dump() if isinstance(g, trimesh.Trimesh)]
        if not geometry:
            raise InvalidParameter(name, "the scene holds no triangle mesh")
        obj = geometry[0] if len(geometry) == 1 else trimesh.util.concatenate(geometry)
    if not isinstance(obj, trimesh.Trimesh):
        raise InvalidParameter(name, f"expected a triangle mesh, got {type(obj).__name__}")
    if len(obj.faces) < 100 or not np.isfinite(obj.vertices).all():
        raise InvalidParameter(
            name, f"the mesh has {len(obj.faces)} faces (or non-finite vertices); need 100+"
        )
    return obj


def _surface(
    obj: trimesh.Trimesh | trimesh.Scene, name: str, samples: int, rng: np.random.Generator
) -> _Surface:
    mesh = as_mesh(obj, name)
    mesh, removed = _drop_floaters(mesh)
    if mesh.area <= 0 or float(np.ptp(mesh.vertices, axis=0).max()) <= 0:
        raise InvalidParameter(name, "the mesh has no area")
    triangles = np.asarray(mesh.vertices)[np.asarray(mesh.faces)]
    if np.einsum("ij,ij->i", triangles[:, 0], np.cross(triangles[:, 1], triangles[:, 2])).sum() < 0:
        mesh.invert()  # marching cubes and our fusion wind outward; a file may not
    points, normals, luminance = _sample(mesh, samples, rng)
    return _Surface(
        mesh=mesh, points=points, normals=normals, luminance=luminance, centroid=points.mean(axis=0),
        size=float(np.ptp(mesh.vertices, axis=0).max()), removed_components=removed,
    )  # fmt: skip


def _drop_floaters(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, int]:
    """Keep the components holding at least MIN_COMPONENT_AREA of the surface (TripoSR leaves floaters)."""
    n = len(mesh.vertices)
    faces = np.asarray(mesh.faces)
    rows, cols = faces[:, [0, 1]].ravel(), faces[:, [1, 2]].ravel()
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    face_label = labels[faces[:, 0]]
    area = np.bincount(face_label, weights=mesh.area_faces, minlength=count)
    keep = area >= MIN_COMPONENT_AREA * area.sum()
    used = np.bincount(faces.ravel(), minlength=n) > 0
    if keep.all() and used.all():
        return mesh.copy(), 0
    kept = keep[face_label]
    out = trimesh.Trimesh(mesh.vertices, faces[kept], process=False)
    if mesh.visual.kind == "vertex":
        out.visual.vertex_colors = np.asarray(mesh.visual.vertex_colors)
    out.remove_unreferenced_vertices()
    return out, int((area[np.unique(labels[used])] < MIN_COMPONENT_AREA * area.sum()).sum())


def _sample(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator):
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=int(rng.integers(1 << 31)))
    normals = np.asarray(mesh.face_normals)[faces]
    return np.asarray(points), normals, _face_luminance(mesh, faces)


def _face_luminance(mesh: trimesh.Trimesh, faces: np.ndarray) -> np.ndarray | None:
    """Mean sRGB luma (Rec. 709 weights, 0..1) of each sampled face's vertices; None without real colour."""
    if mesh.visual.kind != "vertex":
        return None
    rgb = np.asarray(mesh.visual.vertex_colors[:, :3], dtype=np.float64) / 255.0
    luma = rgb @ np.array([0.2126, 0.7152, 0.0722])
    value = luma[mesh.faces[faces]].mean(axis=1)
    return value if value.std() > 0.02 else None


def _vertex_areas(mesh: trimesh.Trimesh) -> np.ndarray:
    """A third of the area of every face around each vertex (the vertex's share of the surface)."""
    areas = np.zeros(len(mesh.vertices))
    np.add.at(areas, mesh.faces.ravel(), np.repeat(mesh.area_faces / 3.0, 3))
    return areas


def _subset(surface: _Surface, count: int) -> _Surface:
    """The first `count` samples (they are independent, so any prefix is a uniform sample too)."""
    lum = None if surface.luminance is None else surface.luminance[:count]
    return _Surface(surface.mesh, surface.points[:count], surface.normals[:count], lum, surface.centroid,
                    surface.size, surface.removed_components)  # fmt: skip


def _spread(points: np.ndarray) -> float:
    return float(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean())


# -- axis and turn -----------------------------------------------------------------------------------------
def _find_axis(surface: _Surface) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Unit axis of a near body of revolution, or None; plus what the check saw."""
    centred = surface.points - surface.centroid
    moments, vectors = np.linalg.eigh(centred.T @ centred / len(centred))
    info: dict[str, Any] = {"moments": [round(float(m / moments.sum()), 4) for m in moments]}
    gaps = [abs(moments[1] - moments[0]) / moments[1], abs(moments[2] - moments[1]) / moments[2]]
    pair = int(np.argmin(gaps))  # 0: the two smallest moments are equal, axis = largest; 1: axis = smallest
    odd = 2 if pair == 0 else 0
    pair_mean = moments[[0, 1]].mean() if pair == 0 else moments[[1, 2]].mean()
    separation = abs(moments[odd] - pair_mean) / pair_mean
    info.update(equal_pair_gap=round(float(gaps[pair]), 4), odd_separation=round(float(separation), 4))
    if gaps[pair] > 0.06 or separation < 0.15:
        info["symmetric"] = False
        return None, info
    axis = vectors[:, odd]
    frame = _wheel_frame(_canonical_axis(axis))
    local = centred @ frame
    r = np.hypot(local[:, 0], local[:, 1])
    theta = np.arctan2(local[:, 1], local[:, 0])
    # the outer radius must not depend on the angle: per (12 angle x 8 height) cell, the largest radius
    # against the mean of its row (a square box has two equal moments but fails this)
    t_bin = ((theta + np.pi) / (2 * np.pi) * 12).astype(int) % 12
    z = local[:, 2]
    z_bin = np.clip(((z - z.min()) / max(np.ptp(z), 1e-12) * 8).astype(int), 0, 7)
    cell = z_bin * 12 + t_bin
    counts = np.bincount(cell, minlength=96).reshape(8, 12)
    outer = np.zeros(96)
    np.maximum.at(outer, cell, r)
    outer = outer.reshape(8, 12)
    rows = counts.min(axis=1) >= 20
    occupancy = counts.sum(axis=0) / counts.sum() * 12  # 1.0 each when the surface is spread evenly
    if not rows.any():
        info["symmetric"] = False
        return None, info
    deviation = float(np.abs(outer - outer.mean(axis=1, keepdims=True))[rows].max() / r.max())
    info.update(radius_deviation=round(deviation, 4), occupancy_spread=round(float(np.ptp(occupancy)), 4))
    info["symmetric"] = bool(deviation < 0.03 and np.ptp(occupancy) < 0.3)
    return (axis if info["symmetric"] else None), info


def _canonical_axis(axis: np.ndarray) -> np.ndarray:
    """The axis' sign chosen so that its largest component is positive (documented convention)."""
    return axis if axis[np.argmax(np.abs(axis))] > 0 else -axis


def _wheel_frame(axis: np.ndarray) -> np.ndarray:
    """Columns e0, e90, axis: e0 = world X projected into the wheel plane (world Y when the axis lies within
    45 degrees of X), so that near-ties between world axes cannot swap angle 0."""
    axis = axis / np.linalg.norm(axis)
    world = np.eye(3)[0 if abs(axis[0]) < np.sqrt(0.5) else 1]
    e0 = world - axis * (world @ axis)
    e0 /= np.linalg.norm(e0)
    return np.stack([e0, np.cross(axis, e0), axis], axis=1)


def _rz(phi: float) -> np.ndarray:
    c, s = np.cos(phi), np.sin(phi)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _similarity(
    ref_frame, cand_frame, flip: np.ndarray, phi: float, scale: float, c_ref, c_cand
) -> np.ndarray:
    """4x4 candidate -> reference: into the candidate's wheel frame, flip, turn by phi, out of the
    reference's."""
    linear = scale * ref_frame @ _rz(phi) @ flip @ cand_frame.T
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = c_ref - linear @ c_cand
    return out


# proper: identity and the axis turned end for end (a 180-degree turn about e0); improper: their mirror images
_FLIPS = {
    "proper": (np.eye(3), np.diag([1.0, -1.0, -1.0])),
    "mirrored": (np.diag([1.0, -1.0, 1.0]), np.diag([1.0, 1.0, -1.0])),
}


def _turn_hypotheses(ref, cand, ref_frame, cand_frame, scale0, rng):
    """Starting poses from the circular correlation of the detail maps; raises for a mirror image."""
    ref_pts, ref_nrm, ref_lum = ref.points, ref.normals, ref.luminance
    cand_pts, cand_nrm, cand_lum = cand.points, cand.normals, cand.luminance
    ref_local = (ref_pts - ref.centroid) @ ref_frame
    r = np.hypot(ref_local[:, 0], ref_local[:, 1])
    ranges = {
        "r": (np.percentile(r, 0.5), np.percentile(r, 99.5)),
        "z": np.percentile(np.abs(ref_local[:, 2]), 99.5),
    }
    use_colour = ref_lum is not None and cand_lum is not None
    ref_maps = _detail_maps(ref_local, ref_nrm @ ref_frame, ref_lum if use_colour else None, ranges)
    cand_local = scale0 * (cand_pts - cand.centroid) @ cand_frame
    cand_normals = cand_nrm @ cand_frame
    results = {}
    for kind, flips in _FLIPS.items():
        for index, flip in enumerate(flips):
            maps = _detail_maps(
                cand_local @ flip.T, cand_normals @ flip.T, cand_lum if use_colour else None, ranges
            )
            curve = _correlation(ref_maps, maps)
            results[(kind, index)] = (curve, *_peak(curve))
    proper = max((results[("proper", i)] for i in (0, 1)), key=lambda x: x[2])
    mirrored = max((results[("mirrored", i)] for i in (0, 1)), key=lambda x: x[2])
    if mirrored[2] > proper[2] + MIRROR_MARGIN and mirrored[2] - mirrored[3] > TURN_MIN_MARGIN:
        raise CompareError(
            "not comparable: the candidate matches the reference's mirror image (detail correlation "
            f"{mirrored[2]:.2f} mirrored vs {proper[2]:.2f} as is); check the video's orientation"
        )
    turn = {
        "turn_determined": bool(proper[2] >= TURN_MIN_PEAK and proper[2] - proper[3] >= TURN_MIN_MARGIN),
        "turn_peak": round(float(proper[2]), 4),
        "turn_second_peak": round(float(proper[3]), 4),
        "colour_used": use_colour,
    }
    # both ends of the axis when the detail cannot tell them apart: ICP's cost decides
    ranked = sorted((results[("proper", i)] + (i,) for i in (0, 1)), key=lambda x: -x[2])
    keep = ranked if ranked[0][2] - ranked[1][2] < TURN_MIN_MARGIN else ranked[:1]
    starts = [
        _similarity(ref_frame, cand_frame, _FLIPS["proper"][i], phi, scale0, ref.centroid, cand.centroid)
        for _, phi, _, _, i in keep
    ]
    return starts, turn


def _detail_maps(
    local: np.ndarray, normals: np.ndarray, luminance: np.ndarray | None, ranges
) -> list[np.ndarray]:
    """Angle x height maps of the surface detail in a wheel frame, each row minus its mean around the wheel.

    Tread (outer faces, normal mostly radial): radius per (angle, height). Sidewalls (normal mostly along the
    axis, one map per side): height per (angle, radius). Luminance the same way when given.
    """
    r = np.hypot(local[:, 0], local[:, 1])
    theta = np.arctan2(local[:, 1], local[:, 0]) % (2 * np.pi)
    t_bin = np.minimum((theta / (2 * np.pi) * THETA_BINS).astype(int), THETA_BINS - 1)
    r_lo, r_hi = ranges["r"]
    z_max = ranges["z"]
    nz = normals[:, 2]
    groups = [
        ((np.abs(nz) < 0.5) & (r > 0.5 * (r_lo + r_hi)), (local[:, 2] + z_max) / (2 * z_max), r, 24),
        (nz > 0.5, (r - r_lo) / (r_hi - r_lo), local[:, 2], 16),
        (nz < -0.5, (r - r_lo) / (r_hi - r_lo), -local[:, 2], 16),
    ]
    maps = []
    values_list = [0] if luminance is None else [0, 1]
    for which in values_list:
        for mask, position, value, rows in groups:
            row = np.clip((position[mask] * rows).astype(int), 0, rows - 1)
            cell = row * THETA_BINS + t_bin[mask]
            v = value[mask] if which == 0 else luminance[mask]
            count = np.bincount(cell, minlength=rows * THETA_BINS).reshape(rows, THETA_BINS)
            total = np.bincount(cell, weights=v, minlength=rows * THETA_BINS).reshape(rows, THETA_BINS)
            filled = count > 0
            mean = np.where(filled, total / np.maximum(count, 1), 0.0)
            row_mean = (mean * filled).sum(axis=1, keepdims=True) / np.maximum(
                filled.sum(axis=1, keepdims=True), 1
            )
            # rows seen in under half the angles carry no reliable detail
            good = filled.mean(axis=1, keepdims=True) > 0.5
            maps.append(np.where(filled & good, mean - row_mean, 0.0))
    return maps


def _correlation(ref_maps: list[np.ndarray], cand_maps: list[np.ndarray]) -> np.ndarray:
    """Normalised circular cross-correlation over the turn phi (THETA_BINS values): geometry and colour
    averaged. curve[k] compares ref(theta) with cand(theta - k degrees)."""
    curves = []
    for part in range(len(ref_maps) // 3):  # 3 geometry maps, then 3 luminance maps when colour is used
        a = np.concatenate(ref_maps[part * 3 : part * 3 + 3])
        b = np.concatenate(cand_maps[part * 3 : part * 3 + 3])
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        spectrum = np.fft.rfft(a, axis=1) * np.conj(np.fft.rfft(b, axis=1))
        curve = np.fft.irfft(spectrum, n=THETA_BINS, axis=1).sum(axis=0)
        curves.append(curve / norm if norm > 0 else np.zeros(THETA_BINS))
    return np.mean(curves, axis=0)


def _peak(curve: np.ndarray) -> tuple[float, float, float]:
    """(turn in radians, peak value, best value more than 12 degrees away from the peak)."""
    k = int(np.argmax(curve))
    left, right = curve[(k - 1) % len(curve)], curve[(k + 1) % len(curve)]
    denominator = left - 2 * curve[k] + right
    offset = 0.5 * (left - right) / denominator if denominator < 0 else 0.0
    away = np.abs((np.arange(len(curve)) - k + len(curve) // 2) % len(curve) - len(curve) // 2) > 12
    second = float(curve[away].max())
    return (k + offset) * 2 * np.pi / len(curve), float(curve[k]), second


def _turn_of(matrix: np.ndarray, ref_frame: np.ndarray, cand_frame: np.ndarray) -> float:
    """Where the candidate's angle 0 lands in the reference's wheel frame, in degrees (-180, 180]."""
    linear = matrix[:3, :3] / np.cbrt(np.linalg.det(matrix[:3, :3]))
    direction = ref_frame.T @ linear @ cand_frame[:, 0]
    return float(np.degrees(np.arctan2(direction[1], direction[0])))


def _frame_hypotheses(ref: _Surface, cand: _Surface, scale0: float) -> list[np.ndarray]:
    """Objects without an axis: the 24 proper turns between the principal frames, ranked by a short ICP;
    raises when a mirror image fits clearly better."""
    frames = []
    for surface in (ref, cand):
        centred = surface.points - surface.centroid
        _, vectors = np.linalg.eigh(centred.T @ centred)
        if np.linalg.det(vectors) < 0:
            vectors[:, 0] *= -1
        frames.append(vectors)
    turns = Rotation.create_group("O").as_matrix()  # the cube's 24 rotations
    sub, cand_sub = _subset(ref, 3000), _subset(cand, 5000)
    neighbours = cKDTree(sub.points).query(sub.points, k=8)[1]
    scored: dict[str, list[tuple[float, np.ndarray]]] = {"proper": [], "mirrored": []}
    for kind, sign in (("proper", 1.0), ("mirrored", -1.0)):
        for turn in turns:
            start = _similarity(frames[0], frames[1], sign * turn, 0.0, scale0, ref.centroid, cand.centroid)
            fit = _robust_icp(sub, cand_sub, start, neighbours, ref.size, iterations=8)
            scored[kind].append((fit["cost"], start))
    best_proper = min(c for c, _ in scored["proper"])
    best_mirrored = min(c for c, _ in scored["mirrored"])
    if best_mirrored < 0.6 * best_proper:
        raise CompareError(
            "not comparable: the candidate fits the reference's mirror image far better "
            f"(median distance {best_mirrored / ref.size:.2%} vs {best_proper / ref.size:.2%} of the size)"
        )
    return [m for _, m in sorted(scored["proper"], key=lambda x: x[0])[:3]]


# -- robust ICP --------------------------------------------------------------------------------------------
def _band_depth(points: np.ndarray, frame: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Depth below the outer radius as a share of the radial span (0 on the tread, ~1 at the bead)."""
    local = (points - centre) @ frame
    r = np.hypot(local[:, 0], local[:, 1])
    r_in, r_out = np.percentile(r, [0.5, 99.5])
    return (r_out - r) / max(r_out - r_in, 1e-12)


def _band_prior(points: np.ndarray, frame: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Alignment weight per sample of a tyre: the tread is where rubber goes, so a uniformly worn tread must
    not pull the scale (it covers ~40% of the surface, as much as the sidewalls): sidewalls and bead 1,
    shoulder 0.3, tread 0.05."""
    depth = _band_depth(points, frame, centre)
    return np.where(depth >= BANDS["sidewall"][0], 1.0, np.where(depth >= BANDS["shoulder"][0], 0.3, 0.05))


def _tukey(x: np.ndarray, c: float) -> np.ndarray:
    u = np.clip(np.abs(x) / c, 0.0, 1.0)
    return (1.0 - u**2) ** 2


def _robust_icp(
    ref,
    cand,
    start: np.ndarray,
    neighbours: np.ndarray,
    size: float,
    iterations: int = ICP_ITERATIONS,
    anneal_from: int = 0,
):
    """Point-to-plane similarity ICP; reference samples are the fixed side. Returns the fit as a dict."""
    matrix = start.copy()
    points, normals = ref.points, ref.normals
    floor = 2e-4 * size  # below this the weights would chase float noise
    weights = np.ones(len(points))
    residual = np.zeros(len(points))
    done = 0
    for done in range(1, iterations + 1):
        moved = cand.points @ matrix[:3, :3].T + matrix[:3, 3]
        turned = cand.normals @ (matrix[:3, :3] / np.cbrt(np.linalg.det(matrix[:3, :3]))).T
        residual, distance = _signed_distance(points, normals, moved, turned, k=8)
        target = points + residual[:, None] * normals  # the candidate's surface along each normal
        local = residual[neighbours].mean(axis=1)
        raw_sigma = max(1.4826 * np.median(np.abs(residual - np.median(residual))), floor)
        # The noise of a neighbourhood mean, from the high-frequency part of the residual (which systematic
        # change does not carry), bounds the biweight's width; the spread of the means anneals down to it.
        noise = 1.4826 * np.median(np.abs(residual - local)) / np.sqrt(neighbours.shape[1])
        spread = 1.4826 * np.median(np.abs(local - np.median(local))) * ANNEAL ** (anneal_from + done)
        local_c = 4.685 * max(LOCAL_NOISE_FACTOR * noise, spread, floor / 3)
        gate = distance < max(MATCH_GATE * size, 6 * raw_sigma)
        weights = (
            _tukey(residual - np.median(residual), 4.685 * raw_sigma)
            * _tukey(local - np.median(local), local_c)
            * gate
            * ref.prior
        )
        if weights.sum() < 0.05 * len(points):
            break
        centre = (weights[:, None] * target).sum(axis=0) / weights.sum()
        v = target - centre
        jacobian = np.hstack([np.cross(v, normals), normals, np.einsum("ij,ij->i", normals, v)[:, None]])
        weighted = jacobian * weights[:, None]
        hessian = weighted.T @ jacobian + np.eye(7) * 1e-12 * size**2 * weights.sum()
        step = -np.linalg.solve(hessian, weighted.T @ residual)
        small = (
            np.linalg.norm(step[:3]) < 1e-5
            and abs(step[6]) < 1e-6
            and np.linalg.norm(step[3:6]) < 1e-5 * size
        )
        rotation = Rotation.from_rotvec(step[:3]).as_matrix()
        update = np.eye(4)
        update[:3, :3] = (1.0 + step[6]) * rotation
        update[:3, 3] = centre + step[3:6] - update[:3, :3] @ centre
        matrix = update @ matrix
        if small and done >= 5:
            break
    inliers = weights > 0
    rms = float(np.sqrt(np.mean(residual[inliers] ** 2))) if inliers.any() else float("inf")
    moved = cand.points @ matrix[:3, :3].T + matrix[:3, 3]
    cost = float(np.median(cKDTree(moved).query(points, workers=-1)[0]))
    return {"matrix": matrix, "rms": rms, "cost": cost, "inliers": float(inliers.mean()), "iterations": done}


# -- distances ---------------------------------------------------------------------------------------------
def _signed_distance(
    vertices: np.ndarray,
    normals: np.ndarray,
    surface: np.ndarray,
    surface_normals: np.ndarray | None = None,
    k: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance along each vertex's (smoothed) normal to the surface sampled by `surface` points
    (positive: the surface lies outside, i.e. gain), and the distance to the nearest point.

    The k nearest samples are weighted by their distance *across* the normal only (Gaussian, sigma = the
    samples' spacing): weighting by 3-d distance would favour noisy samples displaced towards the vertex and
    shrink every real change. Each sample stands for the plane through it normal to `surface_normals` (its
    face's normal: exact on coarse meshes, used by the fit) or, without them, to the vertex's own smoothed
    normal (less noise from the tilt of noisy faces, used for the reported distances).
    """
    distance, index = cKDTree(surface).query(vertices, k=k, workers=-1)
    offset = surface[index] - vertices[:, None, :]  # (N, k, 3)
    if surface_normals is None:
        face_normal = np.broadcast_to(normals[:, None, :], offset.shape)
    else:
        face_normal = surface_normals[index]  # (N, k, 3)
    facing = np.einsum("ijk,ik->ij", face_normal, normals)  # cos of the angle between the two normals
    along = np.einsum("ijk,ijk->ij", offset, face_normal) / np.where(facing > 0.3, facing, 1.0)
    across2 = np.maximum((offset**2).sum(axis=2) - np.einsum("ijk,ik->ij", offset, normals) ** 2, 0.0)
    spacing2 = np.median(distance[:, 1] ** 2) + 1e-300  # typical squared spacing of the surface points
    weight = np.exp(-0.5 * across2 / (ACROSS_SIGMA**2 * spacing2)) * (facing > 0.3)  # turned away: other side
    weight[weight.sum(axis=1) == 0, 0] = 1e-300
    return (weight * along).sum(axis=1) / weight.sum(axis=1), distance[:, 0]


def _check_match(ref: _Surface, aligned: trimesh.Trimesh, nearest: np.ndarray, size: float) -> None:
    """Different objects leave large distances after the best alignment, one way or the other."""
    back = cKDTree(np.asarray(ref.mesh.vertices)).query(np.asarray(aligned.vertices), workers=-1)[0]
    for name, d in (("reference", nearest), ("candidate", back)):
        median = float(np.median(d)) / size
        share = float(np.mean(d <= MATCH_GATE * size))
        if median > MATCH_MEDIAN or share < MATCH_SHARE:
            raise CompareError(
                f"not comparable: after the best alignment the {name}'s median distance to the other surface "
                f"is {median:.2%} of the size and {share:.0%} of it lies within {MATCH_GATE:.0%} "
                f"(same object: under {MATCH_MEDIAN:.0%} and over {MATCH_SHARE:.0%})"
            )


class _Smoother:
    """Smoothing along the surface: repeated area-weighted averaging over each vertex's 1-ring (itself
    included), as many steps as make a Gaussian of sigma radius/2 at this mesh's edge length.

    One step spreads a value by about 0.43 edge^2 of variance per axis, so n = (radius/2)^2 / (0.43 edge^2)
    (3 steps at mc 256 on a 0.72 m tyre). Following edges, not space, keeps both faces of a thin wall apart.
    """

    def __init__(self, mesh: trimesh.Trimesh, areas: np.ndarray, radius: float) -> None:
        faces = np.asarray(mesh.faces)
        n = len(mesh.vertices)
        rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
        cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
        graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
        graph.data[:] = 1.0  # duplicates (an edge shared by two faces) count once
        self.operator = (graph + identity(n, format="csr")) @ diags(areas)
        vertices = np.asarray(mesh.vertices)
        edge = float(np.median(np.linalg.norm(vertices[faces[:, 0]] - vertices[faces[:, 1]], axis=1)))
        self.steps = int(np.clip(np.ceil((radius / 2) ** 2 / (0.43 * max(edge, 1e-12) ** 2)), 1, 200))
        self.mesh, self.areas = mesh, areas

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Smoothed values (V,) or (V, C); NaN entries are left out, and stay NaN where no valid value is
        near."""
        valid = np.isfinite(values)
        value = np.where(valid, values, 0.0)
        weight = valid.astype(np.float64)
        for _ in range(self.steps):
            value, weight = self.operator @ (value * 1.0), self.operator @ weight
            scale = np.where(weight > 0, 1.0 / np.maximum(weight, 1e-300), 0.0)
            value, weight = value * scale, (weight > 0).astype(np.float64)
        return np.where(weight > 0, value, np.nan)

    def normals(self) -> np.ndarray:
        """Area-weighted vertex normals, smoothed the same way, unit length."""
        faces = np.asarray(self.mesh.faces)
        face_normals = np.asarray(self.mesh.face_normals) * np.asarray(self.mesh.area_faces)[:, None]
        normals = np.zeros((len(self.mesh.vertices), 3))
        for corner in range(3):
            np.add.at(normals, faces[:, corner], face_normals)
        normals = self(normals / np.maximum(self.areas, 1e-300)[:, None])
        return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)


def _robust_sigma(values: np.ndarray, areas: np.ndarray) -> float:
    """Sigma of the unchanged part: MAD start, then the RMS within +-2.5 sigma, corrected for the truncation
    (a Gaussian cut at 2.5 sigma keeps 95.5% of its standard deviation), iterated."""
    ok = np.isfinite(values)
    v, w = values[ok], areas[ok]
    sigma = 1.4826 * _weighted_quantile(np.abs(v), w, 0.5)
    for _ in range(8):
        inside = np.abs(v) <= 2.5 * sigma
        if not inside.any():
            break
        sigma = float(np.sqrt(np.average(v[inside] ** 2, weights=w[inside])) / 0.9546)
    return max(sigma, 1e-12)


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][min(np.searchsorted(cumulative, q * cumulative[-1]), len(values) - 1)])


# -- report ------------------------------------------------------------------------------------------------
def _report(
    d, areas, vertices, axis_frame, *, floor, threshold, units, area_units, alignment
) -> dict[str, Any]:
    ok = np.isfinite(d)
    total_area = areas[ok].sum()
    area_name, area_factor = area_units

    def side(values: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
        over = values > threshold
        return {
            "max": float(values.max()) if len(values) else 0.0,
            "mean": float(np.average(values[over], weights=weights[over])) if over.any() else 0.0,
            "area": float(weights[over].sum() * area_factor),
            "area_fraction": float(weights[over].sum() / total_area),
            "noise_floor": floor,
        }

    def group(mask: np.ndarray) -> dict[str, Any]:
        mask = mask & ok
        loss = np.maximum(-d[mask], 0.0)
        w = areas[mask]
        if not mask.any():
            return {"mean_loss": None, "max_loss": None, "area_fraction_over_threshold": None}
        return {
            # net: the mean of -distance, so noise cancels instead of piling up as false loss (a sector
            # that picked up rubber reads negative)
            "mean_loss": float(-np.average(d[mask], weights=w)),
            "max_loss": float(loss.max()),
            "area_fraction_over_threshold": float(w[loss > threshold].sum() / w.sum()),
        }

    values, weights = d[ok], areas[ok]
    report: dict[str, Any] = {
        "units": units,
        "area_units": area_name,
        "threshold": float(threshold),
        "noise_floor": float(floor),
        "alignment": alignment,
        "distance": {
            "mean": float(np.average(values, weights=weights)),
            **{f"p{q:02d}": _weighted_quantile(values, weights, q / 100) for q in (5, 50, 95)},
            "noise_floor": floor,
        },
        "loss": side(np.maximum(-values, 0.0), weights),
        "gain": side(np.maximum(values, 0.0), weights),
        "sectors": None,
        "bands": None,
    }
    if axis_frame is None:
        return report
    frame, centre = axis_frame
    local = (vertices - centre) @ frame
    r = np.hypot(local[:, 0], local[:, 1])
    r_in, r_out = np.percentile(r, [0.5, 99.5])
    depth = _band_depth(vertices, frame, centre)
    bands = {}
    for name, (lo, hi) in BANDS.items():
        mask = (depth >= lo) & (depth < hi) if lo > 0 else depth < hi
        bands[name] = {
            **group(mask),
            "area_fraction": float(areas[mask & ok].sum() / total_area),
            "noise_floor": floor,
        }
    tread = depth < BANDS["tread"][1]
    angle = np.degrees(np.arctan2(local[:, 1], local[:, 0])) % 360.0
    index = np.minimum((angle / (360 / SECTORS)).astype(int), SECTORS - 1)
    report["sectors"] = [
        {
            "index": i,
            "start_deg": i * 360 // SECTORS,
            "end_deg": (i + 1) * 360 // SECTORS,
            **group(tread & (index == i)),
        }
        for i in range(SECTORS)
    ]
    report["sector_frame"] = {
        "band": "tread",
        "angle_zero": "reference X projected into the wheel plane (Y if the axis is within 45 deg of X)",
        "direction": "counter-clockwise seen from the tip of `alignment.axis` (right-handed about it)",
        "zero_direction": [float(x) for x in frame[:, 0]],
        "noise_floor": floor,
    }
    report["bands"] = bands
    report["band_radii"] = {
        "inner": float(r_in), "outer": float(r_out), "tread_below": BANDS["tread"][1],
        "shoulder_below": BANDS["shoulder"][1], "units": "reference coordinates",
    }  # fmt: skip
    return report


# -- colours -----------------------------------------------------------------------------------------------
_LAB_BLUE = np.array([42.0, 18.0, -62.0])  # loss end; equal lightness and similar chroma to the gain end
_LAB_RED = np.array([42.0, 62.0, 46.0])
_LAB_WHITE = np.array([100.0, 0.0, 0.0])


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> sRGB in [0, 1], clipped to the gamut."""
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    fy = (L + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200

    def f_inv(t):
        return np.where(t > 6 / 29, t**3, 3 * (6 / 29) ** 2 * (t - 4 / 29))

    xyz = np.stack([0.95047 * f_inv(fx), f_inv(fy), 1.08883 * f_inv(fz)], axis=-1)
    m = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])
    linear = np.clip(xyz @ m.T, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def _colour_limit(d: np.ndarray, floor: float, threshold: float) -> float:
    finite = np.abs(d[np.isfinite(d)])
    return float(max(np.percentile(finite, 99.5) if len(finite) else 0.0, 2 * floor, 2 * threshold))


def _hex(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(c * 255 + 0.5):02x}" for c in rgb)


def heat_colours(d: np.ndarray, floor: float, limit: float, units: str) -> tuple[np.ndarray, dict[str, Any]]:
    """sRGB uint8 RGBA per value: white within +-floor, then linear in CIELAB to blue (loss) / red (gain) at
    +-limit; NaN (no counterpart) mid grey. Returns the colours and the scale's description with 11 stops."""

    def colour(values: np.ndarray) -> np.ndarray:
        t = np.clip((np.abs(values) - floor) / max(limit - floor, 1e-12), 0.0, 1.0)[..., None]
        end = np.where(values[..., None] < 0, _LAB_BLUE, _LAB_RED)
        return _lab_to_srgb(_LAB_WHITE + t * (end - _LAB_WHITE))

    values = np.nan_to_num(d, nan=0.0)
    rgb = (colour(values) * 255 + 0.5).astype(np.uint8)
    rgb[~np.isfinite(d)] = 128
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    stops = np.linspace(-limit, limit, 11)
    scale = {
        "colormap": "diverging, linear in CIELAB: blue (loss) - white - red (gain)",
        "units": units,
        "min": -limit,
        "max": limit,
        "white_within": floor,
        "no_counterpart": "#808080",
        "stops": [[float(v), _hex(colour(np.array([v]))[0])] for v in stops],
    }  # fmt: skip
    return rgba, scale
