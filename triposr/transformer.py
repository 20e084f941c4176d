"""Triplane backbone: mirrors upstream `tsr/models/transformer/transformer_1d.py`,
`basic_transformer_block.py` and `attention.py` (themselves derived from Hugging Face diffusers), reduced to
the one configuration TripoSR uses: pre-LayerNorm blocks of self-attention, cross-attention to the image
tokens and a GEGLU feed-forward.

Attention runs through `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels
where the device has them), never through an explicit (T x T) score matrix; on x86 CPUs the products and
attention go through oneDNN (`cpu_matmul`). Module names (`attn1.to_q`, `to_out.0`, `ff.net.0.proj`,
`ff.net.2`) match the official checkpoint. Dropout is omitted: inference only,
and residual additions run in place on the activations (no autograd through them).
"""

from __future__ import annotations

import torch
from torch import nn

from . import cpu_matmul
from .cpu_matmul import Linear


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None. Output projection `to_out.0` has a
    bias."""

    def __init__(
        self, query_dim: int, heads: int, dim_head: int, context_dim: int | None, bias: bool
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = Linear(query_dim, inner, bias=bias)
        self.to_k = Linear(context_dim or query_dim, inner, bias=bias)
        self.to_v = Linear(context_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([Linear(inner, query_dim)])  # upstream's to_out.1 is a Dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        batch = x.shape[0]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, t.shape[1], self.heads, -1).transpose(1, 2)  # (B, h, T, d)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = cpu_matmul.attention(q, k, v)  # scale 1/sqrt(d) as upstream, (B, h, Tq, d)
        out = out.transpose(1, 2).reshape(batch, x.shape[1], -1)  # (B, Tq, h*d)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """Linear to 2*inner, split into (a, g) halves along the last axis, return a * GELU(g) (exact GELU).

    Run as two products over the halves of the weight (row slices, no copy): GELU(g) in the first one's
    epilogue, the multiplication in the second's, so the (B, T, 2*inner) product is never materialised.
    """

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.proj.weight, self.proj.bias
        inner = weight.shape[0] // 2
        gate = cpu_matmul.linear(x, weight[inner:], bias[inner:], gelu=True)  # (B, T, inner)
        return cpu_matmul.linear_mul(x, weight[:inner], bias[:inner], gate)  # a * GELU(g), (B, T, inner)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        # indices 0 and 2 as in the checkpoint (`ff.net.0.proj`, `ff.net.2`); upstream's index 1 is a Dropout
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            x = module(x)
        return x


class TransformerBlock(nn.Module):
    """h += SelfAttn(LN1(h)); h += CrossAttn(LN2(h), context); h += FF(LN3(h)). LayerNorm eps 1e-5 (torch
    default)."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, attention_bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head, None, attention_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim, attention_bias)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Updates `h` in place (inference only) and returns it."""
        h = self.self_attention(h)
        return self.cross_and_feed_forward(h, context)

    def self_attention(self, h: torch.Tensor) -> torch.Tensor:
        return h.add_(self.attn1(self.norm1(h)))

    def cross_and_feed_forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h.add_(self.attn2(self.norm2(h), context))
        return h.add_(self.ff(self.norm3(h)))


class Transformer1D(nn.Module):
    """GroupNorm -> proj_in -> blocks -> proj_out, plus a residual around the whole stack (taken before the
    norm).

    forward(tokens (B, C, T), context (B, S, Dc)) -> (B, C_out, T), where C_out = C unless `out_channels` is
    given.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_attention_heads: int,
        attention_head_dim: int,
        num_layers: int,
        cross_attention_dim: int,
        norm_num_groups: int = 32,
        attention_bias: bool = False,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        inner = num_attention_heads * attention_head_dim
        out_channels = in_channels if out_channels is None else out_channels
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        self.proj_in = Linear(in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(
                inner, num_attention_heads, attention_head_dim, cross_attention_dim, attention_bias
            )
            for _ in range(num_layers)
        )
        self.proj_out = Linear(inner, out_channels)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.finish(self.prefix(tokens), tokens, context)

    def prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """The part that does not see the context: norm, proj_in and the first block's self-attention, (B, C,
        T) -> (B, T, inner). TripoSR's tokens are the same learned triplane for every image, so the model
        computes this once (`TripoSR.forward`) instead of in every encode."""
        h = self.norm(tokens).transpose(1, 2)  # GroupNorm over channels, then (B, T, C)
        h = self.proj_in(h)  # (B, T, inner)
        return self.transformer_blocks[0].self_attention(h)

    def finish(self, h: torch.Tensor, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The rest of `forward` from `prefix(tokens)` (updated in place) -> (B, C_out, T)."""
        first, *rest = self.transformer_blocks
        h = first.cross_and_feed_forward(h, context)
        for block in rest:
            h = block(h, context)
        h = self.proj_out(h).transpose(1, 2)  # (B, C_out, T)
        return h + tokens
