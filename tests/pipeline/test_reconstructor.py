"""pipeline/reconstructor.py: concurrent batches share the device lock and the CPU pool, and give the meshes
of the plain sequential path."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial import cKDTree

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
    """The same surface up to float rounding: BLAS does not promise bitwise-equal results when a frame sits at
    another row of a batch or the CPU differs (CI saw 7.5e-6 on 37 of 10254 coordinates), so compare surfaces,
    with a tolerance a hundred times below the grid step; frames mixed up across batches miss it by far."""
    assert abs(len(m1.faces) - len(m2.faces)) <= 0.01 * len(m2.faces), (len(m1.faces), len(m2.faces))
    d12, n12 = cKDTree(m2.vertices).query(m1.vertices)
    d21, _ = cKDTree(m1.vertices).query(m2.vertices)
    assert max(d12.max(), d21.max()) < 1e-3, max(d12.max(), d21.max())
    colours = np.abs(m1.visual.vertex_colors.astype(int) - m2.visual.vertex_colors[n12].astype(int))
    assert colours.max() <= 2, colours.max()


def test_concurrent_batches_give_the_sequential_meshes(model, frames):
    expected = reconstruct_frames(model, frames, [48, 40])
    with pytest.raises(AssertionError):  # the comparison tells the two frames apart
        _same(reconstruct_frames(model, frames[:1], [40])[0], expected[1])
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


def test_a_frame_cancelled_during_refinement_stops_there_and_its_batch_mate_is_unchanged(model, frames):
    """Cancelling while the batch's density queries run: from the next refinement round on, the cancelled
    frame's queries never reach the decoder (the replica is free within a round, not after the whole
    batch), and the other frame's mesh is the one it gets alone."""
    points: list[int] = []
    real_decode = model._decode_many

    def counting(codes, pts):  # the real decoder, with the points it is asked for counted
        points.append(sum(len(p) for p in pts))
        return real_decode(codes, pts)

    def decoded(batch, skip=None) -> tuple[int, list]:
        points.clear()
        recon = Reconstructor(model, cpu_workers=2)
        model._decode_many = counting
        try:
            out = recon.reconstruct(batch, [64] * len(batch), skip=skip)
        finally:
            del model._decode_many
            recon.close()
        return sum(points), out

    both, _ = decoded(frames)
    alone, (expected,) = decoded(frames[1:])
    asked = {0: 0}

    def cancel_after_first_round(i: int) -> bool:  # frame 0's request is cancelled after one round
        if i == 0:
            asked[0] += 1
        return i == 0 and asked[0] > 3  # the checks before and after encode, then its first round

    cancelled, out = decoded(frames, cancel_after_first_round)
    assert out[0] is None
    _same(out[1], expected)
    assert alone < cancelled < alone + (both - alone) / 2, (alone, cancelled, both)


def test_every_model_call_runs_on_one_thread_whoever_calls(model, frames, monkeypatch):
    """One OpenMP team for the forward: a second team (a warm-up on another thread) made libgomp stop spinning
    at barriers and the full-size forward 12-15 % slower on 2 cores (see the module docstring)."""
    recon = Reconstructor(model, cpu_workers=2, overlap=True)
    seen: set[int] = set()
    for name in ("encode", "extract_volumes", "vertex_colors", "query"):
        method = getattr(model, name)

        def recording(*args, _method=method, **kwargs):
            seen.add(threading.get_ident())
            return _method(*args, **kwargs)

        monkeypatch.setattr(model, name, recording)
    recon.on_device(model.encode, frames[:1])  # the replica's warm-up, from this (main) thread
    callers = [threading.Thread(target=recon.reconstruct, args=([f], [32])) for f in frames]
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=120)
    # re-entrant: a model call made on the model thread itself runs there at once
    recon.on_device(lambda: recon.on_device(model.query, torch.zeros((4, 3)), recon.on_device(
        model.encode, frames[:1])[0]))  # fmt: skip
    assert len(seen) == 1 and threading.get_ident() not in seen
    assert recon.stats()["frames"] == 2
    recon.close()
