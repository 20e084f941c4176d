"""Cleaning and alignment of per-frame TripoSR meshes (pure numpy/scipy/trimesh, no Ray).

Each TripoSR reconstruction sits in its own view-centred frame (Z up, camera on +X), so frames of an orbiting
phone differ mostly by a turn about Z, a small tilt (camera height changes), a shift, and a uniform scale
(TripoSR resizes every crop so the object fills the same share of the image). This module:

* `clean_mesh`: drops non-finite vertices and floaters (small connected components), centres the surface on
  its area-weighted centroid and records its RMS radius (the scale) and surface samples with normals.
* `align_to_reference`: coarse search over the turn about Z (plus a small tilt grid), then point-to-plane ICP
  with a proper rotation (never a reflection) and a uniform scale, from the best few starts. It also reports
  whether a clearly different turn fits as well (`turn_ambiguous`, a paired test on the same points): true for
  rotationally symmetric shapes (a torus, a plain tyre lying flat), whose turn cannot be observed.

All costs are in units of the reference's RMS radius, so thresholds do not depend on mesh units. Left out:
non-rigid deformation and a global multi-frame optimisation (each frame is aligned to one reference).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import trimesh
from scipy import sparse
from scipy.spatial import cKDTree

logger = logging.getLogger(__name__)

# Surface samples per frame used for alignment: enough for sub-degree turns on the test shapes, cheap to query
# (measured on the 2-core dev box: one KD query of 1000 points against 8000 samples costs ~1.5 ms CPU).
N_TARGET_SAMPLES = 8000
N_SOURCE_SAMPLES = 1000
N_AZIMUTH_BINS = 180  # 2-degree bins for the coarse turn search
TILT_GRID_DEG = (-6.0, 0.0, 6.0)
TILT_SAMPLES = 400  # source points used to rank the tilt grid
N_STARTS = 3  # distinct coarse peaks refined by ICP
# cap on a single residual (fraction of RMS radius), so stray points cannot dominate a cost
DISTANCE_CAP = 0.25
ICP_ITERATIONS = 60  # per start; converges in 10-40
SCALE_LIMITS = (0.8, 1.25)  # ICP may correct the RMS-radius scale by at most this factor
# paired t below which a different turn fits "as well" (measured: torus <= 3.2, marked tyre >= 17)
AMBIGUITY_T = 6.0
AMBIGUITY_MIN_DEG = 15.0  # ... if it lies at least this far from the best turn


@dataclass
class CleanMesh:
    """One frame after cleaning. `mesh` is centred (centroid removed), in the input's units."""

    index: int
    mesh: trimesh.Trimesh
    centroid: np.ndarray  # (3,) float, removed translation, input units
    rms_radius: float  # area-weighted RMS distance of the surface from the centroid, input units
    samples: np.ndarray  # (n, 3) float, area-weighted samples of the centred, smoothed surface
    normals: np.ndarray  # (n, 3) float, unit face normals of the smoothed surface at the samples
    info: dict = field(default_factory=dict)  # report entries (JSON-able)


@dataclass
class Alignment:
    """Similarity transform of a cleaned (centred) frame onto the cleaned reference."""

    matrix: np.ndarray  # (4, 4) float: rotation (det +1) * scale, translation in reference units
    cost: float  # mean squared capped point-to-plane residual, (fraction of RMS radius)^2
    error: float  # symmetric mean surface distance, fraction of the reference RMS radius
    turn_deg: float  # turn about Z in (-180, 180]
    tilt_deg: float  # angle between the frame's up axis and the reference's after alignment
    scale: float  # applied uniform scale
    turn_ambiguous: bool  # a clearly different turn fits about as well
    alternative_turn_deg: float | None  # the best clearly different turn tried, if any
    turn_confidence: (
        float | None
    )  # paired t-statistic of that turn's extra cost (large = turn well determined)


def sample_surface(
    mesh: trimesh.Trimesh, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted surface samples: (count, 3) points and (count,) face indices. Vectorised, seeded."""
    areas = mesh.area_faces
    cdf = np.cumsum(areas)
    face = np.searchsorted(cdf, rng.uniform(0.0, cdf[-1], count), side="right")
    face = np.minimum(face, len(areas) - 1)
    tri = mesh.triangles[face]  # (count, 3, 3)
    u, v = rng.uniform(size=(2, count))
    flip = u + v > 1.0
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    points = tri[:, 0] + u[:, None] * (tri[:, 1] - tri[:, 0]) + v[:, None] * (tri[:, 2] - tri[:, 0])
    return points, face


def clean_mesh(
    mesh: trimesh.Trimesh | None, index: int, *, min_component_fraction: float = 0.1, seed: int = 0
) -> tuple[CleanMesh | None, dict]:
    """Clean one frame mesh; return (CleanMesh or None when unusable, JSON-able info with `reason`).

    Steps: drop faces touching non-finite vertices; weld; keep connected components whose area is at least
    `min_component_fraction` of the largest (floaters go); make the winding outward when the mesh is closed;
    centre on the area-weighted centroid; record the RMS radius.
    """
    info: dict = {
        "index": index,
        "faces_in": 0,
        "faces_clean": 0,
        "non_finite_vertices": 0,
        "dropped_components": 0,
        "reason": None,
    }
    if mesh is None or not hasattr(mesh, "vertices") or len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        info["reason"] = "empty"
        return None, info
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    info["faces_in"] = len(faces)
    finite = np.isfinite(vertices).all(axis=1)
    info["non_finite_vertices"] = int((~finite).sum())
    colours = None
    if mesh.visual.kind == "vertex":
        colours = np.asarray(mesh.visual.vertex_colors, dtype=np.uint8)
    if not finite.all():
        keep_faces = finite[faces].all(axis=1)
        faces = faces[keep_faces]
        vertices = np.where(finite[:, None], vertices, 0.0)  # unreferenced after the face filter
        if len(faces) == 0:
            info["reason"] = "non_finite"
            return None, info
    work = trimesh.Trimesh(vertices, faces, vertex_colors=colours, process=True, validate=False)
    work.remove_unreferenced_vertices()
    if len(work.faces) == 0 or work.area <= 1e-12:
        info["reason"] = "degenerate"
        return None, info

    work, dropped = main_components(work, min_component_fraction)
    info["dropped_components"] = dropped
    if _signed_volume(work) < 0:  # inside-out (TripoSR winds outward; other sources may not)
        work.invert()

    rng = np.random.default_rng(seed + index)
    smooth = _smoothed(work)  # alignment works on a denoised copy; fusion uses the real surface
    points, face_idx = sample_surface(smooth, N_TARGET_SAMPLES, rng)
    centroid = points.mean(axis=0)
    points = points - centroid
    rms = float(np.sqrt((points**2).sum(axis=1).mean()))
    if not np.isfinite(rms) or rms <= 1e-9:
        info["reason"] = "degenerate"
        return None, info
    work.apply_translation(-centroid)
    info["faces_clean"] = len(work.faces)
    info["rms_radius"] = rms
    clean = CleanMesh(index, work, centroid, rms, points, smooth.face_normals[face_idx], info)
    return clean, info


def _smoothed(mesh: trimesh.Trimesh, iterations: int = 10) -> trimesh.Trimesh:
    """Taubin-smoothed copy of the geometry (no colours), for alignment samples and normals.

    Per-vertex noise makes raw face normals point anywhere, and point-to-plane residuals along such normals
    bias the rotation (measured: 1-3 degrees on noisy blobs with raw normals, under 1.2 with smoothed ones).
    Sample positions from the smoothed surface also keep vertex noise from outweighing small features such as
    a sidewall logo (measured: a tread-pitch slip in 2 of 5 harsh tyre cases with raw positions, none after).
    """
    smooth = trimesh.Trimesh(mesh.vertices.copy(), mesh.faces, process=False)
    trimesh.smoothing.filter_taubin(smooth, iterations=iterations)
    return smooth


def _signed_volume(mesh: trimesh.Trimesh) -> float:
    """Signed enclosed volume (divergence theorem); positive for outward winding. ~100x cheaper than trimesh's
    full mass properties on 100k faces. Only meaningful for (nearly) closed meshes."""
    tri = mesh.triangles
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def main_components(mesh: trimesh.Trimesh, min_fraction: float) -> tuple[trimesh.Trimesh, int]:
    """Keep connected components (by shared vertices) with area >= min_fraction * largest; return (mesh,
    dropped)."""
    faces = mesh.faces
    n = len(mesh.vertices)
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    graph = sparse.coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    n_comp, labels = sparse.csgraph.connected_components(graph, directed=False)
    if n_comp <= 1:
        return mesh, 0
    face_label = labels[faces[:, 0]]
    comp_area = np.bincount(face_label, weights=mesh.area_faces, minlength=n_comp)
    used = np.unique(face_label)
    keep = comp_area >= min_fraction * comp_area.max()
    dropped = int(len(used) - keep[used].sum())
    if dropped == 0:
        return mesh, 0
    out = mesh.copy()
    out.update_faces(keep[face_label])
    out.remove_unreferenced_vertices()
    return out, dropped


def shape_descriptor(clean: CleanMesh) -> np.ndarray:
    """Turn-invariant descriptor: normalised 2-D histogram of (radius from the Z axis, height) / RMS
    radius."""
    p = clean.samples / clean.rms_radius
    r = np.hypot(p[:, 0], p[:, 1])
    hist, _, _ = np.histogram2d(r, p[:, 2], bins=(12, 12), range=((0.0, 2.0), (-1.6, 1.6)))
    return (hist / max(hist.sum(), 1.0)).ravel()


def shape_outliers(cleans: list[CleanMesh]) -> tuple[int, list[bool]]:
    """(medoid position, per-frame "shape is an outlier" flags) from turn-invariant descriptors (L1).

    The medoid is the frame closest to all others. A frame is an outlier when its distance to the medoid is
    above median + 4 * 1.4826 * MAD and above twice the median (needs 3+ frames). Used to keep a corrupted but
    high-scoring frame from becoming the reference; rejection itself is decided on alignment error.
    """
    desc = np.stack([shape_descriptor(c) for c in cleans])
    dist = np.abs(desc[:, None, :] - desc[None, :, :]).sum(axis=2)
    medoid = int(np.argmin(dist.sum(axis=1)))
    if len(cleans) < 3:
        return medoid, [False] * len(cleans)
    to_medoid = dist[medoid]
    others = np.delete(to_medoid, medoid)
    med = float(np.median(others))
    mad = float(np.median(np.abs(others - med)))
    limit = max(med + 4.0 * 1.4826 * mad, 2.0 * med)
    return medoid, [bool(d > limit) for d in to_medoid]


# --- geometry helpers ---------------------------------------------------------------------------------------


def _rot_z(rad: float) -> np.ndarray:
    c, s = np.cos(rad), np.sin(rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(rad: float) -> np.ndarray:
    c, s = np.cos(rad), np.sin(rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(rad: float) -> np.ndarray:
    c, s = np.cos(rad), np.sin(rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rodrigues(omega: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector omega (always a proper rotation, det +1)."""
    theta = float(np.linalg.norm(omega))
    if theta < 1e-12:
        return np.eye(3)
    k = omega / theta
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(theta) * kx + (1.0 - np.cos(theta)) * (kx @ kx)


def turn_and_tilt_deg(rotation: np.ndarray) -> tuple[float, float]:
    """(turn about Z, tilt of the up axis) of a 3x3 rotation, degrees; turn from the rotated X axis
    heading."""
    up = rotation @ np.array([0.0, 0.0, 1.0])
    tilt = float(np.rad2deg(np.arccos(np.clip(up[2], -1.0, 1.0))))
    turn = float(np.rad2deg(np.arctan2(rotation[1, 0] - rotation[0, 1], rotation[0, 0] + rotation[1, 1])))
    return turn, tilt


class _Target:
    """Reference surface (normalised to unit RMS radius) as a KD-tree of samples with normals."""

    def __init__(self, clean: CleanMesh) -> None:
        self.points = clean.samples / clean.rms_radius
        self.normals = clean.normals
        self.tree = cKDTree(self.points)
        self.profile_spectrum = np.fft.rfft(azimuth_profile(self.points), axis=0)

    def residuals(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point-to-plane residuals (signed) of pts against the nearest sample's tangent plane, and
        indices."""
        _, idx = self.tree.query(pts)
        res = np.einsum("ij,ij->i", pts - self.points[idx], self.normals[idx])
        return res, idx

    def cost(self, pts: np.ndarray) -> float:
        res, _ = self.residuals(pts)
        return float(np.mean(np.minimum(np.abs(res), DISTANCE_CAP) ** 2))


def _icp(
    src: np.ndarray,
    target: _Target,
    rotation: np.ndarray,
    scale: float,
    translation: np.ndarray,
    iterations: int,
):
    """Point-to-plane ICP for a similarity (proper rotation, uniform scale, translation), trimmed and damped.

    Solves the linearised 7-parameter least squares each iteration; the rotation update goes through
    Rodrigues' formula so it is always a rotation (no reflection can appear). The small damping leaves
    directions the data cannot constrain (the turn of a symmetric shape) where they started instead of
    inventing a value.
    """
    r, s, t = rotation.copy(), float(scale), translation.copy()
    for _ in range(iterations):
        pts = s * (src @ r.T) + t
        res, idx = target.residuals(pts)
        a = np.abs(res)
        keep = a <= max(3.0 * np.median(a), 1e-4)
        keep &= a < DISTANCE_CAP
        if keep.sum() < 20:
            break
        p, n, b = pts[keep], target.normals[idx[keep]], -res[keep]
        # unknowns: omega (3), dt (3), ds (relative scale change) (1)
        jac = np.concatenate([np.cross(p, n), n, np.einsum("ij,ij->i", p, n)[:, None]], axis=1)
        # damping ~0.1% of a fully constrained direction's curvature: negligible where data constrain the
        # motion, decisive where they do not (noise alone must not spin a torus)
        h = jac.T @ jac + 1e-4 * len(p) * np.eye(7)
        delta = np.linalg.solve(h, jac.T @ b)
        step = np.linalg.norm(delta[:3])
        if step > np.deg2rad(5.0):
            delta[:3] *= np.deg2rad(5.0) / step
        d_rot = _rodrigues(delta[:3])
        ds = float(np.clip(delta[6], -0.05, 0.05))
        # apply: x -> d_rot @ (x - 0) * (1 + ds) + dt, composed on the current transform
        r = d_rot @ r
        s = s * (1.0 + ds)
        t = (1.0 + ds) * (d_rot @ t) + delta[3:6]
        # converged: steps below 0.006 degrees and 1e-4 RMS radius (far below the 2-degree target)
        if np.linalg.norm(delta[:3]) < 1e-4 and np.linalg.norm(delta[3:6]) < 1e-4 and abs(ds) < 1e-4:
            break
    return r, s, t


def align_to_reference(
    clean: CleanMesh, reference: CleanMesh, target: _Target | None = None, *, seed: int = 0
) -> Alignment:
    """Align a cleaned frame onto the cleaned reference (both centred); see the module docstring."""
    target = target or _Target(reference)
    rng = np.random.default_rng(seed + 1000 + clean.index)
    pick = rng.choice(len(clean.samples), size=min(N_SOURCE_SAMPLES, len(clean.samples)), replace=False)
    src = clean.samples[pick] / clean.rms_radius  # unit RMS radius
    zero = np.zeros(3)

    # 1. coarse turn: circular correlation of turn-dependent profiles (all turns at once, 2-degree bins), then
    #    the best few peaks become starts; the reference's ICP cost decides between them
    src_prof = azimuth_profile(clean.samples / clean.rms_radius)
    score = np.fft.irfft(
        (target.profile_spectrum * np.conj(np.fft.rfft(src_prof, axis=0))).sum(axis=1), n=N_AZIMUTH_BINS
    )  # score[k]: reference(theta + k) vs source(theta)
    turns = np.deg2rad(np.arange(N_AZIMUTH_BINS) * 360.0 / N_AZIMUTH_BINS)
    starts = _distinct_minima(-score, N_STARTS, min_gap=round(12.0 * N_AZIMUTH_BINS / 360.0))

    # 2. per start: small tilt grid, then ICP to convergence (every start: ranking them early can be off by
    #    a tread pitch)
    results = []
    for i in starts:
        best_r, best_c = None, np.inf
        for ax in TILT_GRID_DEG:
            for ay in TILT_GRID_DEG:
                r = _rot_z(turns[i]) @ _rot_x(np.deg2rad(ax)) @ _rot_y(np.deg2rad(ay))
                c = target.cost(src[:TILT_SAMPLES] @ r.T)  # ranking only: a subset is enough
                if c < best_c:
                    best_r, best_c = r, c
        r, s, t = _icp(src, target, best_r, 1.0, zero, ICP_ITERATIONS)
        s = float(np.clip(s, *SCALE_LIMITS))
        results.append((target.cost(s * (src @ r.T) + t), r, s, t))
    refined = sorted(results, key=lambda x: x[0])
    cost, r, s, t = refined[0]
    turn, tilt = turn_and_tilt_deg(r)

    # ambiguity: is the best turn significantly better than a clearly different one? Paired test on all
    # samples (a small marker has few points in the ICP subsample; shared noise cancels in the differences):
    # t = mean(diff) / standard error
    alt_turn, alt_t, ambiguous = None, None, False
    rivals = [e for e in refined[1:] if _turn_gap(turn_and_tilt_deg(e[1])[0], turn) >= AMBIGUITY_MIN_DEG]
    if rivals:
        _, r2, s2, t2 = rivals[0]
        all_src = clean.samples / clean.rms_radius
        res1, _ = target.residuals(s * (all_src @ r.T) + t)
        res2, _ = target.residuals(s2 * (all_src @ r2.T) + t2)
        diff = np.minimum(np.abs(res2), DISTANCE_CAP) ** 2 - np.minimum(np.abs(res1), DISTANCE_CAP) ** 2
        alt_turn = turn_and_tilt_deg(r2)[0]
        alt_t = float(diff.mean() / max(diff.std(ddof=1) / np.sqrt(len(diff)), 1e-15))
        ambiguous = alt_t < AMBIGUITY_T

    # symmetric error on all samples: frame -> reference and reference -> frame
    pts = s * (clean.samples / clean.rms_radius) @ r.T + t
    fwd, _ = target.residuals(pts)
    inv_pts = ((target.points - t) @ r) / s
    back_tree = cKDTree(clean.samples / clean.rms_radius)
    _, bidx = back_tree.query(inv_pts, workers=-1)
    back = np.einsum("ij,ij->i", inv_pts - clean.samples[bidx] / clean.rms_radius, clean.normals[bidx])
    error = 0.5 * (np.abs(fwd).mean() + s * np.abs(back).mean())

    k = reference.rms_radius / clean.rms_radius  # unit-RMS source -> reference units
    matrix = np.eye(4)
    matrix[:3, :3] = s * k * r
    matrix[:3, 3] = t * reference.rms_radius
    return Alignment(
        matrix, float(cost), float(error), turn, tilt, float(s * k), bool(ambiguous), alt_turn, alt_t
    )


def azimuth_profile(points: np.ndarray) -> np.ndarray:
    """Turn-dependent profile of a centred, unit-RMS point set: (N_AZIMUTH_BINS, features) float.

    Per azimuth bin: the highest and lowest sample height and the largest and smallest radius (extremes are
    robust to sampling noise on flat faces, and carry raised markers and tread). Per feature the mean and the
    first harmonic over azimuth are removed (a small tilt or shift only changes those), the rest is low-passed
    and normalised. Circularly correlating two profiles scores every turn at once.
    """
    theta = np.arctan2(points[:, 1], points[:, 0])
    a_bin = ((theta + np.pi) / (2 * np.pi) * N_AZIMUTH_BINS).astype(np.int64) % N_AZIMUTH_BINS
    r = np.hypot(points[:, 0], points[:, 1])
    z = points[:, 2]
    feats = np.zeros((N_AZIMUTH_BINS, 4))
    for j, (values, reduce, empty) in enumerate(
        [
            (z, np.maximum, -np.inf),
            (-z, np.maximum, -np.inf),
            (r, np.maximum, -np.inf),
            (-r, np.maximum, -np.inf),
        ]
    ):
        col = np.full(N_AZIMUTH_BINS, empty)
        reduce.at(col, a_bin, values)
        filled = np.isfinite(col)
        col[~filled] = col[filled].mean() if filled.any() else 0.0
        feats[:, j] = col
    spec = np.fft.rfft(feats, axis=0)
    spec[:2] = 0.0  # drop the mean and the first harmonic (tilt / shift)
    k = np.arange(spec.shape[0])[:, None]
    spec *= np.exp(-0.5 * (k / 10.0) ** 2)  # low-pass, ~6-degree Gaussian: sample noise out, markers in
    feats = np.fft.irfft(spec, n=N_AZIMUTH_BINS, axis=0)
    return feats / max(float(np.sqrt((feats**2).sum())), 1e-12)


def _turn_gap(a_deg: float, b_deg: float) -> float:
    """Absolute angular difference of two turns, degrees in [0, 180]."""
    return abs((a_deg - b_deg + 180.0) % 360.0 - 180.0)


def _distinct_minima(costs: np.ndarray, count: int, min_gap: int) -> list[int]:
    """Indices of the lowest circular local minima, at least min_gap steps apart."""
    n = len(costs)
    is_min = (costs <= np.roll(costs, 1)) & (costs <= np.roll(costs, -1))
    order = [i for i in np.argsort(costs) if is_min[i]] + [i for i in np.argsort(costs) if not is_min[i]]
    chosen: list[int] = []
    for i in order:
        if all(min(abs(i - j), n - abs(i - j)) >= min_gap for j in chosen):
            chosen.append(int(i))
        if len(chosen) == count:
            break
    return chosen
