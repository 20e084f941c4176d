"""The oneDNN path for the encoder's products (triposr/cpu_matmul.py): torch's numbers within float rounding,
really taken on x86 CPUs, and torch's own path wherever it does not apply."""

from __future__ import annotations

import ctypes
import platform
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from triposr import cpu_matmul

X86 = platform.machine().lower() in ("x86_64", "amd64")
GEN = torch.Generator().manual_seed(0)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def heads(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T, n*d) -> (B, n, T, d) view, strided as the model's attention inputs are."""
    return t.view(t.shape[0], t.shape[1], n, -1).transpose(1, 2)


def ops_run(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.skipif(not X86, reason="the oneDNN path is for x86-64 CPUs")
def test_onednn_is_used_on_this_x86_machine():
    assert cpu_matmul.onednn_available()
    x, w, b = randn(7, 33), randn(20, 33), randn(20)
    with torch.inference_mode():
        ops = ops_run(lambda: cpu_matmul.linear(x, w, b))
    assert "mkldnn::_linear_pointwise" in ops and "aten::addmm" not in ops


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("shape", [(5, 24), (2, 37, 24)])
def test_linear_matches_torch(shape, gelu):
    x, w, b = randn(*shape), randn(48, 24), randn(48)
    expected = F.linear(x, w, b)
    expected = F.gelu(expected) if gelu else expected
    with torch.inference_mode():
        got = cpu_matmul.linear(x, w, b, gelu=gelu)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_linear_mul_matches_torch_with_half_of_a_weight_as_the_model_slices_it():
    x, w, b, other = randn(2, 19, 16), randn(64, 16), randn(64), randn(2, 19, 32)
    with torch.inference_mode():
        got = cpu_matmul.linear_mul(x, w[:32], b[:32], other)
    torch.testing.assert_close(got, F.linear(x, w[:32], b[:32]) * other, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("batch", "n", "tq", "tk"), [(1, 4, 40, 40), (3, 2, 33, 17), (2, 3, 5, 64)])
def test_attention_matches_sdpa_in_uneven_blocks(monkeypatch, batch, n, tq, tk):
    monkeypatch.setattr(cpu_matmul, "SCORE_BLOCK", 7 * tk)  # several blocks of query rows, the last shorter
    q, k, v = (heads(randn(batch, t, n * 16), n) for t in (tq, tk, tk))
    with torch.inference_mode():
        got = cpu_matmul.attention(q, k, v)
    assert got.shape == (batch, n, tq, 16)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not X86, reason="the oneDNN path is for x86-64 CPUs")
def test_a_new_thread_runs_the_products_on_torchs_thread_count():
    """oneDNN takes its thread count from OpenMP, per calling thread: a fresh thread (a Serve replica's
    executor) must use torch's count, not OMP_NUM_THREADS or OpenMP's default."""
    try:
        omp_max_threads = ctypes.CDLL(None).omp_get_max_threads
    except AttributeError:
        pytest.skip("torch is not linked with OpenMP here")
    seen: list[tuple[int, int]] = []

    def work() -> None:
        first = omp_max_threads()
        cpu_matmul.linear(randn(3, 8), randn(4, 8), None)
        seen.append((first, omp_max_threads()))

    before = torch.get_num_threads()
    wanted = 3 if before != 3 else 2
    torch.set_num_threads(wanted)
    try:
        with torch.inference_mode():
            thread = threading.Thread(target=work)
            thread.start()
            thread.join()
    finally:
        torch.set_num_threads(before)
    ((first, after),) = seen
    assert after == wanted, f"OpenMP threads in a new thread: {first} before, {after} after the product"


def test_a_strided_weight_takes_torchs_path():
    x, w = randn(5, 8), randn(8, 6).t()  # (6, 8), not contiguous
    with torch.inference_mode():
        ops = ops_run(lambda: cpu_matmul.linear(x, w, None))
        torch.testing.assert_close(cpu_matmul.linear(x, w, None), F.linear(x, w), atol=1e-5, rtol=1e-5)
    assert "mkldnn::_linear_pointwise" not in ops


def test_autograd_and_other_dtypes_take_torchs_path():
    x, w = randn(4, 8).requires_grad_(), randn(6, 8)
    y = cpu_matmul.linear(x, w, None)
    y.sum().backward()  # F.linear's autograd: the oneDNN op has none
    torch.testing.assert_close(x.grad, w.sum(0).expand(4, 8))
    assert not cpu_matmul.applies(randn(3, 3).double())
    with torch.inference_mode():
        ops = ops_run(lambda: cpu_matmul.linear(randn(3, 8).double(), randn(6, 8).double(), None))
    assert "mkldnn::_linear_pointwise" not in ops


def test_onednn_switched_off_in_torch_is_respected():
    q = k = v = heads(randn(1, 12, 32), 2)
    torch.backends.mkldnn.enabled = False
    try:
        with torch.inference_mode():
            assert not cpu_matmul.applies(q)
            ops = ops_run(lambda: cpu_matmul.attention(q, k, v))
    finally:
        torch.backends.mkldnn.enabled = True
    assert "mkldnn::_linear_pointwise" not in ops


@pytest.mark.skipif(not X86, reason="the oneDNN path is for x86-64 CPUs")
def test_the_encoder_runs_its_products_through_onednn(tiny_model):
    ops = ops_run(lambda: tiny_model.encode([np.full((32, 32, 3), 100, np.uint8)]))
    assert "mkldnn::_linear_pointwise" in ops
    assert not ops & {"aten::addmm", "aten::mm", "aten::_scaled_dot_product_flash_attention_for_cpu"}
