"""What a worker replica is built from: small typed options, made by `serve_app` from its `Settings`.

Deployments never import `serve_app` (layers point one way); they need no `data_dir` either, since every
value they work on arrives through Ray and leaves as a return value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PreprocessOptions:
    rembg_model: str = "u2net"
    rembg_dir: Path | None = None  # folder holding <rembg_model>.onnx; None: rembg's own home
    rembg_threads: int | None = None  # onnxruntime threads; None: the replica's num_cpus, rounded up


@dataclass(frozen=True)
class ReconstructOptions:
    model_source: str = "stabilityai/TripoSR"
    model_device: str | None = None
    model_half: bool = False
    chunk_size: int = 65536
    torch_threads: int | None = None  # None: the replica's num_cpus, rounded up
