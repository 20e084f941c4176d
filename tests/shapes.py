"""Synthetic shapes for fusion tests and benchmarks: tyres, a plain torus, an asymmetric blob, noisy frames.

All shapes are closed, outward-wound trimesh meshes in TripoSR's native frame (Z up) with uint8 RGBA vertex
colours, sized like TripoSR output (inside [-0.87, 0.87]). `make_frames` turns one ground-truth shape into
per-frame "reconstructions": a known turn about Z, a small tilt, a uniform scale, a shift and vertex noise.
"""

from __future__ import annotations

import numpy as np
import trimesh

RUBBER_SRGB = (38, 38, 42, 255)  # near-black tyre rubber
MARKER_SRGB = (250, 205, 20, 255)  # a yellow sidewall logo


def _revolve(profile_r: np.ndarray, profile_z: np.ndarray, n_theta: int, radial_offset=None, z_offset=None):
    """Revolve a closed (r, z) profile (n_profile points) about Z into a closed (n_theta x n_profile) grid.

    radial_offset / z_offset: optional callables (theta (T,1), r (1,P), z (1,P)) -> (T, P) displacements.
    """
    theta = np.linspace(0.0, 2.0 * np.pi, n_theta, endpoint=False)[:, None]  # (T, 1)
    r = np.broadcast_to(profile_r[None, :], (n_theta, len(profile_r))).copy()  # (T, P)
    z = np.broadcast_to(profile_z[None, :], (n_theta, len(profile_z))).copy()
    if radial_offset is not None:
        r = r + radial_offset(theta, profile_r[None, :], profile_z[None, :])
    if z_offset is not None:
        z = z + z_offset(theta, profile_r[None, :], profile_z[None, :])
    vertices = np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=-1).reshape(-1, 3)
    t_idx, p_idx = np.meshgrid(np.arange(n_theta), np.arange(len(profile_r)), indexing="ij")
    n_p = len(profile_r)
    v00 = (t_idx * n_p + p_idx).ravel()
    v10 = (((t_idx + 1) % n_theta) * n_p + p_idx).ravel()
    v01 = (t_idx * n_p + (p_idx + 1) % n_p).ravel()
    v11 = (((t_idx + 1) % n_theta) * n_p + (p_idx + 1) % n_p).ravel()
    faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    mesh = trimesh.Trimesh(vertices, faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def _superellipse(n: int, r_centre: float, half_r: float, half_z: float, power: float):
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    r = r_centre + half_r * np.sign(c) * np.abs(c) ** (2.0 / power)
    z = half_z * np.sign(s) * np.abs(s) ** (2.0 / power)
    return r, z


def tyre(
    *,
    outer_radius: float = 0.8,
    inner_radius: float = 0.5,
    width: float = 0.36,
    n_theta: int = 240,
    n_profile: int = 64,
    grooves: int = 24,
    groove_depth: float = 0.025,
    marker: bool = True,
    marker_height: float = 0.08,
    marker_center_deg: float = 20.0,
    marker_width_deg: float = 80.0,
) -> trimesh.Trimesh:
    """A tyre lying flat (axis = Z): a revolved rounded-box cross-section with lateral tread grooves on the
    outer face and, when `marker`, a raised yellow sidewall logo on the top face (makes the turn observable).

    Faces: 2 * n_theta * n_profile.
    """
    r_c = 0.5 * (outer_radius + inner_radius)
    half_r = 0.5 * (outer_radius - inner_radius)
    pr, pz = _superellipse(n_profile, r_c, half_r, 0.5 * width, power=6.0)
    marker_center = np.deg2rad(marker_center_deg)
    marker_half = np.deg2rad(marker_width_deg) / 2

    def radial(theta, r, z):
        tread = np.clip(
            (r - (outer_radius - 0.35 * half_r)) / (0.35 * half_r), 0.0, 1.0
        )  # 1 on the outer face
        groove = np.maximum(0.0, np.cos(grooves * theta)) ** 8  # lateral grooves, smooth
        return -groove_depth * tread * groove

    def lift(theta, r, z):
        if not marker:
            return np.zeros(np.broadcast_shapes(theta.shape, r.shape))
        top = np.clip((z - 0.3 * width) / (0.2 * width), 0.0, 1.0)  # 1 on the flat top face
        dtheta = np.angle(np.exp(1j * (theta - marker_center)))
        # a ramp (rises along theta) so the marker has no mirror symmetry either
        along = np.clip(1.0 - np.abs(dtheta) / marker_half, 0.0, 1.0) * (0.6 + 0.4 * dtheta / marker_half)
        across = np.clip(1.0 - np.abs(r - r_c) / (0.8 * half_r), 0.0, 1.0)
        return marker_height * top * np.clip(along, 0.0, 1.0) ** 0.5 * across**0.5

    mesh = _revolve(pr, pz, n_theta, radial, lift)
    colours = np.tile(np.array(RUBBER_SRGB, np.uint8), (len(mesh.vertices), 1))
    if marker:
        raised = mesh.vertices[:, 2] > 0.5 * width + 0.15 * marker_height
        colours[raised] = MARKER_SRGB
    mesh.visual.vertex_colors = colours
    return mesh


def torus(*, major_radius: float = 0.62, minor_radius: float = 0.18, n_theta: int = 160, n_profile: int = 48):
    """A plain torus about Z (rotationally symmetric: its turn is unobservable)."""
    pr, pz = _superellipse(n_profile, major_radius, minor_radius, minor_radius, power=2.0)
    mesh = _revolve(pr, pz, n_theta)
    mesh.visual.vertex_colors = np.tile(np.array(RUBBER_SRGB, np.uint8), (len(mesh.vertices), 1))
    return mesh


def blob(*, radius: float = 0.6, subdivisions: int = 4) -> trimesh.Trimesh:
    """An asymmetric closed blob (a sphere with low-frequency bumps), coloured by height and longitude."""
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    v = mesh.vertices
    bump = (
        1.0
        + 0.22 * np.sin(2.0 * v[:, 0] + 0.5) * np.cos(1.5 * v[:, 1])
        + 0.15 * np.maximum(v[:, 0], 0) * v[:, 2]
    )
    mesh.vertices = v * (radius * bump)[:, None]
    longitude = (np.arctan2(v[:, 1], v[:, 0]) + np.pi) / (2 * np.pi)
    colours = np.stack([255 * longitude, 128 + 100 * v[:, 2], 255 * (1 - longitude), 255 + 0 * longitude], 1)
    mesh.visual.vertex_colors = np.clip(colours, 0, 255).astype(np.uint8)
    return mesh


def rotation_z(deg: float) -> np.ndarray:
    return trimesh.transformations.rotation_matrix(np.deg2rad(deg), [0, 0, 1])


def rotation_angle_deg(r: np.ndarray) -> float:
    """Angle of a 3x3 rotation (geodesic distance from identity) in degrees."""
    return float(np.rad2deg(np.arccos(np.clip((np.trace(r[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))))


def with_noise(mesh: trimesh.Trimesh, sigma: float, rng: np.random.Generator) -> trimesh.Trimesh:
    """Copy with Gaussian vertex noise of `sigma` (mesh units) along the vertex normals."""
    out = mesh.copy()
    out.vertices = mesh.vertices + mesh.vertex_normals * rng.normal(0.0, sigma, (len(mesh.vertices), 1))
    return out


def corrupted(mesh: trimesh.Trimesh, rng: np.random.Generator, amplitude: float = 0.15) -> trimesh.Trimesh:
    """A badly wrong reconstruction: the shape squashed and warped by large low-frequency bumps."""
    out = mesh.copy()
    v = mesh.vertices
    phase = rng.uniform(0, 2 * np.pi, 3)
    warp = amplitude * (
        np.sin(3 * v[:, 0] + phase[0]) + np.cos(2 * v[:, 1] + phase[1]) * np.sin(4 * v[:, 2] + phase[2])
    )
    out.vertices = v * np.array([1.0, 0.75, 1.4]) + mesh.vertex_normals * warp[:, None]
    return out


def make_frames(
    truth: trimesh.Trimesh,
    turns_deg,
    *,
    tilt_deg: float = 3.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    shift: float = 0.04,
    noise: float = 0.006,
    seed: int = 0,
) -> tuple[list[trimesh.Trimesh], list[np.ndarray]]:
    """Per-frame meshes of `truth` and the 4x4 matrices that made them (frame = matrix @ truth, plus noise).

    Each frame: turn about Z by turns_deg[i], a random tilt up to `tilt_deg` about a horizontal axis, a
    uniform scale in `scale_range`, a shift up to `shift` per axis, Gaussian vertex noise `noise` along
    normals.
    """
    rng = np.random.default_rng(seed)
    meshes, matrices = [], []
    for turn in turns_deg:
        axis = np.array([*rng.normal(size=2), 0.0])
        tilt = trimesh.transformations.rotation_matrix(np.deg2rad(rng.uniform(-tilt_deg, tilt_deg)), axis)
        scale = rng.uniform(*scale_range)
        matrix = tilt @ rotation_z(turn)
        matrix[:3, :3] *= scale
        matrix[:3, 3] = rng.uniform(-shift, shift, 3)
        frame = with_noise(truth, noise, rng) if noise > 0 else truth.copy()
        frame.apply_transform(matrix)
        meshes.append(frame)
        matrices.append(matrix)
    return meshes, matrices


_DENSE: dict[int, tuple[trimesh.Trimesh, object]] = {}  # id(mesh) -> (mesh, KD-tree of dense samples)


def _dense_tree(mesh: trimesh.Trimesh, dense: int, seed: int):
    """KD-tree of `dense` surface samples, cached per mesh object (the truth is queried many times)."""
    from scipy.spatial import cKDTree

    key = id(mesh)
    if key not in _DENSE or _DENSE[key][0] is not mesh:
        points, _ = trimesh.sample.sample_surface(mesh, dense, seed=seed)
        _DENSE[key] = (mesh, cKDTree(points))
    return _DENSE[key][1]


def chamfer(
    a: trimesh.Trimesh, b: trimesh.Trimesh, n: int = 20000, dense: int = 300_000, seed: int = 0
) -> float:
    """Symmetric mean surface distance between two meshes (mesh units).

    n samples of one surface are matched against a KD-tree of `dense` samples of the other (dense, so the
    sampling floor stays well below the differences measured). Pass the ground truth as `b`: its tree is
    cached.
    """
    from scipy.spatial import cKDTree

    pa, _ = trimesh.sample.sample_surface(a, n, seed=seed)
    pb, _ = trimesh.sample.sample_surface(b, n, seed=seed + 1)
    da, _ = _dense_tree(b, dense, seed + 2).query(pa)
    dense_a = trimesh.sample.sample_surface(a, dense, seed=seed + 3)[0]
    db, _ = cKDTree(dense_a).query(pb)
    return float(0.5 * (da.mean() + db.mean()))
