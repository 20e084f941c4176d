"""triposr/mesh.py: dense vs adaptive extraction on analytic fields with known surfaces (sphere, torus,
and thin features that fall between the coarse samples), and on the tiny TripoSR model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from triposr.mesh import extract_adaptive, extract_dense, grid_axis

from .conftest import chamfer

RADIUS = 0.87
STRIDE = 4


def voxel(resolution: int) -> float:
    return 2 * RADIUS / (resolution - 1)


def mid_coordinate(resolution: int, index: int) -> float:
    """World coordinate of fine grid index `index` (use index = 4k + 2: halfway between two coarse planes)."""
    return float(grid_axis(resolution, RADIUS)[index])


def sphere(center, r):
    c = torch.tensor(center, dtype=torch.float32)
    return lambda p: r - torch.linalg.norm(p - c, dim=-1)


def torus(center, major, minor):
    c = torch.tensor(center, dtype=torch.float32)

    def field(p):
        q = p - c
        ring = torch.sqrt(q[:, 0] ** 2 + q[:, 1] ** 2) - major
        return minor - torch.sqrt(ring**2 + q[:, 2] ** 2)

    return field


def both(field, resolution, level=0.0, **kwargs):
    dense = extract_dense(field, resolution, level, radius=RADIUS)
    adaptive = extract_adaptive(field, resolution, level, radius=RADIUS, stride=STRIDE, **kwargs)
    return dense, adaptive


def assert_same_surface(dense, adaptive, resolution):
    assert len(dense.faces) > 0
    assert len(adaptive.faces) == len(dense.faces)
    _, worst = chamfer(adaptive.vertices, dense.vertices)
    assert worst <= 1e-5 * voxel(resolution)  # the same surface, not merely a close one
    np.testing.assert_array_equal(adaptive.faces, dense.faces)  # even the same order


def signed_volume(surface) -> float:
    v = surface.vertices.astype(np.float64)[surface.faces]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6)


def test_sphere_is_exact_and_adaptive_is_identical_to_dense():
    res, r, c = 96, 0.41, (0.11, -0.07, 0.19)
    dense, adaptive = both(sphere(c, r), res)
    assert_same_surface(dense, adaptive, res)
    err = np.abs(np.linalg.norm(adaptive.vertices - np.array(c), axis=1) - r)
    assert err.max() < 0.05 * voxel(res)
    # positive: outward normals
    assert signed_volume(adaptive) == pytest.approx(4 / 3 * math.pi * r**3, rel=0.01)
    assert adaptive.queries < 0.25 * dense.queries


def test_torus_is_exact_and_adaptive_is_identical_to_dense():
    res, c, major, minor = 128, (-0.05, 0.08, 0.03), 0.45, 0.13
    dense, adaptive = both(torus(c, major, minor), res)
    assert_same_surface(dense, adaptive, res)
    q = adaptive.vertices - np.array(c)
    dist = np.sqrt((np.hypot(q[:, 0], q[:, 1]) - major) ** 2 + q[:, 2] ** 2)
    assert np.abs(dist - minor).max() < 0.1 * voxel(res)
    assert signed_volume(adaptive) == pytest.approx(2 * math.pi**2 * major * minor**2, rel=0.01)
    assert adaptive.queries < 0.2 * dense.queries


def coarse_values(field, resolution):
    idx = np.minimum(np.arange(0, resolution + STRIDE, STRIDE), resolution - 1)
    axis = grid_axis(resolution, RADIUS)[idx]
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return field(pts)


def thin_tube(resolution):
    # a torus whose tube (radius 1.2 voxels) lies in the plane halfway between two coarse planes: no coarse
    # sample is inside it, so a grid of every 4th sample sees nothing at all
    z0 = mid_coordinate(resolution, 4 * (resolution // 8) + 2)
    return torus((0.02, -0.03, z0), 0.5, 1.2 * voxel(resolution))


def thin_disk(resolution):
    # a disk 1.2 voxels thick, also between two coarse planes
    z0 = mid_coordinate(resolution, 4 * (resolution // 12) + 2)
    half, rim = 0.6 * voxel(resolution), 0.33

    def field(p):
        return torch.minimum(half - (p[:, 2] - z0).abs(), rim - torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2))

    return field


def grain(resolution):
    # a sphere of radius 1.5 voxels centred in a block: its nearest coarse sample is 3.5 voxels away
    c = mid_coordinate(resolution, 4 * (resolution // 8) + 2)
    return sphere((c, c, c), 1.5 * voxel(resolution))


@pytest.mark.parametrize("make_field", [thin_tube, thin_disk, grain], ids=["thin_tube", "thin_disk", "grain"])
def test_thin_features_missed_by_the_coarse_grid_are_found(make_field):
    res = 128
    field = make_field(res)
    assert (coarse_values(field, res) > 0).sum() == 0  # invisible to the coarse samples
    dense, adaptive = both(field, res)
    assert_same_surface(dense, adaptive, res)
    # without the slope margin the seeds are only sign changes at coarse corners, and there are none
    naive = extract_adaptive(field, res, 0.0, radius=RADIUS, stride=STRIDE, margin=0.0)
    assert len(naive.faces) == 0


def test_surface_is_followed_across_blocks_from_a_single_seed():
    # thin tube plus a big sphere: the sphere seeds normally, the tube only through the margin; with margin 0
    # the closure still cannot invent the tube, but everything connected to a seed is found
    res = 128
    tube, ball = thin_tube(res), sphere((0.0, 0.0, -0.45), 0.3)

    def field(p):
        return torch.maximum(tube(p), ball(p))

    dense, adaptive = both(field, res)
    assert_same_surface(dense, adaptive, res)
    naive = extract_adaptive(field, res, 0.0, radius=RADIUS, stride=STRIDE, margin=0.0)
    assert 0 < len(naive.faces) < len(dense.faces)


def test_log_domain_seeding_matches_dense_on_an_exponential_field():
    # density-like field: level 25 where the signed distance is 0, exp-shaped like TripoSR's density_act
    res = 96
    sdf_ball, sdf_tube = sphere((0.1, 0.0, -0.3), 0.35), thin_tube(res)

    def density(p):
        return 25.0 * torch.exp(torch.maximum(sdf_ball(p), sdf_tube(p)) / (2 * voxel(res)))

    dense = extract_dense(density, res, 25.0, radius=RADIUS)
    adaptive = extract_adaptive(density, res, 25.0, radius=RADIUS, log_domain=True)
    assert_same_surface(dense, adaptive, res)


@pytest.mark.parametrize("resolution", [33, 50, 97])
def test_resolutions_that_do_not_divide_into_blocks(resolution):
    dense, adaptive = both(torus((0.0, 0.1, -0.05), 0.4, 0.15), resolution)
    assert_same_surface(dense, adaptive, resolution)


def test_surface_cut_by_the_cube_boundary():
    # a half-space: the surface is a plane that ends at the cube's faces
    dense, adaptive = both(lambda p: 0.1 - p[:, 2] + 0.2 * p[:, 0], 64)
    assert_same_surface(dense, adaptive, 64)


def test_empty_field_gives_an_empty_surface():
    for s in both(lambda p: -1.0 - p[:, 0] ** 2, 64):
        assert s.vertices.shape == (0, 3) and s.faces.shape == (0, 3)
    adaptive = extract_adaptive(lambda p: -1.0 - p[:, 0] ** 2, 64, 0.0, radius=RADIUS)
    assert adaptive.queries == 17**3  # only the coarse grid


def test_chunk_size_bounds_each_field_call():
    sizes = []

    def field(p):
        sizes.append(p.shape[0])
        return 0.3 - torch.linalg.norm(p, dim=-1)

    surface = extract_adaptive(field, 64, 0.0, radius=RADIUS, chunk_size=1000)
    assert max(sizes) <= 1000 and sum(sizes) == surface.queries
    sizes.clear()
    extract_dense(field, 32, 0.0, radius=RADIUS, chunk_size=1000)
    assert max(sizes) <= 1000 and sum(sizes) == 32**3


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="resolution"):
        extract_dense(lambda p: p[:, 0], 1, 0.0, radius=RADIUS)
    with pytest.raises(ValueError, match="positive level"):
        extract_adaptive(lambda p: p[:, 0], 32, 0.0, radius=RADIUS, log_domain=True)


# ---- the tiny TripoSR model ------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_tiny_model_adaptive_mesh_is_within_half_a_voxel_of_dense(tiny_model, tiny_codes, resolution):
    dense = tiny_model.extract_surface(tiny_codes, resolution, method="dense")
    adaptive = tiny_model.extract_surface(tiny_codes, resolution, method="adaptive")
    _, worst = chamfer(adaptive.vertices, dense.vertices)
    assert worst <= 0.5 * voxel(resolution)
    assert len(adaptive.faces) == len(dense.faces)
    if resolution >= 64:
        assert adaptive.queries < 0.5 * dense.queries


def test_tiny_model_extract_mesh_defaults_to_adaptive_with_colours(tiny_model, tiny_codes):
    mesh = tiny_model.extract_mesh(tiny_codes, resolution=64)
    assert len(mesh.faces) > 0 and mesh.volume > 0
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    assert np.abs(mesh.vertices).max() <= RADIUS


@pytest.mark.parametrize("method", ["dense", "adaptive"])
def test_tiny_model_without_surface_gives_an_empty_mesh(tiny_model, tiny_codes, method):
    mesh = tiny_model.extract_mesh(tiny_codes, resolution=32, threshold=1e30, method=method)
    assert len(mesh.vertices) == 0 and len(mesh.faces) == 0


def test_unknown_method_is_rejected(tiny_model, tiny_codes):
    with pytest.raises(ValueError, match="method"):
        tiny_model.extract_mesh(tiny_codes, resolution=32, method="octree")
