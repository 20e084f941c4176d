"""Triplane tokenizer and upsampler: mirrors upstream `tsr/models/tokenizers/triplane.py`
(Triplane1DTokenizer) and the `TriplaneUpsampleNetwork` of `tsr/models/network_utils.py`.

Token layout: plane-major, then row, then column, i.e. token index = plane * P * P + row * P + col.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TriplaneTokenizer(nn.Module):
    """The learned initial triplane, `embeddings` (3, C, P, P), handed to the backbone as tokens (B, C,
    3*P*P)."""

    def __init__(self, *, plane_size: int, num_channels: int) -> None:
        super().__init__()
        self.plane_size = plane_size
        self.num_channels = num_channels
        self.embeddings = nn.Parameter(
            torch.randn(3, num_channels, plane_size, plane_size) / math.sqrt(num_channels)
        )

    def forward(self, batch_size: int) -> torch.Tensor:
        c, p = self.num_channels, self.plane_size
        tokens = self.embeddings.permute(1, 0, 2, 3).reshape(1, c, 3 * p * p)  # (1, C, 3*P*P), plane-major
        return tokens.expand(batch_size, -1, -1)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, 3*P*P) -> (B, 3, C, P, P)."""
        batch, c, t = tokens.shape
        p = self.plane_size
        assert t == 3 * p * p, f"expected {3 * p * p} triplane tokens, got {t}"
        return tokens.view(batch, c, 3, p, p).permute(0, 2, 1, 3, 4)


class TriplaneUpsampler(nn.Module):
    """One ConvTranspose2d(k=2, s=2) shared by the three planes: (B, 3, C, P, P) -> scene codes (B, 3, C', 2P,
    2P)."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        batch, n, c, h, w = planes.shape
        out = self.upsample(planes.reshape(batch * n, c, h, w))  # (B*3, C', 2P, 2P)
        return out.view(batch, n, *out.shape[1:])
