"""The full-size network (built on the meta device: no memory) has exactly the official checkpoint's
tensors."""

from __future__ import annotations

import torch

from triposr import TripoSR, TripoSRConfig
from triposr.config import ViTConfig, resolve_yaml

from .conftest import FIXTURES


def manifest() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in (FIXTURES / "state_dict_full.tsv").read_text().splitlines():
        if line.strip():
            key, shape, dtype = line.split("\t")
            rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return rows


def full_model() -> TripoSR:
    raw = resolve_yaml((FIXTURES / "official_config.yaml").read_text())
    config = TripoSRConfig.from_upstream(raw, ViTConfig())
    with torch.device("meta"):
        return TripoSR(config)


def test_full_network_matches_all_549_checkpoint_entries_in_order():
    expected = manifest()
    assert len(expected) == 549
    state = full_model().state_dict()
    got = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    assert got == expected


def test_full_network_parameter_count_is_the_published_one():
    model = full_model()
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 419_275_628
    assert sum(p.numel() for p in model.image_tokenizer.model.pooler.parameters()) == 590_592


def test_meta_network_has_no_buffers_that_a_checkpoint_cannot_fill():
    # everything the forward pass needs is in the checkpoint or made on the fly (ImageNet statistics)
    assert list(full_model().buffers()) == []
