"""pipeline/reconstructor.py: concurrent batches share the device lock and the CPU pool, and give the meshes
of the plain sequential path."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import triposr
from pipeline.reconstructor import Reconstructor
from pipeline.runner import reconstruct_frames

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tiny"


@pytest.fixture(scope="module")
def frames():
    with Image.open(FIXTURES / "input.png") as a, Image.open(FIXTURES / "input_large.png") as b:
        return [np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB").resize((64, 64)))]


@pytest.fixture(scope="module")
def model():
    return triposr.load_model(FIXTURES, "cpu")


def _same(m1, m2) -> None:
    np.testing.assert_array_equal(m1.vertices, m2.vertices)
    np.testing.assert_array_equal(m1.faces, m2.faces)
    np.testing.assert_array_equal(m1.visual.vertex_colors, m2.visual.vertex_colors)


def test_concurrent_batches_give_the_sequential_meshes(model, frames):
    expected = reconstruct_frames(model, frames, [48, 40])
    recon = Reconstructor(model, cpu_workers=2, overlap=True)
    results: dict[int, list] = {}

    def run(k: int) -> None:
        order = [0, 1] if k % 2 == 0 else [1, 0]
        meshes = recon.reconstruct([frames[i] for i in order], [[48, 40][i] for i in order])
        results[k] = [meshes[order.index(0)], meshes[order.index(1)]]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [0, 1, 2]
    for meshes in results.values():
        _same(meshes[0], expected[0])
        _same(meshes[1], expected[1])
    stats = recon.stats()
    assert stats["batches"] == 3 and stats["frames"] == 6 and stats["device_s"] > 0
    recon.close()


def test_holding_the_device_lock_around_a_call_still_works(model, frames):
    recon = Reconstructor(model, cpu_workers=1)
    with recon.device_lock:  # re-entrant: the unpipelined order
        meshes = recon.reconstruct(frames[:1], [40])
    assert len(meshes[0].faces) > 0
    recon.close()


def test_a_cpu_model_does_not_overlap_by_default(model):
    recon = Reconstructor(model, cpu_workers=1)
    assert recon.overlap is False
    recon.close()
