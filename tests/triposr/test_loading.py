"""triposr/loading.py: local folders, the Hugging Face cache (offline, no network), and every way the weights
can be missing or wrong -> one ModelNotFoundError that names the path and how to get the weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import triposr
from triposr import ModelNotFoundError
from triposr.errors import ConfigError

from .conftest import FIXTURES

ROOT = FIXTURES.parent.parent


@pytest.fixture
def tiny_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny model folder."""
    dest = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, dest, ignore=shutil.ignore_patterns("*.npy", "*.npz", "*.png", "*.obj"))
    return dest


def codes_of(model, tiny_model_dir):
    from PIL import Image

    with Image.open(tiny_model_dir / "input.png") as im:
        return model.encode([im])


def test_local_folder_loads_strictly_in_eval_mode_on_cpu(tiny_model_dir):
    model = triposr.load_model(tiny_model_dir, "cpu", chunk_size=123)
    assert model.device == torch.device("cpu") and not model.training and model.chunk_size == 123
    assert all(not p.is_meta and p.dtype == torch.float32 for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())


def test_missing_folder_names_it_and_how_to_get_weights(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelNotFoundError) as info:
        triposr.load_model(missing, "cpu")
    assert str(missing) in str(info.value) and "hf download stabilityai/TripoSR" in str(info.value)
    assert info.value.path == str(missing)


def test_missing_checkpoint_names_the_file(tiny_copy):
    (tiny_copy / "model.ckpt").unlink()
    with pytest.raises(ModelNotFoundError, match=r"model\.ckpt not found") as info:
        triposr.load_model(tiny_copy, "cpu")
    assert str(tiny_copy / "model.ckpt") in str(info.value)


def test_missing_image_encoder_config_names_the_file(tiny_copy):
    shutil.rmtree(tiny_copy / "vit")
    with pytest.raises(ModelNotFoundError, match="image encoder config") as info:
        triposr.load_model(tiny_copy, "cpu")
    assert str(tiny_copy / "vit" / "config.json") in str(info.value)


def test_truncated_checkpoint_is_reported(tiny_copy):
    ckpt = tiny_copy / "model.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ModelNotFoundError, match="truncated") as info:
        triposr.load_model(tiny_copy, "cpu")
    assert str(ckpt) in str(info.value)


def test_mismatched_keys_are_listed(tiny_copy):
    ckpt = tiny_copy / "model.ckpt"
    state = torch.load(ckpt, weights_only=True)
    del state["decoder.layers.0.bias"]
    state["decoder.extra.weight"] = torch.zeros(1)
    state["post_processor.upsample.bias"] = torch.zeros(3)
    torch.save(state, ckpt)
    with pytest.raises(ModelNotFoundError) as info:
        triposr.load_model(tiny_copy, "cpu")
    message = str(info.value)
    assert "1 missing (decoder.layers.0.bias)" in message
    assert "1 unexpected (decoder.extra.weight)" in message
    assert "post_processor.upsample.bias (3,) != (8,)" in message and str(ckpt) in message


def test_checkpoint_for_another_config_is_a_mismatch(tiny_copy):
    config = tiny_copy / "config.yaml"
    config.write_text(config.read_text().replace("plane_size: 8", "plane_size: 4"))
    with pytest.raises(ModelNotFoundError, match=r"tokenizer\.embeddings \(3, 64, 8, 8\) != \(3, 64, 4, 4\)"):
        triposr.load_model(tiny_copy, "cpu")


def test_pickled_objects_are_refused_by_weights_only(tiny_copy):
    torch.save({"decoder.layers.0.bias": torch.zeros(1), "payload": Path("x")}, tiny_copy / "model.ckpt")
    with pytest.raises(ModelNotFoundError, match="cannot read weights"):
        triposr.load_model(tiny_copy, "cpu")


def test_unknown_class_in_config_is_a_config_error(tiny_copy):
    config = tiny_copy / "config.yaml"
    config.write_text(config.read_text().replace("network_utils.NeRFMLP", "network_utils.OtherMLP"))
    with pytest.raises(ConfigError, match="decoder_cls"):
        triposr.load_model(tiny_copy, "cpu")


def test_checkpoint_with_transformers_5_9_vit_names_loads_to_the_same_model(tiny_copy, tiny_model_dir):
    renames = [
        line.split("\t")
        for line in (FIXTURES / "vit_key_renames_transformers5.tsv").read_text().splitlines()[1:]
        if line.strip()
    ]
    ckpt = tiny_copy / "model.ckpt"
    state = torch.load(ckpt, weights_only=True)
    renamed = {}
    for key, value in state.items():
        if key.startswith("image_tokenizer.model."):
            for old, new in renames:
                key = key.replace(old, new)
        renamed[key] = value
    assert "image_tokenizer.model.layers.0.attention.q_proj.weight" in renamed
    torch.save(renamed, ckpt)
    model = triposr.load_model(tiny_copy, "cpu")
    reference = triposr.load_model(tiny_model_dir, "cpu")
    torch.testing.assert_close(codes_of(model, tiny_model_dir), codes_of(reference, tiny_model_dir))


def test_half_precision_off_cuda_warns_and_stays_float32(tiny_model_dir, caplog):
    model = triposr.load_model(tiny_model_dir, "cpu", half=True)
    assert not model.half_precision
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert "half precision is only used on CUDA" in caplog.text


def test_half_precision_encoder_stays_close_to_float32(tiny_model_dir):
    # the float16 path exercised on CPU (load_model only enables it on CUDA): scene codes move by ~1e-3
    model = triposr.load_model(tiny_model_dir, "cpu")
    reference = codes_of(model, tiny_model_dir)
    model.half_encoder()
    assert model.backbone.proj_in.weight.dtype == torch.float16
    assert model.decoder.layers[0].weight.dtype == torch.float32
    codes = codes_of(model, tiny_model_dir)
    assert codes.dtype == torch.float32
    assert (codes - reference).abs().max() < 1e-2 * reference.abs().max()


def test_pick_device_honours_an_explicit_choice_and_falls_back_to_cpu():
    assert triposr.pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert triposr.pick_device() == torch.device("cpu")


# ---- Hugging Face repo ids: run in a fresh interpreter so HF_HOME / HF_HUB_OFFLINE apply from the start ----


def run_loader(source: str, hf_home: Path) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import triposr
        try:
            model = triposr.load_model({source!r}, "cpu")
        except triposr.ModelNotFoundError as exc:
            print("ModelNotFoundError:", exc)
        else:
            print("loaded", sum(p.numel() for p in model.parameters()))
    """)
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_offline_repo_id_without_cache_is_a_clear_error(tmp_path):
    result = run_loader("stabilityai/TripoSR", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("ModelNotFoundError:"), out
    assert "stabilityai/TripoSR" in out and "HF_HUB_OFFLINE" in out and "hf download" in out
    assert str(tmp_path / "hf") in out


def test_offline_repo_id_is_served_from_the_hub_cache(tmp_path, tiny_model_dir):
    # the cache layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-triposr"
    snapshot = repo / "snapshots" / commit
    (snapshot / "vit").mkdir(parents=True)
    for name in ("config.yaml", "model.ckpt", "vit/config.json"):
        shutil.copy(tiny_model_dir / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    result = run_loader("someone/tiny-triposr", tmp_path / "hf")
    assert result.stdout.strip() == "loaded 112780", result.stdout + result.stderr
