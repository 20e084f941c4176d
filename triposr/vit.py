"""ViT-B/16 image encoder (DINO) in plain PyTorch: mirrors upstream `tsr/models/tokenizers/image.py`, which
wraps Hugging Face `transformers.ViTModel` as it behaved in transformers 4.35 (the version TripoSR pins).

Two details are kept on purpose so that the official checkpoint loads unchanged and gives the same numbers:
* state-dict key names are the transformers-4.x ones (`encoder.layer.N.attention.attention.query`, ...); the
  >= 5.9 names are translated at load time (`loading.py`), never used here;
* position embeddings are resized with the 4.35 rule (bicubic with an explicit scale factor of (n + 0.1) / 14,
  see `interpolate_position_embeddings`); transformers >= 4.45 changed it and moves scene codes by ~1e-3. The
  pooler (dense + tanh on the CLS token) is built so the strict load finds its weights, but TripoSR discards
  its output, so `forward` never computes it. Dropout is omitted: inference only, and every DINO dropout is 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_matmul
from .cpu_matmul import Linear

# ImageNet statistics used by upstream's DINOSingleImageTokenizer before the ViT
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


class PatchEmbeddings(nn.Module):
    def __init__(self, num_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.projection(pixels)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, D), row-major patches


class Embeddings(nn.Module):
    def __init__(self, num_channels: int, hidden_size: int, patch_size: int, image_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        num_positions = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_positions + 1, hidden_size))
        self.patch_embeddings = PatchEmbeddings(num_channels, hidden_size, patch_size)
        # resized table per image size, keyed by the table's identity (new weights or dtype -> recomputed)
        self._resized: dict[tuple, torch.Tensor] = {}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixels.shape
        patches = self.patch_embeddings(pixels)  # (B, N, D)
        cls = self.cls_token.expand(batch, -1, -1)  # (B, 1, D)
        tokens = torch.cat([cls, patches], dim=1)  # (B, 1 + N, D)
        return tokens.add_(self._positions(height, width, tokens.dtype))

    def _positions(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The position table resized to the image, computed once per size (upstream recomputes it every
        forward)."""
        table = self.position_embeddings
        key = (height, width, dtype, table.device, table.data_ptr(), table._version)
        if key not in self._resized:
            pos = interpolate_position_embeddings(table.detach(), height, width, self.patch_size)
            self._resized = {key: pos.to(dtype)}  # one image size in use at a time; keep only the last
        return self._resized[key]


def interpolate_position_embeddings(
    table: torch.Tensor, height: int, width: int, patch_size: int
) -> torch.Tensor:
    """Resize a (1, 1 + n*n, D) position table to an image of `height` x `width` pixels (transformers 4.35
    rule).

    The CLS entry is kept. The n x n patch grid is resized bicubically (align_corners=False) with the *scale
    factor* ((height // p + 0.1) / n, (width // p + 0.1) / n): the output size is floor(n * scale) = height //
    p, but the coordinate mapping uses the +0.1 scale, exactly as transformers <= 4.44 did. The table is
    returned unchanged when the patch count matches and the image is square (the only case 4.35 skips).
    Returns (1, 1 + h*w, D).
    """
    num_positions = table.shape[1] - 1
    rows, cols = height // patch_size, width // patch_size
    if rows * cols == num_positions and height == width:
        return table
    n = math.isqrt(num_positions)
    if n * n != num_positions:
        raise ValueError(f"position table has {num_positions} patch entries, not a square grid")
    dim = table.shape[-1]
    cls_pos = table[:, :1]  # (1, 1, D)
    grid = table[:, 1:].reshape(1, n, n, dim).permute(0, 3, 1, 2)  # (1, D, n, n)
    # interpolate in float32 even for a half-precision model (CPU bicubic has no float16 kernel)
    grid = F.interpolate(
        grid.float(),
        scale_factor=((rows + 0.1) / n, (cols + 0.1) / n),
        mode="bicubic",
        align_corners=False,
    ).to(table.dtype)  # (1, D, rows, cols)
    assert grid.shape[-2:] == (rows, cols), (
        f"position grid resized to {tuple(grid.shape[-2:])}, not {(rows, cols)}"
    )
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)  # (1, rows*cols, D)
    return torch.cat([cls_pos, patch_pos], dim=1)


class SelfAttentionProjections(nn.Module):
    """`attention.attention`: the query/key/value projections (4.x names)."""

    def __init__(self, hidden_size: int, qkv_bias: bool) -> None:
        super().__init__()
        self.query = Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.key = Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.value = Linear(hidden_size, hidden_size, bias=qkv_bias)


class DenseOutput(nn.Module):
    """A module holding one Linear called `dense` (4.x names `attention.output`, `intermediate`, `output`)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.dense = Linear(in_features, out_features)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"
            )
        self.num_heads = num_heads
        self.attention = SelfAttentionProjections(hidden_size, qkv_bias)
        self.output = DenseOutput(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, heads, dim // heads).transpose(1, 2)  # (B, h, T, d)

        proj = self.attention
        q, k, v = split(proj.query(x)), split(proj.key(x)), split(proj.value(x))
        out = cpu_matmul.attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, (B, h, T, d)
        out = out.transpose(1, 2).reshape(batch, length, dim)  # (B, T, D)
        return self.output.dense(out)


class Layer(nn.Module):
    """Pre-LayerNorm encoder layer: x + attn(LN(x)), then x + MLP(LN(x)) with exact (erf) GELU."""

    def __init__(
        self, hidden_size: int, num_heads: int, intermediate_size: int, eps: float, qkv_bias: bool
    ) -> None:
        super().__init__()
        self.attention = Attention(hidden_size, num_heads, qkv_bias)
        self.intermediate = DenseOutput(hidden_size, intermediate_size)
        self.output = DenseOutput(intermediate_size, hidden_size)
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=eps)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Updates `x` in place (inference only) and returns it."""
        x = x.add_(self.attention(self.layernorm_before(x)))
        dense = self.intermediate.dense
        h = cpu_matmul.linear(self.layernorm_after(x), dense.weight, dense.bias, gelu=True)  # (B, T, 4D)
        return x.add_(self.output.dense(h))


class Encoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs: object) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(**layer_kwargs) for _ in range(num_layers))  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class Pooler(nn.Module):
    """Dense + tanh on the CLS token. Present only so the official checkpoint strict-loads: TripoSR ignores
    it."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(last_hidden_state[:, 0]))


class ViTModel(nn.Module):
    """The ViT encoder. `forward(pixels (B, 3, H, W), normalised)` -> last hidden state (B, 1 + N, D), CLS
    first."""

    def __init__(
        self,
        *,
        hidden_size: int,
        num_hidden_layers: int,
        num_attention_heads: int,
        intermediate_size: int,
        patch_size: int,
        image_size: int,
        num_channels: int,
        layer_norm_eps: float,
        qkv_bias: bool,
    ) -> None:
        super().__init__()
        self.embeddings = Embeddings(num_channels, hidden_size, patch_size, image_size)
        self.encoder = Encoder(
            num_hidden_layers,
            hidden_size=hidden_size,
            num_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            eps=layer_norm_eps,
            qkv_bias=qkv_bias,
        )
        self.layernorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.pooler = Pooler(hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.encoder(self.embeddings(pixels)))


class DINOImageTokenizer(nn.Module):
    """ImageNet normalisation + ViT: images (B, 3, H, W) in [0, 1] -> image tokens (B, 1 + N, D), CLS first.

    Upstream returns (B, Nv=1, D, T) and flattens it back to (B, T, D) before the backbone; this returns (B,
    T, D) directly, the same numbers.
    """

    def __init__(self, **vit_kwargs: object) -> None:
        super().__init__()
        self.model = ViTModel(**vit_kwargs)  # type: ignore[arg-type]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGE_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGE_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return self.model((images - mean) / std)
