"""`python -m triposr`: the tiny model end to end, in a subprocess as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from triposr.mesh import GLTF_FROM_NATIVE

from .conftest import FIXTURES, chamfer

ROOT = FIXTURES.parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "triposr", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_writes_a_y_up_glb_with_vertex_colours(tmp_path, tiny_model, tiny_codes, tiny_model_dir):
    out = tmp_path / "out"
    result = run_cli(
        str(tiny_model_dir / "input.png"),
        "-o",
        str(out),
        "--model",
        str(tiny_model_dir),
        "--mc-resolution",
        "32",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert "input.png ->" in result.stderr and "reconstruct" in result.stderr  # progress display
    glb = trimesh.load(out / "input.glb", force="mesh")
    native = tiny_model.extract_mesh(tiny_codes, resolution=32)
    assert len(glb.faces) == len(native.faces)
    # Y-up: native (x, y, z) -> glTF (y, z, x); the native up axis (Z) is glTF's Y
    expected = trimesh.transform_points(native.vertices, GLTF_FROM_NATIVE)
    assert chamfer(glb.vertices, expected)[1] < 1e-5
    np.testing.assert_allclose(glb.extents, native.extents[[1, 2, 0]], atol=1e-5)
    assert glb.volume > 0  # a rotation keeps the outward winding
    colors = glb.visual.vertex_colors
    assert colors.shape == (len(glb.vertices), 4) and len(np.unique(colors[:, :3], axis=0)) > 10


def test_cli_composites_rgba_on_grey_and_writes_obj_in_the_native_frame(tmp_path, tiny_model, tiny_model_dir):
    rgb = np.asarray(Image.open(tiny_model_dir / "input.png"))
    alpha = np.full((*rgb.shape[:2], 1), 255, np.uint8)
    rgba_path = tmp_path / "object.png"
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(rgba_path)
    result = run_cli(
        str(rgba_path),
        "-o",
        str(tmp_path),
        "--model",
        str(tiny_model_dir),
        "--format",
        "obj",
        "--native-frame",
        "--mc-resolution",
        "32",
        "--method",
        "dense",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    obj = trimesh.load(tmp_path / "object.obj", force="mesh", process=False)
    reference = np.load(tiny_model_dir / "vertices.npy")  # fully opaque alpha: same as the RGB input
    assert chamfer(obj.vertices, reference)[1] < 1e-4


def test_cli_reports_a_missing_model_without_a_traceback(tmp_path, tiny_model_dir):
    result = run_cli(
        str(tiny_model_dir / "input.png"), "-o", str(tmp_path), "--model", str(tmp_path / "none")
    )
    assert result.returncode == 1
    assert "error:" in result.stderr and "hf download" in result.stderr and "Traceback" not in result.stderr


def test_cli_reports_a_missing_image(tmp_path, tiny_model_dir):
    result = run_cli(str(tmp_path / "nope.png"), "-o", str(tmp_path), "--model", str(tiny_model_dir))
    assert result.returncode == 2 and "no such image" in result.stderr


def test_help_runs():
    result = run_cli("--help")
    assert result.returncode == 0 and "IMAGE" in result.stdout.upper()


def test_module_has_a_main_guard():
    assert "__main__" in Path(ROOT / "triposr" / "__main__.py").read_text()
