"""Model configuration: one frozen `TripoSRConfig` built from upstream's `config.yaml` (the format of the
`stabilityai/TripoSR` repo), mirroring the nested `Config` dataclasses of upstream's modules and
`tsr/system.py`.

Upstream names its module classes by dotted path (`backbone_cls: tsr.models.transformer...`) and imports them
with importlib. Here the paths are looked up in `UPSTREAM_CLASSES`, an explicit table of the classes of this
package; any other path, an unknown key, or a value this package does not implement raises `ConfigError` at
once. Nothing here touches the disk or the network: `loading.py` reads the files and passes their text and
dicts in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .decoder import NeRFMLP, TriplaneQuery
from .errors import ConfigError
from .transformer import Transformer1D
from .triplane import TriplaneTokenizer, TriplaneUpsampler
from .vit import DINOImageTokenizer

# The image encoder the official config names; its hyper-parameters are known (HF facebook/dino-vitb16
# config.json), so the model is built without downloading anything.
DINO_VITB16 = "facebook/dino-vitb16"

# upstream class path -> the class of this package that implements it
UPSTREAM_CLASSES: dict[str, type] = {
    "tsr.models.tokenizers.image.DINOSingleImageTokenizer": DINOImageTokenizer,
    "tsr.models.tokenizers.triplane.Triplane1DTokenizer": TriplaneTokenizer,
    "tsr.models.transformer.transformer_1d.Transformer1D": Transformer1D,
    "tsr.models.network_utils.TriplaneUpsampleNetwork": TriplaneUpsampler,
    "tsr.models.network_utils.NeRFMLP": NeRFMLP,
    "tsr.models.nerf_renderer.TriplaneNeRFRenderer": TriplaneQuery,
}

# config slot -> the class it must resolve to
_SLOTS: dict[str, type] = {
    "image_tokenizer": DINOImageTokenizer,
    "tokenizer": TriplaneTokenizer,
    "backbone": Transformer1D,
    "post_processor": TriplaneUpsampler,
    "decoder": NeRFMLP,
    "renderer": TriplaneQuery,
}

_REQ = object()  # required key
_ANY = object()  # optional, any value accepted (training- or rendering-only settings that inference ignores)

# Keys each upstream section may carry: _REQ, _ANY, or the upstream default. A key given a value other than
# its default is "not supported" unless it is in _FREE (settings this package implements for any value).
_KEYS: dict[str, dict[str, Any]] = {
    "image_tokenizer": {"pretrained_model_name_or_path": _REQ, "enable_gradient_checkpointing": _ANY},
    "tokenizer": {"plane_size": _REQ, "num_channels": _REQ},
    "backbone": {
        "in_channels": _REQ,
        "num_attention_heads": _REQ,
        "attention_head_dim": _REQ,
        "num_layers": _REQ,
        "cross_attention_dim": _REQ,
        "out_channels": None,
        "norm_num_groups": 32,
        "attention_bias": False,
        "activation_fn": "geglu",
        "norm_type": "layer_norm",
        "norm_elementwise_affine": True,
        "only_cross_attention": False,
        "double_self_attention": False,
        "num_embeds_ada_norm": None,
        "dropout": _ANY,
        "upcast_attention": _ANY,
        "gradient_checkpointing": _ANY,
        "enable_gradient_checkpointing": _ANY,
    },
    "post_processor": {"in_channels": _REQ, "out_channels": _REQ},
    "decoder": {
        "in_channels": _REQ,
        "n_neurons": _REQ,
        "n_hidden_layers": _REQ,
        "activation": "relu",
        "bias": True,
        "weight_init": _ANY,
        "bias_init": _ANY,
    },
    "renderer": {
        "radius": _REQ,
        "feature_reduction": "concat",
        "density_activation": "trunc_exp",
        "density_bias": -1.0,
        "color_activation": "sigmoid",
        "num_samples_per_ray": _ANY,
        "randomized": _ANY,
    },
}
_FREE = {
    ("backbone", "out_channels"),
    ("backbone", "norm_num_groups"),
    ("backbone", "attention_bias"),
    ("decoder", "activation"),
    ("renderer", "density_activation"),
    ("renderer", "density_bias"),
}


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of the ViT image encoder (Hugging Face `ViTConfig` names). Defaults =
    facebook/dino-vitb16."""

    hidden_size: int = 768  # token width D
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072  # MLP width
    patch_size: int = 16
    image_size: int = 224  # size the position table was trained for: (224/16)^2 = 196 patches + CLS
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True  # ViTConfig default; DINO's config.json does not set it

    @classmethod
    def from_hf_dict(cls, data: Mapping[str, Any], source: str = "config.json") -> ViTConfig:
        """Build from a Hugging Face ViT `config.json` dict; rejects settings this encoder does not
        implement."""
        if data.get("model_type", "vit") != "vit":
            raise ConfigError(f"{source}: model_type {data.get('model_type')!r} is not 'vit'")
        if data.get("hidden_act", "gelu") != "gelu":
            raise ConfigError(
                f"{source}: hidden_act {data.get('hidden_act')!r} is not supported (only 'gelu')"
            )
        kwargs = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    def module_kwargs(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class TripoSRConfig:
    """Every size and setting of the network. Defaults = the released `stabilityai/TripoSR` model."""

    cond_image_size: int = 512  # images are resized (stretched) to this square before the ViT
    image_encoder: str = DINO_VITB16  # upstream `pretrained_model_name_or_path` (a known id or a folder)
    vit: ViTConfig = field(default_factory=ViTConfig)
    plane_size: int = 32  # learned triplane tokens per side (P); scene codes are 2P per side
    num_channels: int = 1024  # triplane token width (backbone in/out channels)
    num_attention_heads: int = 16  # backbone
    attention_head_dim: int = 64  # backbone; heads * head_dim = inner width (1024)
    num_layers: int = 16  # backbone transformer blocks
    cross_attention_dim: int = 768  # must equal vit.hidden_size: the image tokens are the context
    norm_num_groups: int = 32  # backbone GroupNorm
    attention_bias: bool = False  # backbone q/k/v projections
    plane_channels: int = 40  # scene-code channels per plane (upsampler output)
    decoder_neurons: int = 64
    decoder_hidden_layers: int = 9
    decoder_activation: str = "silu"
    radius: float = 0.87  # scene cube is [-radius, radius]^3, "slightly larger than 0.5 * sqrt(3)"
    density_bias: float = -1.0  # density_act = exp(density + density_bias)

    def __post_init__(self) -> None:
        if self.cross_attention_dim != self.vit.hidden_size:
            raise ConfigError(
                f"backbone.cross_attention_dim {self.cross_attention_dim} != "
                f"image encoder width {self.vit.hidden_size}"
            )
        if self.num_channels % self.norm_num_groups:
            raise ConfigError(f"{self.num_channels} channels do not split into {self.norm_num_groups} groups")
        if self.decoder_activation not in ("silu", "relu"):
            raise ConfigError(
                f"decoder.activation {self.decoder_activation!r} is not supported (silu or relu)"
            )
        if not (self.radius > 0 and math.isfinite(self.radius)):
            raise ConfigError(f"renderer.radius must be positive, got {self.radius}")

    @property
    def decoder_in_channels(self) -> int:
        return 3 * self.plane_channels  # features of the three planes, concatenated

    @classmethod
    def from_upstream(
        cls, raw: Mapping[str, Any], vit: ViTConfig, source: str = "config.yaml"
    ) -> TripoSRConfig:
        """Build from an upstream config dict with `${...}` already resolved (see `resolve_yaml`)."""
        unknown = set(raw) - {"cond_image_size"} - set(_SLOTS) - {f"{s}_cls" for s in _SLOTS}
        if unknown:
            raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}")
        sections: dict[str, dict[str, Any]] = {}
        for slot, expected in _SLOTS.items():
            path = raw.get(f"{slot}_cls")
            if path not in UPSTREAM_CLASSES:
                raise ConfigError(
                    f"{source}: {slot}_cls {path!r} is not one of the supported classes "
                    f"{sorted(UPSTREAM_CLASSES)}"
                )
            if UPSTREAM_CLASSES[path] is not expected:
                raise ConfigError(f"{source}: {slot}_cls {path!r} cannot be used as the {slot}")
            sections[slot] = _section(raw.get(slot) or {}, slot, source)

        img, tok, bb = sections["image_tokenizer"], sections["tokenizer"], sections["backbone"]
        post, dec, ren = sections["post_processor"], sections["decoder"], sections["renderer"]
        if ren["density_activation"] != "exp":
            raise ConfigError(
                f"{source}: renderer.density_activation {ren['density_activation']!r} is not supported "
                "(only 'exp'; upstream's default 'trunc_exp' does not run upstream either)"
            )
        inner = bb["num_attention_heads"] * bb["attention_head_dim"]
        checks = [
            (
                bb["in_channels"] == tok["num_channels"],
                "backbone.in_channels must equal tokenizer.num_channels",
            ),
            (
                bb["out_channels"] in (None, tok["num_channels"]),
                "backbone.out_channels must equal num_channels",
            ),
            (
                post["in_channels"] == tok["num_channels"],
                "post_processor.in_channels must equal num_channels",
            ),
            (
                dec["in_channels"] == 3 * post["out_channels"],
                "decoder.in_channels must be 3 x plane channels",
            ),
            (inner > 0, "backbone needs attention heads"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{source}: {message}")
        try:
            return cls(
                cond_image_size=int(raw.get("cond_image_size", 512)),
                image_encoder=str(img["pretrained_model_name_or_path"]),
                vit=vit,
                plane_size=int(tok["plane_size"]),
                num_channels=int(tok["num_channels"]),
                num_attention_heads=int(bb["num_attention_heads"]),
                attention_head_dim=int(bb["attention_head_dim"]),
                num_layers=int(bb["num_layers"]),
                cross_attention_dim=int(bb["cross_attention_dim"]),
                norm_num_groups=int(bb["norm_num_groups"]),
                attention_bias=bool(bb["attention_bias"]),
                plane_channels=int(post["out_channels"]),
                decoder_neurons=int(dec["n_neurons"]),
                decoder_hidden_layers=int(dec["n_hidden_layers"]),
                decoder_activation=str(dec["activation"]),
                radius=float(ren["radius"]),
                density_bias=float(ren["density_bias"]),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{source}: {exc}") from exc


def _section(values: Mapping[str, Any], slot: str, source: str) -> dict[str, Any]:
    allowed = _KEYS[slot]
    unknown = set(values) - set(allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown keys in {slot}: {sorted(unknown)}")
    merged: dict[str, Any] = {}
    for key, default in allowed.items():
        if key in values:
            value = values[key]
            free = default is _REQ or default is _ANY or (slot, key) in _FREE
            if not free and value != default:
                raise ConfigError(f"{source}: {slot}.{key} = {value!r} is not supported (only {default!r})")
            merged[key] = value
        elif default is _REQ:
            raise ConfigError(f"{source}: {slot}.{key} is missing")
        else:
            merged[key] = None if default is _ANY else default
    return merged


def resolve_yaml(text: str, source: str = "config.yaml") -> dict[str, Any]:
    """Parse upstream YAML text and resolve its `${...}` interpolations (as upstream's OmegaConf load
    does)."""
    try:
        cfg = OmegaConf.create(text)
        data = OmegaConf.to_container(cfg, resolve=True)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"{source}: cannot parse or resolve: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    return data
