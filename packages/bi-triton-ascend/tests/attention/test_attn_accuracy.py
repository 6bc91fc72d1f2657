"""Accuracy of the fixed-chunk attention against a float64 reference (per-dtype tolerances)."""

from __future__ import annotations

import pytest
import torch
from _attn_cases import (
    DEVICE,
    TINY_GQA,
    TOLERANCES,
    Heads,
    around_switch,
    chunk_of,
    grid_of,
    make_seq,
    needs_kernels,
    packed,
    paged,
)

from bi_triton_ascend.attention import paged_attention, reference_attention, varlen_attention

pytestmark = [
    needs_kernels,
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning"),
]
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]


def _lengths(chunk: int) -> list[int]:
    """One token, and lengths around the chunk size (chunk-1, chunk, chunk+1, 2 chunks + 1)."""
    return [1, chunk - 1, chunk, chunk + 1, 2 * chunk + 1]


def _check(
    heads: Heads,
    dtype: torch.dtype,
    q_lens: list[int | None],
    lengths: list[int],
    *,
    block: int = 16,
    window: int | None = None,
    causal: bool = True,
    mode: str = "auto",
    seed: int = 0,
) -> None:
    """Paged call vs the float64 reference; ``q_len None`` = the whole sequence."""
    gen = torch.Generator().manual_seed(seed)
    device = DEVICE or "cpu"
    seqs = [make_seq(n, heads, dtype, gen, device) for n in lengths]
    requests = [(s, s.length, q or s.length) for s, q in zip(seqs, q_lens, strict=True)]
    batch = paged(requests, block, gen, device)
    scale = heads.head_size**-0.5
    got = paged_attention(*batch.args(), scale, window, causal, mode=mode)
    want = reference_attention(
        *batch.args(), scale, window, causal, compute_dtype=torch.float64, out_dtype=torch.float64
    )
    atol, rtol = TOLERANCES[dtype]
    if got.dtype != dtype or got.shape != batch.query.shape:
        raise AssertionError(f"got {got.dtype} {tuple(got.shape)}, want {dtype} query shape")
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_around_chunk_sizes(dtype: torch.dtype) -> None:
    lengths = _lengths(chunk_of(TINY_GQA, dtype))
    _check(TINY_GQA, dtype, [None] * len(lengths), lengths)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_split_around_chunk_sizes(dtype: torch.dtype) -> None:
    lengths = _lengths(chunk_of(TINY_GQA, dtype))
    _check(TINY_GQA, dtype, [1] * len(lengths), lengths, mode="split")


@pytest.mark.parametrize(
    "heads",
    [
        pytest.param(Heads(2, 2, 16), id="mha"),
        pytest.param(Heads(4, 1, 16), id="mqa"),
        pytest.param(Heads(6, 2, 24), id="group3-head24"),
        pytest.param(Heads(2, 1, 40), id="head40"),
    ],
)
def test_gqa_layouts_and_head_sizes(heads: Heads) -> None:
    chunk = chunk_of(heads, torch.bfloat16)
    _check(heads, torch.bfloat16, [None, 3, 1], [chunk + 3, 2 * chunk, chunk - 2], mode="split")


@pytest.mark.parametrize("window", [1, 5, 40])
def test_sliding_window(window: int) -> None:
    chunk = chunk_of(TINY_GQA, torch.float32)
    lengths = [2 * chunk + 7, chunk + 2, 4]
    _check(TINY_GQA, torch.float32, [None, 1, 2], lengths, window=window, mode="split")


@pytest.mark.parametrize("mode", ["split", "fused"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_around_the_switch_to_long_chunks(dtype: torch.dtype, mode: str) -> None:
    """Lengths around the grid's switch and the first long chunk's end (127-129, 191-193 in the
    interpreter): decodes, a prefill and query tiles that straddle the switch."""
    grid = grid_of(TINY_GQA, dtype)
    lengths = around_switch(grid)
    _check(TINY_GQA, dtype, [1, None, 5, 1, grid.long + 2, 1], lengths, mode=mode)


FP32_GRID = grid_of(TINY_GQA, torch.float32)


@pytest.mark.parametrize("window", [40, FP32_GRID.long + 3], ids=["window40", "window-long+3"])
def test_sliding_window_across_the_switch(window: int) -> None:
    """Windows whose start lies in a short chunk and whose end lies in a long one."""
    grid = FP32_GRID
    lengths = [grid.long_from + 1, grid.long_from + grid.long + 1, grid.long_from + 2 * grid.long]
    _check(TINY_GQA, torch.float32, [1, 9, 2], lengths, window=window, mode="split")


def test_non_causal() -> None:
    chunk = chunk_of(TINY_GQA, torch.float32)
    _check(TINY_GQA, torch.float32, [None, 1, 5], [chunk + 5, 2 * chunk, 7], causal=False)


@pytest.mark.parametrize("block", [1, 5, 32], ids=["block1", "block5", "block32"])
def test_block_sizes(block: int) -> None:
    chunk = chunk_of(TINY_GQA, torch.float32)
    _check(TINY_GQA, torch.float32, [None, 1], [chunk + 9, 2 * chunk + 1], block=block)


def test_varlen_matches_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    device = DEVICE or "cpu"
    chunk = chunk_of(TINY_GQA, torch.float32)
    seqs = [make_seq(n, TINY_GQA, torch.float32, gen, device) for n in (chunk + 4, 3)]
    requests = [(seqs[0], seqs[0].length, 6), (seqs[1], 3, 3)]
    batch = packed(requests, device)
    got = varlen_attention(batch.q, batch.k, batch.v, batch.cu_seqlens_q, batch.cu_seqlens_k)
    want = reference_attention(
        *paged(requests, 16, gen, device).args(), TINY_GQA.head_size**-0.5,
        compute_dtype=torch.float64, out_dtype=torch.float64,
    )  # fmt: skip
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol)
