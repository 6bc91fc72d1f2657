"""The ``dequant_bf16`` fallback on CPU: exactness of the dequantization, the documented
numerics, batch invariance, and dispatch through ir-dispatch.

A test-only batch-invariant CPU ``mm`` (each row multiplied on its own) makes these tests
independent of other packages; one more test runs the fallback on the real CPU provider
(bi-triton-ascend's ``triton`` under ``TRITON_INTERPRET=1``) and skips, naming it, without it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch
from fp8_testing import FP8, magnitude, random_fp8, reference

import ir_dispatch as ird
from bi_cutlass_fp8 import scaled_mm_dequant
from ir_dispatch import ops as ir_ops

ROWWISE = "test_rowwise_mm"
CPU_BATCHES = (1, 2, 3, 15, 16, 17, 33)
# |out - ref| <= acc_rtol * |a @ b| |sa sb| + out_rtol * |ref| + sum_rtol * (|a| @ |b|) |sa sb|:
# the bf16 rounding of the accumulator (half a bf16 ulp, 2^-9, doubled for margin), the final
# rounding to out_dtype (half an ulp, doubled), and the fp32 accumulation (tiny at these K).
TOLERANCES = {
    torch.bfloat16: {"acc_rtol": 2.0**-8, "out_rtol": 2.0**-8, "sum_rtol": 2.0**-20},
    torch.float16: {"acc_rtol": 2.0**-8, "out_rtol": 2.0**-10, "sum_rtol": 2.0**-20},
}


def _rowwise_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batch-invariant by construction: every row is its own [1, K] @ [K, N] product."""
    rows = [(a[i : i + 1].float() @ b.float()).to(a.dtype) for i in range(a.shape[0])]
    return torch.cat(rows) if rows else a.new_empty((0, b.shape[1]))


@pytest.fixture
def rowwise_mm() -> Iterator[None]:
    ir_ops.mm.register_impl(ROWWISE, batch_invariant=True, platforms=["cpu"], priority=99)(
        _rowwise_mm
    )
    yield
    ir_ops.mm.unregister_impl(ROWWISE)


def test_every_e4m3_value_is_exact_in_bf16() -> None:
    codes = torch.arange(256, dtype=torch.uint8).view(FP8)
    via_bf16 = codes.to(torch.bfloat16).to(torch.float32)
    direct = codes.to(torch.float32)
    nan = torch.isnan(direct)
    assert torch.equal(torch.isnan(via_bf16), nan) and int(nan.sum()) == 2
    assert torch.equal(via_bf16[~nan], direct[~nan])


def _problem(
    m: int,
    n: int = 32,
    k: int = 64,
    per_row: bool = True,
    bias: bool = True,
    out_dtype: torch.dtype = torch.bfloat16,
) -> tuple:
    a = random_fp8(m, k)
    b = random_fp8(n, k).t()
    sa = torch.rand(m, 1) + 0.5 if per_row else torch.tensor([0.75])
    sb = torch.rand(1, n) + 0.5 if per_row else torch.tensor(1.25)
    bb = torch.randn(n).to(out_dtype) if bias else None
    return a, b, sa, sb, out_dtype, bb


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("per_row", [True, False], ids=["per-row", "per-tensor"])
def test_documented_numerics(rowwise_mm: None, out_dtype: torch.dtype, per_row: bool) -> None:
    a, b, sa, sb, dt, bias = _problem(9, per_row=per_row, out_dtype=out_dtype)
    with ird.batch_invariant():
        out = scaled_mm_dequant(a, b, sa, sb, dt, bias)
    acc = _rowwise_mm(a.to(torch.bfloat16), b.to(torch.bfloat16)).float()
    sa2 = sa.reshape(-1, 1) if per_row else sa.reshape(())
    sb2 = sb.reshape(1, -1) if per_row else sb.reshape(())
    expected = ((acc * sa2) * sb2 + bias.float()).to(dt)  # type: ignore[union-attr]
    assert out.dtype == dt and out.shape == (9, 32)
    assert torch.equal(out, expected)
    tol = TOLERANCES[dt]
    ref = reference(a, b, sa, sb, bias)
    err = (out.double() - ref).abs()
    bound = (
        tol["acc_rtol"] * reference(a, b, sa, sb).abs()
        + tol["out_rtol"] * ref.abs()
        + tol["sum_rtol"] * magnitude(a, b, sa, sb)
    )
    assert bool((err <= bound).all()), float((err / bound).max())


@pytest.mark.parametrize("per_row", [True, False], ids=["per-row", "per-tensor"])
def test_needle_is_bitwise_invariant(rowwise_mm: None, dequant_first: None, per_row: bool) -> None:
    n, k = 48, 96
    b = random_fp8(n, k).t()
    sb = torch.rand(1, n) + 0.5 if per_row else torch.tensor([2.0])
    bias = torch.randn(n).to(torch.bfloat16)
    needle, needle_scale = random_fp8(1, k), torch.tensor([[0.3]])
    sa_alone = needle_scale if per_row else torch.tensor([0.3])
    with ird.batch_invariant():
        alone = ird.ops.scaled_mm(needle, b, sa_alone, sb, torch.bfloat16, bias)
        for m in CPU_BATCHES:
            for pos in sorted({0, m // 2, m - 1}):
                batch = random_fp8(m, k)
                batch[pos] = needle[0]
                sa = torch.rand(m, 1) + 0.5 if per_row else torch.tensor([0.3])
                if per_row:
                    sa[pos] = needle_scale[0]
                out = ird.ops.scaled_mm(batch, b, sa, sb, torch.bfloat16, bias)
                assert torch.equal(out[pos], alone[0]), (m, pos)


@pytest.fixture
def dequant_first() -> Iterator[None]:
    """Put ``dequant_bf16`` first for ``scaled_mm`` (a platform's own provider may outrank it)."""
    previous = ir_ops.scaled_mm._explicit_order
    ir_ops.scaled_mm.set_priority(["dequant_bf16"])
    yield
    ir_ops.scaled_mm.set_priority(previous)


def test_dispatch_picks_dequant_and_the_bi_mm(rowwise_mm: None, dequant_first: None) -> None:
    args = _problem(5)
    with ird.batch_invariant(), ird.recording() as rec:
        via_op = ird.ops.scaled_mm(*args)
    assert rec.providers() == {"scaled_mm": ["dequant_bf16"], "mm": [ROWWISE]}
    with ird.batch_invariant():
        assert torch.equal(via_op, scaled_mm_dequant(*args))


def test_no_batch_invariant_mm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ir_ops.mm, "_sorted", [ir_ops.mm.impl("native")])
    with ird.batch_invariant(), pytest.raises(ird.NoBatchInvariantImplError, match="'mm'"):
        scaled_mm_dequant(*_problem(3))


def test_outside_batch_invariant_mode_native_mm_serves() -> None:
    args = _problem(4, bias=False)
    out = scaled_mm_dequant(*args)
    ref = reference(*args[:4])
    assert float((out.double() - ref).abs().max()) <= 2.0**-7 * float(ref.abs().max())


def test_empty_batch(rowwise_mm: None) -> None:
    with ird.batch_invariant():
        out = scaled_mm_dequant(*_problem(0))
    assert out.shape == (0, 32) and out.dtype == torch.bfloat16


def _real_cpu_mm_provider() -> str | None:
    """Name of a batch-invariant CPU mm provider other than the test one, if any.

    ir-dispatch's own ``cpu`` provider, or bi-triton-ascend's ``triton`` under the interpreter.
    """
    if importlib.util.find_spec("bi_triton_ascend") is not None:
        import bi_triton_ascend  # noqa: F401  (registers its providers)
    a = torch.zeros(2, 16, dtype=torch.bfloat16)
    with ird.batch_invariant():  # providers may check the mode themselves
        verdicts = ir_ops.mm.evaluate(a, a.t())
    for impl, rejection in verdicts:
        if rejection is None and impl.provider not in (ROWWISE, "native"):
            return impl.provider
    return None


def test_fallback_on_the_real_cpu_provider() -> None:
    provider = _real_cpu_mm_provider()
    if provider is None:
        pytest.skip(
            "no batch-invariant CPU mm provider is registered with ir-dispatch: needs "
            "ir-dispatch's 'cpu' provider, or bi-triton-ascend's 'triton' with TRITON_INTERPRET=1"
        )
    k, n = 32, 16
    b = random_fp8(n, k).t()
    sb = torch.rand(1, n) + 0.5
    needle = random_fp8(1, k)
    with ird.batch_invariant(), ird.recording() as rec:
        alone = scaled_mm_dequant(needle, b, torch.ones(1, 1), sb, torch.bfloat16)
        for m in (2, 3, 17, 33):
            for pos in (0, m // 2, m - 1):
                batch = random_fp8(m, k)
                batch[pos] = needle[0]
                out = scaled_mm_dequant(batch, b, torch.ones(m, 1), sb, torch.bfloat16)
                assert torch.equal(out[pos], alone[0]), (provider, m, pos)
    assert rec.providers() == {"mm": [provider]}
    ref = reference(needle, b, torch.ones(1, 1), sb)
    assert float((alone.double() - ref).abs().max()) <= 2.0**-7 * float(ref.abs().max()) + 1e-6
