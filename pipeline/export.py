"""Write a fusion result as a web-ready file: GLB (default), OBJ or PLY (pure Python, no Ray).

`export_bytes(result, format=..., metadata=..., object_size_m=..., target_faces=...) -> bytes` (what the
export deployment returns) and `export_result(result, path, ...) -> Path` (the same bytes written atomically).

* Orientation: TripoSR meshes are Z-up with the camera on +X. glTF is Y-up with the asset's front facing +Z,
  so every format is written with (x, y, z) -> (y, z, x): upright in three.js / model-viewer, and the side the
  (reference) camera saw faces the default viewer camera. Upstream's gradio app uses (-y, z, -x), which is
  also upright but shows the back (a 180-degree turn about Y from ours).
* Colours: meshes carry sRGB vertex colours (uint8). glTF's COLOR_0 is linear, so GLB gets linear float32 RGB
  (float, not 8-bit: dark rubber would band badly after linearising into 8 bits). OBJ/PLY keep sRGB bytes.
* Metadata: GLB puts {"job": metadata, "fusion": report, "export": ...} in scenes[0].extras (trimesh loads it
  as `scene.metadata`); OBJ/PLY carry none (the service keeps report.json beside the mesh).
* Post-processing, in this order: decimation to about `target_faces` (fast-simplification, quadric), then a
  uniform scale so the largest dimension is `object_size_m` metres (glTF units are metres).
* Files are written atomically (`pipeline.atomic.write_atomic`).

The GLB is built with pygltflib (accessors, bufferViews, one binary buffer) rather than exported by trimesh,
whose exporter always stores COLOR_0 as 8-bit. pygltflib's JSON writer drops null and empty values
everywhere, extras included, so the scene extras are put back verbatim after it (`_GLTF2`).
"""

from __future__ import annotations

import enum
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pygltflib
import trimesh

from pipeline.atomic import write_atomic
from pipeline.errors import InvalidParameter
from pipeline.params import OBJECT_SIZE_M_RANGE, TARGET_FACES_RANGE, MeshFormat

if TYPE_CHECKING:
    from pipeline.fusion import FusionResult

logger = logging.getLogger(__name__)

# (x, y, z) -> (y, z, x): TripoSR Z-up, camera on +X  ->  glTF Y-up, front (camera side) on +Z. A proper
# rotation.
Z_UP_TO_Y_UP = np.array(
    [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

GENERATOR = "triposr-serve pipeline.export"


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1 piecewise curve)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded values (inverse of `srgb_to_linear`)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)


def export_result(
    result: FusionResult,
    path: Path,
    *,
    format: MeshFormat | str = MeshFormat.GLB,
    metadata: dict | None = None,
    object_size_m: float | None = None,
    target_faces: int | None = None,
) -> Path:
    """Write `result` (mesh or scene) to `path` atomically and return it; see `export_bytes`."""
    path = Path(path)
    data = export_bytes(
        result, format=format, metadata=metadata, object_size_m=object_size_m, target_faces=target_faces
    )
    write_atomic(path, data)
    logger.info("exported %s (%d bytes) to %s", format, len(data), path)
    return path


def export_bytes(
    result: FusionResult,
    *,
    format: MeshFormat | str = MeshFormat.GLB,
    metadata: dict | None = None,
    object_size_m: float | None = None,
    target_faces: int | None = None,
) -> bytes:
    """The file bytes of `result` (mesh or scene) in `format`.

    Parameters
    ----------
    result : FusionResult from `pipeline.fusion.fuse_meshes` (native Z-up frame).
    format : glb | obj | ply.
    metadata : JSON-able job data (parameters, model id, ...) stored in the GLB's scene extras under "job".
    object_size_m : scale so the largest dimension is this many metres (TripoSR has no metric scale).
    target_faces : decimate to about this many faces (whole result; a scene shares it by face count).

    Raises
    ------
    InvalidParameter : bad format, object_size_m or target_faces, or metadata that is not JSON-able.
    """
    try:
        format = MeshFormat(str(getattr(format, "value", format)).lower())
    except ValueError:
        raise InvalidParameter("format", f"{format!r} is not one of glb, obj, ply") from None
    for name, value in (("object_size_m", object_size_m), ("target_faces", target_faces)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))):
            raise InvalidParameter(name, f"expected a number, got {value!r}")
    if object_size_m is not None and not OBJECT_SIZE_M_RANGE[0] <= object_size_m <= OBJECT_SIZE_M_RANGE[1]:
        raise InvalidParameter("object_size_m", f"{object_size_m} is outside {list(OBJECT_SIZE_M_RANGE)}")
    if target_faces is not None and not TARGET_FACES_RANGE[0] <= target_faces <= TARGET_FACES_RANGE[1]:
        raise InvalidParameter("target_faces", f"{target_faces} is outside {list(TARGET_FACES_RANGE)}")

    parts = _parts(result)
    faces_before = sum(len(m.faces) for _, m in parts)
    if faces_before == 0:
        raise InvalidParameter("result", "nothing to export: the result has no faces")
    if target_faces is not None and target_faces < faces_before:
        parts = [
            (name, decimate(m, max(4, round(target_faces * len(m.faces) / faces_before))))
            for name, m in parts
        ]
    scale = 1.0
    if object_size_m is not None:
        extent = float(np.ptp(np.concatenate([m.bounds for _, m in parts]), axis=0).max())
        scale = object_size_m / max(extent, 1e-12)
    transform = Z_UP_TO_Y_UP.copy()
    transform[:3, :3] *= scale
    for _, m in parts:
        m.apply_transform(transform)

    export_info = {
        "format": format.value,
        "up_axis": "+Y",
        "front_axis": "+Z",
        "from_native": "(x, y, z) -> (y, z, x), TripoSR Z-up camera +X to glTF Y-up front +Z",
        "matrix_from_native": transform.tolist(),  # 4x4: fusion result coordinates -> file coordinates
        "object_size_m": object_size_m,
        "scale_applied": scale,
        "units": "m" if object_size_m is not None else "TripoSR units (no metric scale)",
        "target_faces": target_faces,
        "faces": int(sum(len(m.faces) for _, m in parts)),
        "vertices": int(sum(len(m.vertices) for _, m in parts)),
        "color_0": "linear float32 RGB" if format is MeshFormat.GLB else "sRGB uint8",
    }
    if format is MeshFormat.GLB:
        extras = _jsonable({"job": metadata or {}, "fusion": result.report, "export": export_info})
        data = glb_bytes(parts, extras)
    else:
        data = _trimesh_bytes(parts, format)
    logger.info("exported %s faces=%d", format.value, export_info["faces"])
    return data


def decimate(mesh: trimesh.Trimesh, target_faces: int) -> trimesh.Trimesh:
    """Quadric decimation to about `target_faces` (fast-simplification); colours from the nearest old
    vertex."""
    if target_faces >= len(mesh.faces):
        return mesh.copy()
    import fast_simplification
    from scipy.spatial import cKDTree

    points, faces = fast_simplification.simplify(
        np.asarray(mesh.vertices, dtype=np.float64),
        np.asarray(mesh.faces, dtype=np.int32),
        target_count=int(target_faces),
    )
    out = trimesh.Trimesh(points, faces, process=True)
    if mesh.visual.kind == "vertex" and len(out.vertices):
        _, nearest = cKDTree(mesh.vertices).query(out.vertices)
        out.visual.vertex_colors = np.asarray(mesh.visual.vertex_colors)[nearest]
    return out


def glb_bytes(
    parts: list[tuple[str, trimesh.Trimesh]],
    extras: dict | None = None,
    node_extras: list[dict] | None = None,
) -> bytes:
    """Binary glTF 2.0 bytes, one node + mesh per part.

    Attributes: POSITION, NORMAL, COLOR_0 (linear float32 RGB, when the part has vertex colours); uint32
    indices; one matte material; `extras` on scenes[0]; `node_extras[i]` (non-empty dicts) on node i.
    """
    gltf = _GLTF2(
        asset=pygltflib.Asset(generator=GENERATOR, version="2.0"),
        scene=0,
        # matte, non-metal: glTF's default material is fully metallic, which renders vertex colours near black
        materials=[
            pygltflib.Material(
                name="vertex_colour",
                pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(
                    baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=0.9
                ),
            )
        ],
    )
    blob = bytearray()

    def add(array: np.ndarray, component: int, kind: str, target: int, with_bounds: bool = False) -> int:
        raw = np.ascontiguousarray(array).tobytes()
        gltf.bufferViews.append(
            pygltflib.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(raw), target=target)
        )
        blob.extend(raw + b"\x00" * ((-len(raw)) % 4))  # every bufferView starts 4-byte aligned
        accessor = pygltflib.Accessor(
            bufferView=len(gltf.bufferViews) - 1, componentType=component, count=len(array), type=kind
        )
        if with_bounds:
            accessor.min = [float(x) for x in array.min(axis=0)]
            accessor.max = [float(x) for x in array.max(axis=0)]
        gltf.accessors.append(accessor)
        return len(gltf.accessors) - 1

    for name, mesh in parts:
        vertices = np.asarray(mesh.vertices, dtype=np.float32)
        normals = np.asarray(mesh.vertex_normals, dtype=np.float32)
        norm = np.linalg.norm(normals, axis=1, keepdims=True)
        normals = np.where(norm > 1e-6, normals / np.maximum(norm, 1e-6), np.array([0, 1, 0], np.float32))
        attributes = pygltflib.Attributes(
            POSITION=add(vertices, pygltflib.FLOAT, pygltflib.VEC3, pygltflib.ARRAY_BUFFER, with_bounds=True),
            NORMAL=add(normals.astype(np.float32), pygltflib.FLOAT, pygltflib.VEC3, pygltflib.ARRAY_BUFFER),
        )
        if mesh.visual.kind == "vertex":
            srgb = np.asarray(mesh.visual.vertex_colors[:, :3], dtype=np.float64) / 255.0
            linear = srgb_to_linear(srgb).astype(np.float32)
            attributes.COLOR_0 = add(linear, pygltflib.FLOAT, pygltflib.VEC3, pygltflib.ARRAY_BUFFER)
        indices = add(
            np.asarray(mesh.faces, dtype=np.uint32).ravel(),
            pygltflib.UNSIGNED_INT,
            pygltflib.SCALAR,
            pygltflib.ELEMENT_ARRAY_BUFFER,
        )
        gltf.meshes.append(
            pygltflib.Mesh(
                name=name,
                primitives=[
                    pygltflib.Primitive(
                        attributes=attributes, indices=indices, material=0, mode=pygltflib.TRIANGLES
                    )
                ],
            )
        )
        node = pygltflib.Node(name=name, mesh=len(gltf.meshes) - 1)
        if node_extras and node_extras[len(gltf.nodes)]:
            node.extras = node_extras[len(gltf.nodes)]
        gltf.nodes.append(node)

    gltf.scenes = [pygltflib.Scene(nodes=list(range(len(gltf.nodes))))]
    gltf.scene_extras = extras or None
    gltf.buffers = [pygltflib.Buffer(byteLength=len(blob))]
    gltf.set_binary_blob(bytes(blob))
    return b"".join(gltf.save_to_bytes())


class _GLTF2(pygltflib.GLTF2):
    """pygltflib.GLTF2 whose scenes[0].extras are written verbatim.

    pygltflib's JSON writer drops every null or empty value, recursively and inside extras too, which would
    lose e.g. `"object_size_m": null` or an empty `"job": {}`. The extras are kept out of the dataclass
    tree and put back into the JSON that `save_to_bytes` packs.
    """

    scene_extras: dict | None = None

    def gltf_to_json(self, separators: tuple[str, str] | None = None, indent: str | None = "  ") -> str:
        text = super().gltf_to_json(separators=separators, indent=indent)
        if not self.scene_extras:
            return text
        tree = json.loads(text)
        tree["scenes"][0]["extras"] = self.scene_extras
        return json.dumps(tree, separators=separators, indent=indent, allow_nan=False)


def _parts(result: FusionResult) -> list[tuple[str, trimesh.Trimesh]]:
    """Copies of the result's meshes with scene transforms applied, named."""
    if result.mesh is not None:
        return [("fused" if result.report.get("strategy") == "fused" else "mesh", result.mesh.copy())]
    if result.scene is None:
        raise InvalidParameter("result", "FusionResult has neither a mesh nor a scene")
    parts = []
    for node in sorted(result.scene.graph.nodes_geometry):
        matrix, geom_name = result.scene.graph[node]
        mesh = result.scene.geometry[geom_name].copy()
        mesh.apply_transform(matrix)
        parts.append((str(node), mesh))
    return parts


def _trimesh_bytes(parts: list[tuple[str, trimesh.Trimesh]], format: MeshFormat) -> bytes:
    mesh = parts[0][1] if len(parts) == 1 else trimesh.util.concatenate([m for _, m in parts])
    data = mesh.export(file_type=format.value)
    return data.encode("utf-8") if isinstance(data, str) else data


def _jsonable(value: Any) -> Any:
    """Plain-JSON copy of `value` (numpy scalars/arrays, enums, paths converted); NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise InvalidParameter("metadata", f"value {value!r} of type {type(value).__name__} is not JSON-able")
