"""What a job keeps in its folder so that a re-run resumes from its last finished stage, not from scratch.

    <job>/checkpoint/preprocessed.npz   frames uint8 (N, 512, 512, 3), scores, reports + input kind (JSON)
    <job>/checkpoint/mesh_NN.npz        each finished per-frame mesh (pipeline.meshcodec arrays)

Only the ingress writes them (it owns the data dir), each atomically, so a file that exists is complete.
Cost: ~0.8 MB per frame (512x512x3 bytes, uncompressed for speed) plus each mesh's arrays (vertices 12 B and
faces 12 B each: ~3 MB for a 256^3 tyre frame); removed when the job ends.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import write_atomic
from pipeline.meshcodec import MeshArrays, meshes_from_bytes, meshes_to_bytes


class Checkpoints:
    def __init__(self, job_dir: Path) -> None:
        self.dir = Path(job_dir) / "checkpoint"

    def save_preprocessed(self, payload: dict[str, Any]) -> None:
        meta = json.dumps(
            {"scores": payload["scores"], "reports": payload["reports"], "kind": payload["kind"]}
        )
        buf = io.BytesIO()
        np.savez(
            buf, frames=np.asarray(payload["frames"], np.uint8), meta=np.frombuffer(meta.encode(), np.uint8)
        )
        write_atomic(self.dir / "preprocessed.npz", buf.getvalue())

    def load_preprocessed(self) -> dict[str, Any] | None:
        """The preprocess payload of an earlier run, or None."""
        path = self.dir / "preprocessed.npz"
        if not path.is_file():
            return None
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            return {"frames": data["frames"], **meta}

    def save_mesh(self, index: int, mesh: MeshArrays) -> None:
        write_atomic(self.dir / f"mesh_{index:02d}.npz", meshes_to_bytes([mesh]))

    def load_meshes(self, count: int) -> dict[int, MeshArrays]:
        """Finished per-frame meshes of an earlier run, by frame index."""
        out = {}
        for i in range(count):
            path = self.dir / f"mesh_{i:02d}.npz"
            if path.is_file():
                (out[i],) = meshes_from_bytes(path.read_bytes())
        return out

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
