"""`load_model`: the only code in `triposr` that reads files or talks to the Hugging Face hub. Replaces
upstream's `TSR.from_pretrained` (tsr/system.py), which also downloads the DINO config from the hub on every
construction.

A source is a local folder (upstream format: `config.yaml` + `model.ckpt`) or a Hugging Face repo id, fetched
with `huggingface_hub` cache-first (so `HF_HOME`, `HF_HUB_CACHE` and `HF_HUB_OFFLINE` apply as everywhere
else). The image encoder named in the config is `facebook/dino-vitb16` (hyper-parameters known, nothing
downloaded) or a folder holding a ViT `config.json`, relative to the model folder. The checkpoint is loaded
with `weights_only=True` and strictly: any missing, unreadable or mismatched file raises one
`ModelNotFoundError`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .config import DINO_VITB16, TripoSRConfig, ViTConfig, resolve_yaml
from .errors import ConfigError, ModelNotFoundError
from .host_memory import keep_freed_memory
from .model import DEFAULT_CHUNK_SIZE, TripoSR

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = "stabilityai/TripoSR"
CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.ckpt"
HOW_TO_GET = (
    "Get the weights on a machine with internet access with "
    f"`hf download {DEFAULT_SOURCE} {CONFIG_NAME} {WEIGHTS_NAME} --local-dir DIR` and pass DIR as the model "
    f"source, or load '{DEFAULT_SOURCE}' once online so the Hugging Face cache (HF_HOME) holds them."
)

# Image encoders known without a download: upstream fetches only this config.json, never the DINO weights
# (they are inside model.ckpt).
KNOWN_IMAGE_ENCODERS = {DINO_VITB16: ViTConfig()}

# transformers >= 5.9 renamed the ViT modules (reference/triposr/vit_key_renames_transformers5.tsv); a
# checkpoint re-saved with those names is mapped back to the 4.x names of the official checkpoint.
_VIT_PREFIX = "image_tokenizer.model."
_NEW_TO_OLD_VIT_KEYS = [
    (".layers.", ".encoder.layer."),
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA, else Apple MPS, else CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_model(
    source: str | os.PathLike[str] = DEFAULT_SOURCE,
    device: str | torch.device | None = None,
    *,
    half: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> TripoSR:
    """Build TripoSR from `source` (folder or Hugging Face repo id) and strict-load its checkpoint, in eval
    mode.

    half: store the image encoder and backbone in float16 and run them under autocast (CUDA only; elsewhere a
    warning is logged and the model stays float32). The decoder and mesh extraction always run in float32.
    chunk_size: points per decoder call in `query` / `extract_mesh` (memory bound; 0 = everything at once).
    Raises ModelNotFoundError (files missing, unreadable or not matching the config) or ConfigError.
    """
    target = pick_device(device)
    if target.type == "cpu":
        keep_freed_memory()  # before the weights are read: activations and weights share the heap's rules
    folder, repo_id = _locate(source)
    config = read_config(folder, repo_id)
    state = read_state_dict(folder / WEIGHTS_NAME)
    with torch.device("meta"):
        model = TripoSR(config, chunk_size=chunk_size)
    _check_keys(model, state, folder / WEIGHTS_NAME)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    model.to(target)
    if half:
        if target.type == "cuda":
            model.half_encoder()
        else:
            logger.warning("half precision is only used on CUDA; %s runs in float32", target)
    logger.info(
        "loaded TripoSR from %s on %s%s", source, target, " (float16 encoder)" if model.half_precision else ""
    )
    return model


def _locate(source: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """-> (folder holding config.yaml and model.ckpt, repo id or None for a local folder)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path, None
    text = os.fspath(source)
    if path.exists():
        raise ModelNotFoundError(
            f"model source {path} is a file; expected a folder with {CONFIG_NAME} and "
            f"{WEIGHTS_NAME}. {HOW_TO_GET}",
            str(path),
        )
    if not _REPO_ID.match(text):
        raise ModelNotFoundError(f"model folder {path} does not exist. {HOW_TO_GET}", str(path))
    config_file = _hub_file(text, CONFIG_NAME)
    _hub_file(text, WEIGHTS_NAME)
    return Path(config_file).parent, text


def _hub_file(repo_id: str, filename: str) -> str:
    """Path of `filename` from the hub cache, downloading it only if the cache lacks it and the hub is
    allowed."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    try:
        return hf_hub_download(repo_id, filename, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError):
        pass
    try:
        return hf_hub_download(repo_id, filename)
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, HFValidationError, OSError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        reason = "HF_HUB_OFFLINE is set and the Hugging Face cache lacks it" if offline else f"{exc}"
        raise ModelNotFoundError(
            f"cannot get {filename} of '{repo_id}' (no local folder of that name either): {reason}. "
            f"Hugging Face cache searched: {constants.HF_HUB_CACHE}. {HOW_TO_GET}",
            repo_id,
        ) from exc


def read_config(folder: Path, repo_id: str | None = None) -> TripoSRConfig:
    """Read `folder/config.yaml` (upstream format) and the image encoder's config it names."""
    path = folder / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read model config {path}: {exc}. {HOW_TO_GET}", str(path)) from exc
    raw = resolve_yaml(text, str(path))
    name = (raw.get("image_tokenizer") or {}).get("pretrained_model_name_or_path", DINO_VITB16)
    return TripoSRConfig.from_upstream(raw, _image_encoder_config(str(name), folder, repo_id), str(path))


def _image_encoder_config(name: str, folder: Path, repo_id: str | None) -> ViTConfig:
    if name in KNOWN_IMAGE_ENCODERS:
        return KNOWN_IMAGE_ENCODERS[name]
    path = (folder / name / "config.json") if not Path(name).is_absolute() else Path(name) / "config.json"
    if not path.is_file() and repo_id is not None and not Path(name).is_absolute():
        path = Path(_hub_file(repo_id, f"{name}/config.json"))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"image encoder config {path} not found or unreadable ({exc}); the config's "
            f"pretrained_model_name_or_path must be '{DINO_VITB16}' or a folder (relative to the "
            "model folder) holding a ViT config.json",
            str(path),
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return ViTConfig.from_hf_dict(data, str(path))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) of a plain state dict -> float32 tensors under the 4.x ViT key names."""
    if not path.is_file():
        raise ModelNotFoundError(f"weights file {path} not found. {HOW_TO_GET}", str(path))
    try:
        try:  # memory-mapped: no second copy of the 1.7 GB file in RAM
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelNotFoundError(
            f"cannot read weights {path} ({type(exc).__name__}: {exc}); the file is truncated or not a "
            f"TripoSR checkpoint. {HOW_TO_GET}",
            str(path),
        ) from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelNotFoundError(
            f"weights {path} are not a plain state dict of tensors. {HOW_TO_GET}", str(path)
        )
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(_VIT_PREFIX):
            for new, old in _NEW_TO_OLD_VIT_KEYS:
                key = key.replace(new, old)
        out[key] = tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float32 else tensor
    return out


def _check_keys(model: TripoSR, state: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = [
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if not (missing or unexpected or reshaped):
        return

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")

    problems = [
        f"{len(items)} {what} ({few(items)})"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("with other shapes", reshaped))
        if items
    ]
    raise ModelNotFoundError(
        f"weights {path} do not match the network its config describes: {'; '.join(problems)}. "
        f"Use the {WEIGHTS_NAME} that comes with this {CONFIG_NAME}. {HOW_TO_GET}",
        str(path),
    )
