from __future__ import annotations

import pytest
import torch

import ir_dispatch
from vllm_bi_plugin import _fp8

FP8 = getattr(torch, "float8_e4m3fn", None)
pytestmark = pytest.mark.skipif(FP8 is None, reason="this torch has no float8_e4m3fn")


def _inputs(m: int = 6, k: int = 32, n: int = 16):
    torch.manual_seed(0)
    a = (torch.randn(2, m // 2, k)).to(FP8)
    b = torch.randn(n, k).to(FP8).t()  # [K, N] column-major, as vLLM stores FP8 weights
    scale_a = torch.rand(m, 1) + 0.5
    scale_b = torch.rand(1, n) + 0.5
    return a, b, scale_a, scale_b


def test_batch_invariant_provider_serves_in_the_mode() -> None:
    calls = []

    def vllm_cutlass(a, b, scale_a, scale_b, out_dtype, bias=None):
        calls.append(a.shape)
        return torch.zeros(a.shape[0], b.shape[1], dtype=out_dtype)

    fn = _fp8.make_cutlass_scaled_mm(vllm_cutlass)
    a, b, sa, sb = _inputs()
    before = _fp8.fallback_calls()
    with ir_dispatch.batch_invariant(), ir_dispatch.recording() as rec:
        out = fn(a, b, sa, sb, torch.bfloat16)
    assert calls == [] and _fp8.fallback_calls() == before
    assert out.shape == (2, 3, 16) and out.dtype == torch.bfloat16
    assert rec.providers()["scaled_mm"] == ["cpu"]
    ref = ir_dispatch.ops.scaled_mm.native(a.reshape(6, 32), b, sa, sb, torch.bfloat16)
    torch.testing.assert_close(out.reshape(6, 16), ref, rtol=1e-2, atol=1e-2)


def test_vllm_serves_when_no_batch_invariant_provider_accepts() -> None:
    calls = []

    def vllm_cutlass(a, b, scale_a, scale_b, out_dtype, bias=None):
        calls.append(tuple(a.shape))
        return torch.full((a.shape[0], b.shape[1]), 7.0, dtype=out_dtype)

    fn = _fp8.make_cutlass_scaled_mm(vllm_cutlass)
    a, b, sa, sb = _inputs()
    before = _fp8.fallback_calls()
    with ir_dispatch.batch_invariant(False):
        out = fn(a, b, sa, sb, torch.float16)
    assert calls == [(6, 32)]
    assert _fp8.fallback_calls() == before + 1  # counted, so runs can say who served FP8
    assert out.shape == (2, 3, 16) and bool((out == 7).all())


def test_compiles_as_one_node() -> None:
    fn = _fp8.make_cutlass_scaled_mm(
        lambda a, b, sa, sb, dt, bias=None: torch.zeros(a.shape[0], b.shape[1], dtype=dt)
    )
    a, b, sa, sb = _inputs()
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    with ir_dispatch.batch_invariant():
        assert torch.equal(compiled(a, b, sa, sb, torch.bfloat16), fn(a, b, sa, sb, torch.bfloat16))
