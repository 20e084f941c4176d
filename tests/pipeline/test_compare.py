"""pipeline/compare.py on synthetic tyres with TripoSR-like perturbations (tests/tyres.py).

The reference is a perturbed tyre in its own frame (axis +Z, angle 0 on +X); every candidate is a separate
perturbation: random rotation, translation, scale 0.85-1.15, +-0.5 voxel noise at mc 256, floaters.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.compare import compare_meshes
from pipeline.errors import CompareError
from tests import tyres

SIZE_M = 0.72


@pytest.fixture(scope="module")
def reference():
    mesh, _ = tyres.triposr_like(tyres.racing_tyre(), seed=1, move=False)
    return mesh


def _candidate(seed: int, **tyre_kwargs):
    mesh, matrix = tyres.triposr_like(tyres.racing_tyre(**tyre_kwargs), seed=seed)
    return mesh, matrix


def test_worn_sector_is_found_where_it_was_cut(reference):
    candidate, _ = _candidate(2, wear=tyres.sector_wear(0.003, 60.0, 120.0))
    report = compare_meshes(reference, candidate, object_size_m=SIZE_M).report
    assert report["units"] == "mm"
    assert report["alignment"]["turn_determined"] is True
    sectors = {s["index"]: s for s in report["sectors"]}
    assert len(sectors) == 36
    for i in range(6, 12):  # 60..120 degrees
        assert sectors[i]["mean_loss"] == pytest.approx(3.0, abs=0.5), sectors[i]
        assert sectors[i]["area_fraction_over_threshold"] > 0.8
    for i in [*range(0, 5), *range(13, 36)]:  # away from the cut's edges (one sector of blur each side)
        assert sectors[i]["mean_loss"] < 0.5, sectors[i]
    assert report["loss"]["max"] > report["noise_floor"]  # the loss stands out of the noise


def test_uniformly_worn_tread_is_not_absorbed_by_the_scale(reference):
    candidate, matrix = _candidate(3, wear=tyres.tread_wear(0.002))
    report = compare_meshes(reference, candidate, object_size_m=SIZE_M).report
    bands = report["bands"]
    assert bands["tread"]["mean_loss"] == pytest.approx(2.0, abs=0.5), bands
    assert bands["sidewall"]["mean_loss"] < 0.5, bands
    true_scale = 1.0 / np.cbrt(np.linalg.det(matrix[:3, :3])) * tyres.UNITS_PER_M
    assert report["alignment"]["scale"] == pytest.approx(true_scale, rel=1.5e-3)


@pytest.mark.parametrize("seed", [4, 5])
def test_identical_tyre_shows_only_noise(reference, seed):
    candidate, matrix = _candidate(seed)
    result = compare_meshes(reference, candidate, object_size_m=SIZE_M)
    report = result.report
    assert report["loss"]["max"] < 3 * report["noise_floor"]
    assert report["loss"]["area_fraction"] < 0.01
    assert report["alignment"]["turn_determined"] is True
    assert 0 < report["noise_floor"] < 2.0  # mm, at mc 256
    true_scale = 1.0 / np.cbrt(np.linalg.det(matrix[:3, :3])) * tyres.UNITS_PER_M
    assert report["alignment"]["scale"] == pytest.approx(true_scale, rel=1e-3)
    assert report["surface"]["candidate"]["floaters_removed"] == 3
    assert len(result.distance) == len(result.mesh.vertices)
    assert result.mesh.visual.vertex_colors.shape == (len(result.mesh.vertices), 4)


def test_report_has_the_documented_fields(reference):
    candidate, _ = _candidate(6)
    report = compare_meshes(reference, candidate).report  # no object size: fractions
    assert report["units"] == "fraction"
    assert report["threshold"] == pytest.approx(1e-3)
    for key in (
        "units",
        "alignment",
        "noise_floor",
        "distance",
        "loss",
        "gain",
        "sectors",
        "bands",
        "colour_scale",
    ):
        assert key in report
    assert set(report["alignment"]) >= {"rms", "scale", "axis", "turn_deg", "turn_determined"}
    assert set(report["distance"]) >= {"mean", "p05", "p50", "p95"}
    assert set(report["loss"]) >= {"max", "mean", "area", "area_fraction"}
    assert set(report["bands"]) == {"tread", "shoulder", "sidewall"}
    assert abs(report["alignment"]["axis"][2]) == pytest.approx(1.0, abs=1e-2)
    assert report["noise_floor"] < 3e-3  # under 0.3% of the size


def test_pure_turn_is_reported(reference):
    turned = tyres.racing_tyre()
    turned.apply_transform(_rotation_z(40.0))
    candidate, _ = tyres.triposr_like(turned, seed=7, move=False)
    report = compare_meshes(reference, candidate, object_size_m=SIZE_M).report
    # the candidate's angle 0 (its +X) sits at -40 degrees of the tyre: the alignment turns it there
    assert report["alignment"]["turn_deg"] == pytest.approx(-40.0, abs=1.0)


@pytest.mark.parametrize("other", ["box", "sphere", "mirrored"])
def test_different_or_mirrored_object_is_not_comparable(reference, other):
    shape = tyres.racing_tyre(mirrored=True) if other == "mirrored" else getattr(tyres, other)()
    candidate, _ = tyres.triposr_like(shape, seed=8)
    with pytest.raises(CompareError) as error:
        compare_meshes(reference, candidate, object_size_m=SIZE_M)
    assert error.value.code == "not_comparable"


def test_boxes_without_an_axis_align_by_their_principal_frame():
    reference, _ = tyres.triposr_like(tyres.box(), seed=9, move=False, floaters=0)
    candidate, _ = tyres.triposr_like(tyres.box(), seed=10, floaters=0)
    report = compare_meshes(reference, candidate, object_size_m=0.7).report
    assert report["sectors"] is None and report["bands"] is None
    assert report["alignment"]["axis"] is None
    assert report["loss"]["area_fraction"] < 0.02


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    out = np.eye(4)
    out[:2, :2] = [[c, -s], [s, c]]
    return out


def test_axis_and_angle_zero_follow_the_documented_convention():
    """A reference lying upside down (its tyre axis along -Z): the axis is reported as +Z, angle 0 stays on
    +X and angles turn counter-clockwise about +Z, so the cut at tyre angles 60..120 reads at 240..300."""
    flipped, _ = tyres.triposr_like(tyres.racing_tyre(), seed=1, move=False)
    flipped.apply_transform(np.diag([1.0, -1.0, -1.0, 1.0]))
    candidate, _ = _candidate(2, wear=tyres.sector_wear(0.003, 60.0, 120.0))
    report = compare_meshes(flipped, candidate, object_size_m=SIZE_M).report
    assert report["alignment"]["axis"][2] == pytest.approx(1.0, abs=1e-2)
    assert report["sector_frame"]["zero_direction"][0] == pytest.approx(1.0, abs=1e-2)
    worn = [s["index"] for s in report["sectors"] if s["mean_loss"] > 1.5]
    assert worn == list(range(24, 30)), worn
