"""The TMA GEMM kernel: when it is chosen, and (on CUDA) that it keeps the pointer kernels' bits."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from bi_testutils import rand, with_probe

import bi_triton_ascend as bta
from bi_triton_ascend import _launch_cache, _platform
from bi_triton_ascend.ops import gemm
from bi_triton_ascend.ops.gemm_config import Tiles, chain_for, force_tiles, select_tiles, tiles_for

BF16 = torch.bfloat16


def _tiles(m: int, n: int, k: int, tma_ok: bool = True, dtype: torch.dtype = BF16) -> Tiles:
    return tiles_for("sm90", m, n, chain_for(n, k, dtype), dtype, 132, tma_ok)


# --------------------------------------------------------------------- the table
@pytest.mark.parametrize(
    "m,n,k,want",
    [
        (128, 4096, 1024, (64, 64, 8)),  # one wave of 64 x 64 tiles: deepest pipeline
        (128, 6144, 4096, (64, 64, 6)),  # 192 tiles: two programs per SM
        (128, 24576, 4096, (128, 128, 3)),
        (256, 4096, 12288, (64, 128, 6)),
        (256, 1024, 3072, (64, 32, 8)),
        (512, 4096, 4096, (128, 128, 4)),
        (512, 6144, 1024, (128, 128, 3)),
        (512, 1024, 2048, (64, 64, 8)),
    ],
)
def test_tma_tiles_fill_the_device_within_two_waves(
    m: int, n: int, k: int, want: tuple[int, int, int]
) -> None:
    tiles = _tiles(m, n, k)
    assert tiles.tma and tiles.split
    assert (tiles.block_m, tiles.block_n, tiles.num_stages) == want


@pytest.mark.parametrize(
    "m,n,k,why",
    [
        (64, 4096, 4096, "below the band"),
        (1024, 4096, 4096, "above the band"),
        (128, 1024, 2048, "no tile fills the SMs at BLOCK_N >= 32"),
        (512, 24576, 4096, "over two waves"),
        (128, 256, 4096, "several K segments"),
    ],
)
def test_no_tma_tiles_outside_their_band(m: int, n: int, k: int, why: str) -> None:
    assert not _tiles(m, n, k).tma, why


def test_no_tma_tiles_without_tma_operands_fp32_or_hopper() -> None:
    assert not _tiles(128, 4096, 4096, tma_ok=False).tma
    assert not _tiles(128, 4096, 4096, dtype=torch.float32).tma
    chain = chain_for(4096, 4096, BF16)
    assert not tiles_for("cuda", 128, 4096, chain, BF16, 132, True).tma
    assert not tiles_for("interp", 128, 4096, chain, BF16, 132, True).tma


def test_forced_tma_tiles_fall_back_to_pointers_where_tma_cannot_run() -> None:
    forced = Tiles(True, 64, 64, 4, 8, tma=True)
    one_seg, segmented = chain_for(4096, 4096, BF16), chain_for(256, 4096, BF16)
    with force_tiles(forced):
        assert select_tiles("sm90", 128, 4096, one_seg, BF16, 132, True) == forced
        for chain, ok in ((one_seg, False), (segmented, True)):
            fallback = select_tiles("sm90", 128, 4096, chain, BF16, 132, ok)
            assert not fallback.tma and fallback.block_m == 64 and fallback.num_stages == 8


# --------------------------------------------------------------------- the operands
def test_tma_layout_reads_strides_and_dtype() -> None:
    x = torch.zeros(1, 128, 256, dtype=BF16)
    weight = torch.zeros(512, 256, dtype=BF16)
    assert gemm.tma_layout(x, weight.t().unsqueeze(0)) is True  # linear: B^T is K-contiguous
    assert gemm.tma_layout(x, torch.zeros(1, 256, 512, dtype=BF16)) is False  # plain [K, N]
    assert gemm.tma_layout(x.expand(2, 128, 256), weight.t().expand(2, 256, 512)) is None
    assert gemm.tma_layout(x.float(), weight.t().unsqueeze(0).float()) is None
    assert gemm.tma_layout(x.transpose(1, 2).contiguous().transpose(1, 2), weight.t()[None]) is None
    odd_k = torch.zeros(1, 128, 250, dtype=BF16)  # a 500-byte row stride: not 16-byte aligned
    assert gemm.tma_layout(odd_k, torch.zeros(512, 250, dtype=BF16).t().unsqueeze(0)) is None
    odd_n = torch.zeros(1, 256, 37, dtype=BF16)  # B rows of 74 bytes
    assert gemm.tma_layout(x, odd_n) is None


def test_launch_table_keys_tensor_descriptors() -> None:
    descriptors = pytest.importorskip(
        "triton.tools.tensor_descriptor", reason="this Triton (triton-ascend 3.2) has no TMA"
    )
    TensorDescriptor = descriptors.TensorDescriptor

    base = torch.zeros(64, 128, dtype=BF16)
    desc = TensorDescriptor(base, [64, 128], [128, 1], [64, 64])
    other_block = TensorDescriptor(base, [64, 128], [128, 1], [32, 64])
    odd_rows = TensorDescriptor(base, [63, 128], [128, 1], [64, 64])
    key = _launch_cache._arg_key(desc)
    same = TensorDescriptor(base.clone(), [64, 128], [128, 1], [64, 64])
    assert key == _launch_cache._arg_key(same)
    assert key != _launch_cache._arg_key(other_block)
    assert key != _launch_cache._arg_key(odd_rows)


# --------------------------------------------------------------------- on the GPU
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("weight_layout", ["linear", "row-major"])
@pytest.mark.parametrize("n,k", [(1024, 3072), (4096, 1000), (2056, 512)])
def test_tma_kernel_keeps_the_pointer_kernels_bits(
    dtype: torch.dtype, weight_layout: str, n: int, k: int
) -> None:
    # K = 1000 ends in a partial K block (TMA's zero fill vs the pointer kernel's masks); N = 2056
    # in a partial column tile; M = 200 in a partial row tile.
    device = torch.device("cuda")
    x = rand(200, k, dtype=dtype, device=device)
    w = rand(n, k, dtype=dtype, device=device, scale=k**-0.5)
    b = w.t() if weight_layout == "linear" else w.t().contiguous()
    bias = rand(n, dtype=dtype, device=device)
    for tiles in (Tiles(True, 64, 64, 4, 8, tma=True), Tiles(True, 128, 128, 8, 3, tma=True),
                  Tiles(True, 64, 32, 4, 8, group_m=1, tma=True)):  # fmt: skip
        with force_tiles(tiles):
            launch = gemm.describe(x.unsqueeze(0), b.unsqueeze(0))
            assert launch.tma is not None, "TMA kernel not chosen"
            got = bta.mm(x, b)
            got_bias = bta.addmm(bias, x, b, beta=0.5, alpha=2.0)
        with force_tiles(dataclasses.replace(tiles, tma=False)):
            assert torch.equal(got, bta.mm(x, b)), tiles
            assert torch.equal(got_bias, bta.addmm(bias, x, b, beta=0.5, alpha=2.0)), tiles
    want = x.double() @ b.double()
    assert ((got.double() - want).abs() / (want.abs() + 1)).max().item() < 2e-2


@pytest.mark.cuda
@pytest.mark.parametrize("n,k", [(4096, 4096), (1024, 2048), (6144, 1024)])
def test_linear_row_is_invariant_across_the_tma_band(n: int, k: int) -> None:
    # Batch sizes on both sides of the band (64 | 65, 768 | 769) and of its tiles' edges.
    device = torch.device("cuda")
    w = rand(n, k, dtype=BF16, device=device, scale=k**-0.5)
    probe = rand(1, k, dtype=BF16, device=device)
    alone = bta.linear(probe, w)
    on_hopper = _platform.arch(device) == "sm90"
    x512 = torch.zeros(1, 512, k, dtype=BF16, device=device)
    assert (gemm.describe(x512, w.t().unsqueeze(0)).tma is not None) == on_hopper
    for m in (1, 63, 64, 65, 127, 128, 129, 255, 256, 257, 511, 512, 513, 767, 768, 769, 2048):
        batch = with_probe(probe, m)
        out = bta.linear(batch, w)
        for row in sorted({0, m // 2, m - 1}):
            assert torch.equal(out[row : row + 1], alone), (m, row)


@pytest.mark.cuda
def test_misaligned_operand_runs_the_pointer_kernel_with_the_same_bits() -> None:
    device = torch.device("cuda")
    w = rand(4096, 1024, dtype=BF16, device=device, scale=1 / 32)
    storage = rand(128 * 1024 + 8, dtype=BF16, device=device)
    aligned = storage[: 128 * 1024].view(128, 1024)
    shifted = storage[1 : 1 + 128 * 1024].view(128, 1024)  # starts 2 bytes past 16
    launch = gemm.describe(aligned.unsqueeze(0), w.t().unsqueeze(0))
    if launch.tma is None:
        pytest.skip("the TMA kernel runs on Hopper (sm90) only")
    out = torch.empty(1, 128, 4096, dtype=BF16, device=device)
    assert not launch.tma(shifted.unsqueeze(0), w.t().unsqueeze(0), out, out)
    got = bta.linear(shifted, w)
    assert torch.equal(got, bta.linear(shifted.clone(), w))
