"""Mesh extraction for several frames at once (`TripoSR.extract_meshes`): shared decoder calls, same meshes
as one frame at a time, whatever the batch holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import triposr


@pytest.fixture(scope="module")
def batch_model(tiny_model_dir):
    """A private tiny model with a small chunk size, so decoder calls mix the points of several frames."""
    model = triposr.load_model(tiny_model_dir, "cpu", chunk_size=4096)
    return model


@pytest.fixture(scope="module")
def codes(batch_model, tiny_model_dir):
    with Image.open(tiny_model_dir / "input.png") as a, Image.open(tiny_model_dir / "input_large.png") as b:
        return list(batch_model.encode([a, b]))


def _same(m1, m2) -> None:
    np.testing.assert_array_equal(m1.vertices, m2.vertices)
    np.testing.assert_array_equal(m1.faces, m2.faces)
    np.testing.assert_array_equal(m1.visual.vertex_colors, m2.visual.vertex_colors)


@pytest.mark.parametrize("method", ["adaptive", "dense"])
def test_batched_meshes_equal_one_at_a_time_whatever_the_batch_holds(batch_model, codes, method):
    a, b = codes
    alone_a = batch_model.extract_meshes([a], [48], method=method)[0]
    alone_b = batch_model.extract_meshes([b], [40], method=method)[0]
    assert len(alone_a.faces) > 0 and len(alone_b.faces) > 0
    for batch, res, where_a, where_b in (
        ([a, b], [48, 40], 0, 1),
        ([b, a, b], [40, 48, 40], 1, 2),
    ):
        meshes = batch_model.extract_meshes(batch, res, method=method)
        _same(meshes[where_a], alone_a)
        _same(meshes[where_b], alone_b)


def test_extract_mesh_is_the_batched_path_for_one_frame(batch_model, codes):
    _same(batch_model.extract_mesh(codes[0], resolution=48), batch_model.extract_meshes([codes[0]], [48])[0])


def test_lockstep_groups_bound_the_samples_in_flight(monkeypatch, batch_model, codes):
    import triposr.model as model_module

    together = batch_model.extract_meshes(codes, [40, 40])
    monkeypatch.setattr(model_module, "LOCKSTEP_SAMPLES", 40**3)  # one frame per group
    assert model_module._lockstep_groups([40, 40]) == [[0], [1]]
    for m1, m2 in zip(batch_model.extract_meshes(codes, [40, 40]), together, strict=True):
        _same(m1, m2)


def test_mismatched_resolutions_are_refused(batch_model, codes):
    with pytest.raises(ValueError, match="resolutions"):
        batch_model.extract_meshes(codes, [32])


def test_decoder_rows_below_the_floor_are_padded(batch_model, codes):
    code = codes[0]
    points = torch.rand(3, 3) - 0.5
    few = batch_model._decode_many([code], [points])[0]
    many = batch_model._decode_many([code], [torch.cat([points, torch.rand(500, 3) - 0.5])])[0][:3]
    assert torch.equal(few, many)
