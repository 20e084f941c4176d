"""triposr/config.py: upstream config.yaml -> TripoSRConfig."""

from __future__ import annotations

import pytest

from triposr.config import DINO_VITB16, TripoSRConfig, ViTConfig, resolve_yaml
from triposr.errors import ConfigError

from .conftest import FIXTURES


def official() -> dict:
    return resolve_yaml((FIXTURES / "official_config.yaml").read_text())


def test_official_config_gives_the_released_model_sizes():
    config = TripoSRConfig.from_upstream(official(), ViTConfig())
    assert config == TripoSRConfig()
    assert config.image_encoder == DINO_VITB16
    assert config.decoder_in_channels == 120


def test_interpolation_is_resolved():
    raw = resolve_yaml("tokenizer:\n  num_channels: 7\nbackbone:\n  in_channels: ${tokenizer.num_channels}\n")
    assert raw["backbone"]["in_channels"] == 7


def test_broken_interpolation_is_a_config_error():
    with pytest.raises(ConfigError, match="resolve"):
        resolve_yaml("backbone:\n  in_channels: ${tokenizer.nope}\n")


def test_unknown_class_path_is_rejected():
    raw = official()
    raw["backbone_cls"] = "tsr.models.transformer.transformer_1d.SomethingElse"
    with pytest.raises(ConfigError, match="backbone_cls"):
        TripoSRConfig.from_upstream(raw, ViTConfig())


def test_class_in_the_wrong_slot_is_rejected():
    raw = official()
    raw["decoder_cls"] = raw["post_processor_cls"]
    with pytest.raises(ConfigError, match="cannot be used as the decoder"):
        TripoSRConfig.from_upstream(raw, ViTConfig())


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("backbone", "activation_fn", "gelu", "not supported"),
        ("backbone", "surprise", 1, "unknown keys"),
        ("renderer", "density_activation", "trunc_exp", "density_activation"),
        ("decoder", "in_channels", 99, "3 x plane channels"),
    ],
)
def test_unsupported_settings_are_rejected(section, key, value, message):
    raw = official()
    raw[section][key] = value
    with pytest.raises(ConfigError, match=message):
        TripoSRConfig.from_upstream(raw, ViTConfig())


def test_missing_required_key_is_rejected():
    raw = official()
    del raw["tokenizer"]["plane_size"]
    with pytest.raises(ConfigError, match=r"tokenizer\.plane_size is missing"):
        TripoSRConfig.from_upstream(raw, ViTConfig())


def test_vit_config_from_hf_dict_reads_the_tiny_encoder(tiny_model_dir):
    import json

    vit = ViTConfig.from_hf_dict(json.loads((tiny_model_dir / "vit" / "config.json").read_text()))
    assert (vit.hidden_size, vit.num_hidden_layers, vit.intermediate_size, vit.image_size) == (32, 2, 128, 32)


def test_vit_config_rejects_other_activations():
    with pytest.raises(ConfigError, match="hidden_act"):
        ViTConfig.from_hf_dict({"hidden_act": "relu"})


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        TripoSRConfig().radius = 1.0  # type: ignore[misc]
