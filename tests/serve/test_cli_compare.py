"""`triposr-serve compare`: two mesh files compared in-process (no service); mistakes are one-line errors."""

from __future__ import annotations

import json

import pygltflib
import pytest

from serve_app.cli import main
from tests import tyres


@pytest.fixture(scope="module")
def tyre_meshes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_compare")
    reference, _ = tyres.triposr_like(tyres.racing_tyre(spacing_m=0.008), seed=21, move=False)
    candidate, _ = tyres.triposr_like(
        tyres.racing_tyre(spacing_m=0.008, wear=tyres.tread_wear(0.002)), seed=22
    )
    mirrored, _ = tyres.triposr_like(tyres.racing_tyre(spacing_m=0.008, mirrored=True), seed=23)
    paths = {}
    for name, mesh, kind in (
        ("ref", reference, "glb"),
        ("cand", candidate, "obj"),
        ("mirror", mirrored, "ply"),
    ):
        paths[name] = folder / f"{name}.{kind}"
        paths[name].write_bytes(
            mesh.export(file_type=kind).encode() if kind == "obj" else mesh.export(file_type=kind)
        )
    return paths


def test_compare_files_in_process_writes_heatmap_report_and_chart(capsys, tyre_meshes, tmp_path):
    out, report, chart = tmp_path / "diff.glb", tmp_path / "diff.json", tmp_path / "diff.png"
    files = [str(tyre_meshes["ref"]), str(tyre_meshes["cand"])]
    options = [
        "--report",
        str(report),
        "--chart",
        str(chart),
        "--object-size-m",
        "0.72",
        "--threshold-mm",
        "1",
    ]
    argv = ["compare", *files, "-o", str(out), *options]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "noise floor" in printed and "tread" in printed
    doc = json.loads(report.read_text())
    assert doc["units"] == "mm" and doc["bands"]["tread"]["mean_loss"] == pytest.approx(2.0, abs=0.6)
    gltf = pygltflib.GLTF2.load(str(out))
    assert gltf.scenes[0].extras["triposr_compare"]["noise_floor"] == doc["noise_floor"]
    assert chart.read_bytes()[:4] == b"\x89PNG"


def test_mirrored_file_is_a_one_line_not_comparable(capsys, tyre_meshes, tmp_path):
    assert (
        main(["compare", str(tyre_meshes["ref"]), str(tyre_meshes["mirror"]), "-o", str(tmp_path / "x.glb")])
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: not_comparable") and err.count("\n") == 1
    assert not (tmp_path / "x.glb").exists()


def test_missing_file_is_a_one_line_error(capsys, tyre_meshes, tmp_path):
    assert main(["compare", str(tyre_meshes["ref"]), str(tmp_path / "nope.glb")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope.glb" in err and err.count("\n") == 1
