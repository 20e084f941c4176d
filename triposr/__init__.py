"""TripoSR (single image -> 3D mesh) in plain PyTorch: loads the official `stabilityai/TripoSR` checkpoint
unchanged.

    from triposr import load_model
    model = load_model("stabilityai/TripoSR")          # or a local folder with config.yaml + model.ckpt
    codes = model.encode([image])                       # (B, 3, 40, 64, 64)
    mesh = model.extract_mesh(codes[0], resolution=256)  # trimesh.Trimesh, Z up

Modules in reading order: config, vit, transformer, triplane, decoder, mesh, model, loading; `python -m
triposr` is the command line.
"""

from .config import TripoSRConfig, ViTConfig
from .errors import ConfigError, ModelNotFoundError, TripoSRError
from .loading import load_model, pick_device
from .model import TripoSR

__all__ = [
    "ConfigError",
    "ModelNotFoundError",
    "TripoSR",
    "TripoSRConfig",
    "TripoSRError",
    "ViTConfig",
    "load_model",
    "pick_device",
]
