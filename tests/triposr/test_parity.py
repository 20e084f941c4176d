"""Parity with the upstream-made tiny fixture (tests/fixtures/tiny, see its README): every stage of the
forward pass, the field query and the dense mesh at resolution 32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from triposr.vit import interpolate_position_embeddings

from .conftest import chamfer

ABS = 1e-4  # tolerance the issue sets for tokens, backbone output and scene codes


@pytest.fixture(scope="module")
def input_image(tiny_model_dir):
    with Image.open(tiny_model_dir / "input.png") as im:
        return im.copy()


def test_preprocessing_matches_upstream(tiny_model, tiny_model_dir, input_image):
    pixels = tiny_model.preprocess([input_image])  # (1, 3, 64, 64)
    ref = np.load(tiny_model_dir / "rgb_cond.npy")  # (1, 64, 64, 3)
    np.testing.assert_allclose(pixels.permute(0, 2, 3, 1).numpy(), ref, atol=1e-6, rtol=0)


def test_image_tokens_match_upstream(tiny_model, tiny_model_dir, input_image):
    with torch.inference_mode():
        tokens = tiny_model.image_tokenizer(tiny_model.preprocess([input_image]))  # (1, 17, 32), CLS first
    # (1, 1, 32, 17) -> (1, 17, 32)
    ref = np.load(tiny_model_dir / "image_tokens.npy")[:, 0].transpose(0, 2, 1)
    np.testing.assert_allclose(tokens.numpy(), ref, atol=ABS, rtol=0)


def test_backbone_output_matches_upstream(tiny_model, tiny_model_dir, input_image):
    with torch.inference_mode():
        tokens = tiny_model.image_tokenizer(tiny_model.preprocess([input_image]))
        out = tiny_model.backbone(tiny_model.tokenizer(1), tokens)  # (1, 64, 192)
    np.testing.assert_allclose(out.numpy(), np.load(tiny_model_dir / "backbone_out.npy"), atol=ABS, rtol=0)


@pytest.mark.parametrize(
    ("image", "reference"), [("input.png", "scene_codes.npy"), ("input_large.png", "scene_codes_large.npy")]
)
def test_scene_codes_match_upstream(tiny_model, tiny_model_dir, image, reference):
    with Image.open(tiny_model_dir / image) as im:
        codes = tiny_model.encode([im])
    assert codes.shape == (1, 3, 8, 16, 16) and codes.dtype == torch.float32
    np.testing.assert_allclose(codes.numpy(), np.load(tiny_model_dir / reference), atol=ABS, rtol=0)


def test_numpy_pil_and_batched_inputs_give_the_same_codes(tiny_model, input_image):
    array = np.asarray(input_image)
    one = tiny_model.encode([array])
    both = tiny_model.encode([input_image, array])
    torch.testing.assert_close(both[0], one[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(both[1], one[0], atol=1e-6, rtol=0)


def test_rgba_input_is_refused_with_a_hint(tiny_model):
    with pytest.raises(ValueError, match="composite"):
        tiny_model.encode([np.zeros((8, 8, 4), np.uint8)])


def test_query_matches_upstream_at_1000_points(tiny_model, tiny_model_dir, tiny_codes):
    ref = np.load(tiny_model_dir / "density_and_color.npz")
    out = tiny_model.query(torch.from_numpy(ref["points"]), tiny_codes)
    for key in ("density", "features", "color"):
        assert out[key].shape == ref[key].shape
        np.testing.assert_allclose(out[key].numpy(), ref[key], atol=ABS, rtol=0, err_msg=key)
    np.testing.assert_allclose(out["density_act"].numpy(), ref["density_act"], rtol=1e-4, atol=0)


def test_query_is_chunked_without_changing_results(tiny_model, tiny_model_dir, tiny_codes):
    points = torch.from_numpy(np.load(tiny_model_dir / "density_and_color.npz")["points"]).reshape(10, 100, 3)
    whole = tiny_model.query(points, tiny_codes)
    tiny_model.chunk_size = 7
    try:
        chunked = tiny_model.query(points, tiny_codes)
    finally:
        tiny_model.chunk_size = 8192
    assert chunked["density_act"].shape == (10, 100, 1)
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key], atol=1e-6, rtol=1e-6)


def test_query_of_no_points_gives_empty_outputs(tiny_model, tiny_codes):
    out = tiny_model.query(torch.zeros(0, 3), tiny_codes)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "density": (0, 1),
        "features": (0, 3),
        "density_act": (0, 1),
        "color": (0, 3),
    }


def test_dense_density_grid_matches_upstream(tiny_model, tiny_model_dir, tiny_codes):
    from triposr.mesh import grid_axis

    axis = grid_axis(32, 0.87)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # (32, 32, 32, 3)
    grid = tiny_model.query(points, tiny_codes)["density_act"][..., 0].numpy()
    np.testing.assert_allclose(grid, np.load(tiny_model_dir / "density_grid.npy"), rtol=1e-4, atol=0)


def test_dense_mesh_at_32_matches_upstream(tiny_model, tiny_model_dir, tiny_codes):
    mesh = tiny_model.extract_mesh(tiny_codes, resolution=32, method="dense")
    ref_v, ref_f = np.load(tiny_model_dir / "vertices.npy"), np.load(tiny_model_dir / "faces.npy")
    assert mesh.faces.shape == ref_f.shape
    # same vertex set (PyMCubes with upstream's conventions even gives the same order and faces)
    np.testing.assert_allclose(np.sort(mesh.vertices, axis=0), np.sort(ref_v, axis=0), atol=1e-4, rtol=0)
    np.testing.assert_allclose(mesh.vertices, ref_v, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(mesh.faces, ref_f)
    assert mesh.volume > 0  # outward normals
    ref_colors = np.round(np.load(tiny_model_dir / "vertex_colors.npy") * 255)
    assert mesh.visual.vertex_colors.dtype == np.uint8
    assert np.abs(mesh.visual.vertex_colors[:, :3].astype(int) - ref_colors).max() <= 1
    assert (mesh.visual.vertex_colors[:, 3] == 255).all()


def test_dense_mesh_matches_the_real_torchmcubes_geometry(tiny_model, tiny_model_dir, tiny_codes):
    mesh = tiny_model.extract_mesh(tiny_codes, resolution=32, method="dense", with_colors=False)
    ref = np.load(tiny_model_dir / "mesh_torchmcubes_cpu.npz")
    assert len(mesh.faces) == len(ref["faces"])
    # torchmcubes leaves near-duplicate vertices unwelded, so compare vertex sets geometrically
    _, worst = chamfer(mesh.vertices, ref["vertices"])
    assert worst < 1e-4


def _bicubic_1d_weights(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """(n_out, n_in) matrix of cubic-convolution interpolation (A = -0.75, clamped borders, half-pixel
    centres), with output i read at input coordinate (i + 0.5) / scale - 0.5."""
    a = -0.75
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = (i + 0.5) / scale - 0.5
        x0 = int(np.floor(x))
        t = x - x0
        taps = [
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        ]
        for k, weight in enumerate(taps):
            w[i, min(max(x0 - 1 + k, 0), n_in - 1)] += weight
    return w


def test_position_embeddings_use_the_transformers_4_35_scale_factor():
    # 4x4 table resized for an 8x8 patch grid: transformers 4.35 reads output i at (i + 0.5) * 4 / 8.1 - 0.5
    n, m, dim = 4, 8, 3
    table = torch.randn(1, 1 + n * n, dim, generator=torch.Generator().manual_seed(0))
    out = interpolate_position_embeddings(table, m * 16, m * 16, 16)  # (1, 1 + 64, 3)
    assert torch.equal(out[:, 0], table[:, 0])  # CLS entry kept
    grid = table[0, 1:].reshape(n, n, dim).double().numpy()
    w = _bicubic_1d_weights(n, m, (m + 0.1) / n)
    expected = np.einsum("ia,jb,abd->ijd", w, w, grid).reshape(m * m, dim)
    np.testing.assert_allclose(out[0, 1:].numpy(), expected, atol=1e-5, rtol=0)
    # the >= 4.45 rule (scale exactly m / n) gives visibly different numbers
    w_new = _bicubic_1d_weights(n, m, m / n)
    newer = np.einsum("ia,jb,abd->ijd", w_new, w_new, grid).reshape(m * m, dim)
    assert np.abs(newer - expected).max() > 1e-2


def test_position_embeddings_unchanged_at_the_training_size():
    table = torch.randn(1, 1 + 14 * 14, 8)
    assert interpolate_position_embeddings(table, 224, 224, 16) is table
