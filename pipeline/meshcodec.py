"""The one mesh codec: a per-frame mesh as three compact arrays, for the wire and for checkpoint files.

    vertices float32 (V, 3)   faces int32 (F, 3)   colors uint8 (V, 4) RGBA sRGB, or absent

`encode_mesh` / `decode_mesh` give the arrays (what crosses a Ray boundary: numpy arrays ride the object store
without pickling their data); `meshes_to_bytes` / `meshes_from_bytes` pack any number of them into one npz
blob (checkpoints, Ray Data columns). Empty meshes are allowed. No Ray here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import trimesh

MeshArrays = dict[str, np.ndarray]
_KEYS = ("vertices", "faces", "colors")


def encode_mesh(mesh: trimesh.Trimesh) -> MeshArrays:
    """trimesh -> {vertices float32 (V,3), faces int32 (F,3)[, colors uint8 (V,4)]}."""
    vertices = np.ascontiguousarray(mesh.vertices, np.float32).reshape(-1, 3)
    if len(vertices) >= np.iinfo(np.int32).max:  # pragma: no cover - 2^31 vertices do not fit a frame
        raise ValueError(f"mesh with {len(vertices)} vertices does not fit int32 face indices")
    arrays = {"vertices": vertices, "faces": np.ascontiguousarray(mesh.faces, np.int32).reshape(-1, 3)}
    colors = getattr(mesh.visual, "vertex_colors", None)
    if colors is not None and len(colors) == len(vertices) and len(vertices):
        arrays["colors"] = np.ascontiguousarray(colors, np.uint8)
    return arrays


def decode_mesh(arrays: Any) -> trimesh.Trimesh:
    """The arrays of `encode_mesh` (a dict or an npz view) -> trimesh, unprocessed (exact arrays)."""
    import trimesh

    colors = arrays.get("colors")
    return trimesh.Trimesh(
        np.asarray(arrays["vertices"], np.float64), np.asarray(arrays["faces"], np.int64),
        vertex_colors=colors, process=False,
    )  # fmt: skip


def mesh_stats(arrays: MeshArrays) -> dict[str, int]:
    return {"vertices": len(arrays["vertices"]), "faces": len(arrays["faces"])}


def meshes_to_bytes(meshes: Sequence[MeshArrays]) -> bytes:
    """Several encoded meshes -> one npz blob (keys `<i>/vertices`, ...)."""
    flat = {f"{i}/{k}": m[k] for i, m in enumerate(meshes) for k in _KEYS if k in m}
    buf = io.BytesIO()
    np.savez(buf, count=np.array(len(meshes)), **flat)
    return buf.getvalue()


def meshes_from_bytes(blob: bytes) -> list[MeshArrays]:
    with np.load(io.BytesIO(blob)) as data:
        count = int(data["count"])
        return [{k: data[f"{i}/{k}"] for k in _KEYS if f"{i}/{k}" in data.files} for i in range(count)]
