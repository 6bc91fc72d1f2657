"""TP-size invariance, emulated in one process: TP=1, 2, 4, 8 must give the same bits."""

from __future__ import annotations

import pytest
import torch

import ir_dispatch as ird
from ir_dispatch import tp

TP_SIZES = (1, 2, 4, 8)


def _providers_for_cpu_gemm() -> bool:
    return any(
        i.provider != "native" and i.is_batch_invariant_on(ird.PlatformKind.CPU)
        for i in ird.ops.mm.impls
    )


def test_segment_bounds_depend_on_k_only() -> None:
    assert tp.segment_bounds(64, 8) == [(i * 8, i * 8 + 8) for i in range(8)]
    with pytest.raises(ValueError, match="divisible"):
        tp.segment_bounds(60, 8)
    with pytest.raises(ValueError, match="power of two"):
        tp.segment_bounds(60, 6)


def test_supported_tp_sizes() -> None:
    assert tp.supported_tp_sizes(8) == (1, 2, 4, 8)


def test_tree_sum_order_is_fixed_pairs() -> None:
    # Values chosen so that a different association gives different fp32 bits.
    parts = [torch.tensor([v], dtype=torch.float32) for v in (1e8, 1.0, -1e8, 1.0)]
    assert torch.equal(tp.tree_sum(parts), (parts[0] + parts[1]) + (parts[2] + parts[3]))
    sequential = ((parts[0] + parts[1]) + parts[2]) + parts[3]
    assert not torch.equal(tp.tree_sum(parts), sequential)
    with pytest.raises(ValueError, match="power of two"):
        tp.tree_sum(parts[:3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_row_parallel_is_tp_invariant(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 256, dtype=dtype)
    w = torch.randn(96, 256, dtype=dtype) / 16
    bias = torch.randn(96, dtype=dtype)
    with ird.batch_invariant(_providers_for_cpu_gemm()):
        reference = tp.row_parallel_linear(x, w, bias)
        for size in TP_SIZES:
            assert torch.equal(tp.emulate_row_parallel_linear(x, w, size, bias), reference), size
    exact = (x.double() @ w.double().t() + bias.double()).to(dtype)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(reference, exact, rtol=tol, atol=tol)


def test_plain_sharded_sum_is_not_tp_invariant() -> None:
    """Without the fixed tree, per-rank partial sums differ across TP sizes (the test can fail)."""
    torch.manual_seed(1)
    x = torch.randn(16, 1024)
    w = torch.randn(64, 1024)

    def naive(size: int) -> torch.Tensor:
        shard = 1024 // size
        out = torch.zeros(16, 64)
        for r in range(size):
            out = out + x[:, r * shard : (r + 1) * shard] @ w[:, r * shard : (r + 1) * shard].t()
        return out

    assert not all(torch.equal(naive(s), naive(1)) for s in TP_SIZES)


@pytest.mark.skipif(not _providers_for_cpu_gemm(), reason="needs a batch-invariant CPU mm provider")
def test_column_parallel_is_tp_invariant() -> None:
    torch.manual_seed(2)
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    w = torch.randn(64, 128, dtype=torch.bfloat16)
    with ird.batch_invariant():
        reference = tp.emulate_column_parallel_linear(x, w, 1)
        for size in TP_SIZES:
            assert torch.equal(tp.emulate_column_parallel_linear(x, w, size), reference), size


def test_bad_tp_size() -> None:
    x, w = torch.randn(2, 48), torch.randn(4, 48)
    with pytest.raises(ValueError, match="must divide"):
        tp.local_row_parallel_partial(x, w, 3, 8)
