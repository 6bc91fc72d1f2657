"""The TP-invariant row-parallel order on the Triton batched GEMM (fp32 output): TP=1, 2, 4, 8.

This is the arithmetic vllm-bi-plugin's TP-invariant mode runs on GPUs (one batched GEMM over
the K segments, no fp32 weight copies), emulated per rank in one process.
"""

from __future__ import annotations

import pytest
import torch
from bi_testutils import rand

from bi_triton_ascend.ops.gemm import batched_gemm
from ir_dispatch import tp


def _segment_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return batched_gemm(a, b, out_dtype=torch.float32)


@pytest.mark.parametrize("m", [1, 5])
def test_batched_segments_are_tp_invariant(device: torch.device, m: int) -> None:
    x = rand(m, 1024, dtype=torch.bfloat16, device=device)
    w = rand(64, 1024, dtype=torch.bfloat16, device=device, scale=1 / 16)
    bias = rand(64, dtype=torch.bfloat16, device=device)
    one = tp.row_parallel_linear(x, w, bias, segment_gemm=_segment_gemm)
    for size in (2, 4, 8):
        emulated = tp.emulate_row_parallel_linear(x, w, size, bias, segment_gemm=_segment_gemm)
        assert torch.equal(emulated, one), size
    exact = (x.double() @ w.double().t() + bias.double()).to(torch.bfloat16)
    torch.testing.assert_close(one, exact, rtol=2e-2, atol=2e-2)


def test_segment_products_are_rows_alone(device: torch.device) -> None:
    """Batch invariance of the segment products: a row alone gives its bits inside a batch."""
    x = rand(6, 512, dtype=torch.bfloat16, device=device)
    w = rand(32, 512, dtype=torch.bfloat16, device=device)
    batch = tp.local_row_parallel_partial(x, w, 1, segment_gemm=_segment_gemm)
    for row in (0, 5):
        alone = tp.local_row_parallel_partial(x[row : row + 1], w, 1, segment_gemm=_segment_gemm)
        assert torch.equal(alone, batch[row : row + 1])


def test_plain_two_rank_sum_differs(device: torch.device) -> None:
    """Without the fixed segments, TP=2's rank partials in bf16 change the bits (can fail)."""
    x = rand(8, 1024, dtype=torch.bfloat16, device=device)
    w = rand(64, 1024, dtype=torch.bfloat16, device=device, scale=1 / 16)
    one = batched_gemm(x[None], w.t()[None])[0]
    ranks = [batched_gemm(x[None, :, h : h + 512], w.t()[None, h : h + 512])[0] for h in (0, 512)]
    assert not torch.equal(one, ranks[0] + ranks[1])


def test_fp32_output_tiles_fit_shared_memory() -> None:
    """An fp32 output shrinks stages, then N tiles, until the estimate fits; bf16 is untouched."""
    from bi_triton_ascend.ops.gemm_config import Chain, Tiles, fit_shared_memory

    chain = Chain(block_k=64, seg_blocks=4, num_segs=1)
    big = Tiles(split=False, block_m=128, block_n=256, num_warps=8, num_stages=3)
    h100 = 232448  # sharedMemPerBlockOptin of the H100 that overflowed at 278528 bytes
    fitted = fit_shared_memory(big, chain, 2, 4, h100)
    need = fitted.num_stages * (128 + fitted.block_n) * 64 * 2 + 128 * fitted.block_n * 4
    assert need <= h100 and (fitted.num_stages, fitted.block_n) == (2, 256)
    assert fit_shared_memory(big, chain, 2, 4, 150_000).block_n < 256
    assert fit_shared_memory(big, chain, 2, 2, h100) == big
    assert fit_shared_memory(big, chain, 2, 4, None) == big


@pytest.mark.skipif(not torch.cuda.is_available(), reason="real sizes need a CUDA GPU")
@pytest.mark.parametrize("m", [1, 17, 256, 2048, 8192])
@pytest.mark.parametrize(("n", "k"), [(1024, 2048), (1024, 3072), (4096, 4096), (4096, 12288)])
def test_row_parallel_qwen3_shapes_tp_invariant_on_gpu(m: int, n: int, k: int) -> None:
    """Qwen3 0.6B/8B o_proj and down_proj shapes: TP=1 equals emulated TP=2/4/8, bitwise."""
    x = rand(m, k, dtype=torch.bfloat16, device="cuda")
    w = rand(n, k, dtype=torch.bfloat16, device="cuda", scale=k**-0.5)
    one = tp.row_parallel_linear(x, w, None, segment_gemm=_segment_gemm)
    for size in (2, 4, 8):
        emulated = tp.emulate_row_parallel_linear(x, w, size, None, segment_gemm=_segment_gemm)
        assert torch.equal(emulated, one), size
    probe = tp.row_parallel_linear(x[-1:], w, None, segment_gemm=_segment_gemm)
    assert torch.equal(probe, one[-1:])
    exact = (x.double() @ w.double().t()).to(torch.bfloat16)
    torch.testing.assert_close(one, exact, rtol=2e-2, atol=2e-2)
