"""The encoder's matrix products on x86 CPUs through oneDNN instead of the BLAS torch links (MKL).

Why: MKL runs its AVX2 kernels on AMD processors even where AVX-512 is there, while oneDNN (also inside every
x86 torch build, as `torch.ops.mkldnn`) picks kernels by instruction set alone. On a 2-core AMD EPYC (Zen 5),
fp32, the backbone's shapes went from 143-175 to 285-400 GFLOP/s (`benchmarks/bench_model.py` has the whole
encode). Same arithmetic, another summation order: results agree within float rounding (~1e-6 relative).

Attention is written as blocks of two oneDNN products around a softmax (rows of queries at a time, so a
block's score matrix stays in cache), since torch's CPU flash-attention kernel calls MKL's sgemm too. The
score block is the only extra memory: `SCORE_BLOCK` floats, ~6 MB.

Everything else takes torch's usual path: other devices and dtypes, autograd, CPU autocast, non-x86
machines, torch builds without oneDNN or without the `mkldnn::_linear_pointwise` op (inductor's own), or
`torch.backends.mkldnn.enabled = False`.
"""

from __future__ import annotations

import functools
import logging
import platform
import threading

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# Scores per attention block (query rows x keys), at most: 512 x 3072 for the backbone's self-attention and
# 1024 x 1025 for its cross-attention were the fastest of 256..3072 rows on the full-size shapes (~6 MB).
SCORE_BLOCK = 3 << 19


@functools.cache
def onednn_available() -> bool:
    """oneDNN's fused linear op exists in this torch build on an x86-64 machine and gives F.linear's
    numbers."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=gen) for s in ((32, 24), (40, 24), (40,)))
        ok = torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5)
    except (AttributeError, RuntimeError, TypeError) as exc:
        logger.debug("oneDNN linear not usable here: %s", exc)
        return False
    return bool(ok)


def applies(*tensors: torch.Tensor) -> bool:
    """True when the oneDNN path may replace torch's for an op on these tensors; then also gives the calling
    thread torch's thread count (every oneDNN call passes this gate first)."""
    if not torch.backends.mkldnn.enabled or torch.is_autocast_enabled("cpu"):
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32 or (grad and t.requires_grad):
            return False
    if not onednn_available():
        return False
    _share_thread_count()
    return True


_thread = threading.local()


def _share_thread_count() -> None:
    """Give this thread's OpenMP team torch's thread count. oneDNN asks OpenMP, whose count is per thread: a
    thread that has run no torch parallel loop yet (a serving replica's worker thread) would otherwise run
    the products on one core or on the OMP_NUM_THREADS Ray set."""
    threads = torch.get_num_threads()
    if getattr(_thread, "threads", None) != threads:
        torch.set_num_threads(threads)  # the calling thread's OpenMP count, and torch's unchanged
        _thread.threads = threads


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, gelu: bool = False
) -> torch.Tensor:
    """F.linear, then exact (erf) GELU when `gelu`; the GELU runs inside the product's epilogue."""
    if applies(x, weight) and weight.is_contiguous():  # a strided weight operand is read ~300x slower
        return torch.ops.mkldnn._linear_pointwise(
            x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else ""
        )
    out = F.linear(x, weight, bias)
    return torch.ops.aten.gelu_(out) if gelu else out


def linear_mul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, other: torch.Tensor
) -> torch.Tensor:
    """F.linear(x, weight, bias) * other, the product fused into the epilogue."""
    if applies(x, weight, other) and weight.is_contiguous():
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, bias, "mul")
    return F.linear(x, weight, bias).mul_(other)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """F.scaled_dot_product_attention(q, k, v) for q (B, h, Tq, d), k and v (B, h, Tk, d) -> (B, h, Tq, d);
    scale 1/sqrt(d), no mask."""
    if not applies(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)
    product = torch.ops.mkldnn._linear_pointwise
    batch, heads, length, dim = q.shape
    blocks = -(-length * k.shape[2] // SCORE_BLOCK)
    rows = -(-length // blocks)  # even blocks: 6 x 512 rows for 3072 keys, 3 x 1024 for 1025
    scale = dim**-0.5
    out = q.new_empty(batch, heads, length, dim)
    for b in range(batch):
        for h in range(heads):
            # the scale on the keys (exact for d = 64); oneDNN reads a strided weight operand ~300x slower,
            # so keys and values become contiguous (Tk x d, small)
            keys = torch.mul(k[b, h], scale).contiguous()  # (Tk, d)
            values_t = v[b, h].t().contiguous()  # (d, Tk)
            for start in range(0, length, rows):
                scores = product(q[b, h, start : start + rows], keys, None, "none", [], "")  # (r, Tk)
                probs = torch.softmax(scores, dim=-1)
                out[b, h, start : start + rows] = product(probs, values_t, None, "none", [], "")  # (r, d)
    return out


class Linear(nn.Linear):
    """nn.Linear whose forward goes through `linear` (same parameters, same state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
