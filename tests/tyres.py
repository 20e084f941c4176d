"""Synthetic racing tyres for the comparison tests and benchmark, and TripoSR-like perturbations of them.

`racing_tyre(...)` builds a closed, outward-wound mesh of a 0.72 m slick-like tyre in metres, tyre frame
(axis +Z, centre at the origin): a rounded-rectangle cross-section revolved about Z, with slanted lateral
tread grooves at irregular angles (so the turn is unique and a mirror image is distinguishable), raised
sidewall lettering from a small bitmap font on both sides (yellow, so colour helps too), and optional wear
(`wear`: metres of rubber removed as a function of angle and where on the cross-section a vertex sits).

`triposr_like(mesh, ...)` turns a metric tyre into what two separate TripoSR runs give: TripoSR units
(largest dimension about 1.2), a random rotation, translation and scale, marching-cubes noise of up to half a
voxel along the normal (uniform, as the iso-surface's quantisation) and a few floaters.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

OUTER_RADIUS_M = 0.36  # 0.72 m: an F1 rear tyre's diameter
INNER_RADIUS_M = 0.23  # 18-inch rim
HALF_WIDTH_M = 0.19
SHOULDER_RADIUS_M = 0.045
BEAD_RADIUS_M = 0.015
GROOVE_DEPTH_M = 0.004
LETTER_HEIGHT_M = 0.0025
UNITS_PER_M = 1.2 / 0.72  # TripoSR meshes span about 1.2 of its units
GRID_SPAN = 1.74  # TripoSR's marching-cubes grid spans [-0.87, 0.87]
RUBBER = np.array([38, 38, 42, 255], np.uint8)
LETTERING = np.array([250, 205, 20, 255], np.uint8)

# 5x7 bitmap glyphs (rows top to bottom); none is mirror-symmetric, so lettering is chiral.
GLYPHS = {
    "P": ["1111.", "1...1", "1...1", "1111.", "1....", "1....", "1...."],
    "R": ["1111.", "1...1", "1...1", "1111.", "1.1..", "1..1.", "1...1"],
    "F": ["11111", "1....", "1....", "1111.", "1....", "1....", "1...."],
    "1": ["..1..", ".11..", "..1..", "..1..", "..1..", "..1..", ".111."],
    "7": ["11111", "....1", "...1.", "..1..", ".1...", ".1...", ".1..."],
}
WordPlacement = tuple[str, float, int]  # text, start angle (deg), side (+1 top, -1 bottom)
WORDS: tuple[WordPlacement, ...] = (
    ("PR1", 25.0, +1),
    ("F17", 150.0, +1),
    ("RF", 250.0, -1),
    ("P7", 40.0, -1),
)
GROOVE_ANGLES_DEG = (3.0, 31.0, 52.0, 97.0, 118.0, 166.0, 181.0, 229.0, 247.0, 262.0, 301.0, 338.0)
GROOVE_SLANT = 0.35  # radians of turn per metre across the tread: slanted (chiral) grooves

WearFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def profile(spacing_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The closed cross-section (r, z) sampled every `spacing_m`, plus the shoulder angle of each point.

    Counter-clockwise in (r, z): outer tread (z up), top shoulder, top sidewall, bead, inner face, ...
    `alpha` is 0 on the flat tread, grows to 90 degrees over the outer shoulder arc, and is 180 elsewhere.
    """
    ro, ri, hw, rs, rb = OUTER_RADIUS_M, INNER_RADIUS_M, HALF_WIDTH_M, SHOULDER_RADIUS_M, BEAD_RADIUS_M
    segments: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def line(p0, p1, alpha):
        n = max(2, round(np.hypot(p1[0] - p0[0], p1[1] - p0[1]) / spacing_m))
        t = np.linspace(0, 1, n, endpoint=False)
        segments.append((p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1]), np.full(n, alpha)))

    def arc(centre, radius, a0, a1, outer):
        n = max(2, round(abs(a1 - a0) * radius / spacing_m))
        a = np.linspace(a0, a1, n, endpoint=False)
        shoulder = np.degrees(np.abs(a - (0.0 if a1 > a0 else np.pi))) if outer else np.full(n, 180.0)
        segments.append((centre[0] + radius * np.cos(a), centre[1] + radius * np.sin(a), shoulder))

    zt = hw - rs
    line((ro, -zt), (ro, zt), 0.0)  # tread
    arc((ro - rs, zt), rs, 0.0, np.pi / 2, True)  # top shoulder
    line((ro - rs, hw), (ri + rb, hw), 180.0)  # top sidewall
    arc((ri + rb, hw - rb), rb, np.pi / 2, np.pi, False)
    line((ri, hw - rb), (ri, -hw + rb), 180.0)  # bead / inner face
    arc((ri + rb, -hw + rb), rb, np.pi, 1.5 * np.pi, False)
    line((ri + rb, -hw), (ro - rs, -hw), 180.0)  # bottom sidewall
    arc((ro - rs, -zt), rs, 1.5 * np.pi, 2 * np.pi, False)  # bottom shoulder
    r = np.concatenate([s[0] for s in segments])
    z = np.concatenate([s[1] for s in segments])
    alpha = np.concatenate([s[2] for s in segments])
    bottom = (z < -zt) & (r > ro - rs - 1e-9)
    alpha[bottom] = np.degrees(np.arctan2(-(z[bottom] + zt), r[bottom] - (ro - rs)))
    return r, z, alpha


def _lettering(theta: np.ndarray, r: np.ndarray, side: int) -> np.ndarray:
    """Raised-glyph height field on one sidewall (0..1), glyph rows running outwards in radius."""
    out = np.zeros(np.broadcast(theta, r).shape)
    r_lo, r_hi = 0.262, 0.330  # glyph rows span this radius band
    cell_r = (r_hi - r_lo) / 7
    cell_t = cell_r / 0.296  # radians per glyph column at the band's middle radius
    for text, start_deg, word_side in WORDS:
        if word_side != side:
            continue
        for k, ch in enumerate(text):
            bitmap = np.array([[c == "1" for c in row] for row in GLYPHS[ch]])  # (7, 5)
            t0 = np.radians(start_deg) + k * 6.5 * cell_t
            col = np.floor(((theta - t0) % (2 * np.pi)) / cell_t).astype(int)
            row = np.floor((r_hi - r) / cell_r).astype(int)
            inside = (col >= 0) & (col < 5) & (row >= 0) & (row < 7)
            hit = np.zeros_like(inside)
            hit[inside] = bitmap[row[inside], col[inside]]
            out = np.maximum(out, hit.astype(float))
    return out


def racing_tyre(
    *, spacing_m: float = 0.004, wear: WearFn | None = None, mirrored: bool = False
) -> trimesh.Trimesh:
    """A 0.72 m tyre in metres, axis +Z; vertex spacing about `spacing_m` (4 mm: ~115k vertices).

    wear(theta_rad (T,P), z_m (T,P), shoulder_deg (T,P)) -> metres removed along the outward normal.
    """
    pr, pz, alpha = profile(spacing_m)
    n_theta = round(2 * np.pi * OUTER_RADIUS_M / spacing_m)
    theta = np.linspace(0.0, 2 * np.pi, n_theta, endpoint=False)[:, None]  # (T, 1)
    # outward normals of the counter-clockwise profile: tangent turned clockwise
    tr, tz = np.roll(pr, -1) - np.roll(pr, 1), np.roll(pz, -1) - np.roll(pz, 1)
    norm = np.hypot(tr, tz)
    nr, nz = tz / norm, -tr / norm
    T, P = n_theta, len(pr)
    R = np.broadcast_to(pr, (T, P)).astype(float)
    Z = np.broadcast_to(pz, (T, P)).astype(float)
    A = np.broadcast_to(alpha, (T, P))
    TH = np.broadcast_to(theta, (T, P))
    offset = np.zeros((T, P))
    # slanted lateral grooves on the flat tread (cosine-shaped, ~18 mm wide)
    on_tread = A < 30.0
    for g in GROOVE_ANGLES_DEG:
        centre = np.radians(g) + GROOVE_SLANT * Z
        dt = (TH - centre + np.pi) % (2 * np.pi) - np.pi
        arc_m = np.abs(dt) * OUTER_RADIUS_M
        groove = np.where(arc_m < 0.009, 0.5 * (1 + np.cos(np.pi * arc_m / 0.009)), 0.0)
        offset -= GROOVE_DEPTH_M * groove * on_tread
    letters = np.zeros((T, P))
    for side in (+1, -1):
        on_side = (np.abs(Z - side * HALF_WIDTH_M) < 1e-9) & (A >= 180.0)
        letters = np.maximum(letters, _lettering(TH, R, side) * on_side)
    offset += LETTER_HEIGHT_M * letters
    if wear is not None:
        offset -= wear(TH, Z, A)
    R = R + offset * nr
    Z = Z + offset * nz
    vertices = np.stack([R * np.cos(TH), R * np.sin(TH), Z], axis=-1).reshape(-1, 3)
    t_idx, p_idx = np.meshgrid(np.arange(T), np.arange(P), indexing="ij")
    v00 = (t_idx * P + p_idx).ravel()
    v10 = (((t_idx + 1) % T) * P + p_idx).ravel()
    v01 = (t_idx * P + (p_idx + 1) % P).ravel()
    v11 = (((t_idx + 1) % T) * P + (p_idx + 1) % P).ravel()
    faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    colours = np.where(letters.reshape(-1, 1) > 0.5, LETTERING, RUBBER)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=colours, process=False)
    if mesh.volume < 0:
        mesh.invert()
    if mirrored:
        mesh.apply_transform(np.diag([1.0, -1.0, 1.0, 1.0]))  # trimesh re-winds faces on a reflection
    return mesh


def sector_wear(depth_m: float, start_deg: float, end_deg: float) -> WearFn:
    """`depth_m` off the tread (flat and shoulder up to 45 degrees) between two angles; tapers to 65."""

    def wear(theta: np.ndarray, z: np.ndarray, shoulder_deg: np.ndarray) -> np.ndarray:
        deg = np.degrees(theta) % 360.0
        inside = (deg >= start_deg) & (deg < end_deg)
        return depth_m * inside * _tread_share(shoulder_deg)

    return wear


def tread_wear(depth_m: float) -> WearFn:
    """`depth_m` off the whole tread, uniformly (the tyre is smaller overall)."""

    def wear(theta: np.ndarray, z: np.ndarray, shoulder_deg: np.ndarray) -> np.ndarray:
        return depth_m * _tread_share(shoulder_deg)

    return wear


def _tread_share(shoulder_deg: np.ndarray) -> np.ndarray:
    return np.clip((65.0 - shoulder_deg) / 20.0, 0.0, 1.0)


def box(size=(0.7, 0.5, 0.3)) -> trimesh.Trimesh:
    """A box meshed about as finely as the tyre (TripoSR meshes are dense everywhere)."""
    mesh = trimesh.creation.box(extents=size)
    vertices, faces = trimesh.remesh.subdivide_to_size(mesh.vertices, mesh.faces, max_edge=0.008)
    return trimesh.Trimesh(vertices, faces)


def sphere(radius: float = 0.36) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=5, radius=radius)


def triposr_like(
    mesh: trimesh.Trimesh,
    *,
    seed: int,
    mc_resolution: int = 256,
    move: bool = True,
    scale_range: tuple[float, float] = (0.85, 1.15),
    floaters: int = 3,
) -> tuple[trimesh.Trimesh, np.ndarray]:
    """A metric mesh as a TripoSR run would give it; returns (mesh, 4x4 metres -> mesh units).

    Noise: every vertex moves along its normal by a uniform amount in +-0.5 voxel of an `mc_resolution` grid
    over TripoSR's 1.74-unit cube. `move=False` keeps the pose (units only): a reference in the tyre frame.
    """
    rng = np.random.default_rng(seed)
    out = mesh.copy()
    matrix = np.eye(4)
    matrix[:3, :3] *= UNITS_PER_M
    if move:
        s = rng.uniform(*scale_range)
        rot = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
        pose = np.eye(4)
        pose[:3, :3] = s * rot
        pose[:3, 3] = rng.uniform(-0.1, 0.1, 3)
        matrix = pose @ matrix
    out.apply_transform(matrix)
    voxel = GRID_SPAN / mc_resolution
    out.vertices = out.vertices + out.vertex_normals * rng.uniform(-0.5, 0.5, (len(out.vertices), 1)) * voxel
    extent = float(np.ptp(out.vertices, axis=0).max())
    centre = out.bounds.mean(axis=0)
    blobs = [out]
    for _ in range(floaters):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        blob = trimesh.creation.icosphere(subdivisions=2, radius=0.015 * extent)
        blob.apply_translation(centre + direction * extent * rng.uniform(0.6, 0.75))
        blob.visual.vertex_colors = RUBBER
        blobs.append(blob)
    return trimesh.util.concatenate(blobs), matrix
