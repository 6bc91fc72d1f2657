"""mm / addmm / bmm / matmul / linear: accuracy vs float64, bitwise batch invariance, edges."""

from __future__ import annotations

import pytest
import torch
from bi_testutils import (
    DTYPES,
    assert_accurate,
    batches,
    probe_positions,
    rand,
    with_probe,
)

import bi_triton_ascend as bta
from bi_triton_ascend.ops.gemm_config import (
    BLOCK_K,
    Tiles,
    cdiv,
    chain_for,
    force_tiles,
    tiles_for,
)

# (N, K): odd N with segmented K (S=2, last block partial), and an even, segmented shape.
SHAPES = [pytest.param(37, 250, id="N37-K250-odd"), pytest.param(48, 200, id="N48-K200")]
DTYPE_IDS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])


# --------------------------------------------------------------------- the chain
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("n,k", [(1024, 2048), (4096, 12288), (256, 4096), (37, 250), (48, 0)])
def test_chain_covers_k_in_equal_segments(n: int, k: int, dtype: torch.dtype) -> None:
    chain = chain_for(n, k, dtype)
    assert chain.block_k == BLOCK_K[dtype]
    assert chain.seg_blocks * chain.num_segs == cdiv(k, chain.block_k)
    assert chain.num_segs >= 1 and (chain.num_segs & (chain.num_segs - 1)) == 0


def test_segments_only_for_narrow_outputs() -> None:
    # Qwen3 linear shapes keep one accumulator (fast large-M tiles); narrow N splits K.
    for n, k in [(4096, 1024), (1024, 2048), (6144, 4096), (4096, 12288), (24576, 4096)]:
        assert chain_for(n, k, torch.bfloat16).num_segs == 1
    assert chain_for(512, 4096, torch.bfloat16).num_segs == 2
    assert chain_for(256, 4096, torch.bfloat16).num_segs == 4


# --------------------------------------------------------------------- accuracy
@dtypes
@pytest.mark.parametrize("n,k", SHAPES)
def test_mm_matches_float64(n: int, k: int, dtype: torch.dtype, device: torch.device) -> None:
    for m in (1, 20, 70):
        a, b = rand(m, k, dtype=dtype, device=device), rand(k, n, dtype=dtype, device=device)
        assert_accurate(bta.mm(a, b), a.double() @ b.double(), dtype)


@dtypes
@pytest.mark.parametrize(
    "bias_shape,beta,alpha",
    [
        pytest.param((48,), 1.0, 1.0, id="row-bias"),
        pytest.param((20, 1), 0.5, 2.0, id="col-bias-scaled"),
        pytest.param((20, 48), -1.0, 0.25, id="full-bias"),
        pytest.param((), 1.0, 1.0, id="scalar-bias"),
    ],
)
def test_addmm_matches_float64(
    bias_shape: tuple[int, ...], beta: float, alpha: float, dtype: torch.dtype, device: torch.device
) -> None:
    a, b = rand(20, 200, dtype=dtype, device=device), rand(200, 48, dtype=dtype, device=device)
    bias = rand(*bias_shape, dtype=dtype, device=device)
    ref = beta * bias.double() + alpha * (a.double() @ b.double())
    assert_accurate(bta.addmm(bias, a, b, beta=beta, alpha=alpha), ref, dtype)


def test_addmm_beta_zero_ignores_nan_bias(device: torch.device) -> None:
    a, b = (
        rand(5, 64, dtype=torch.float32, device=device),
        rand(64, 8, dtype=torch.float32, device=device),
    )
    bias = torch.full((8,), float("nan"), device=device)
    assert_accurate(bta.addmm(bias, a, b, beta=0.0), a.double() @ b.double(), torch.float32)


@dtypes
def test_bmm_matches_float64(dtype: torch.dtype, device: torch.device) -> None:
    a, b = (
        rand(3, 17, 200, dtype=dtype, device=device),
        rand(3, 200, 37, dtype=dtype, device=device),
    )
    assert_accurate(bta.bmm(a, b), a.double() @ b.double(), dtype)


MATMUL_RANKS = [
    pytest.param((64,), (64,), id="1d-1d"),
    pytest.param((64,), (64, 9), id="1d-2d"),
    pytest.param((5, 64), (64,), id="2d-1d"),
    pytest.param((5, 64), (64, 9), id="2d-2d"),
    pytest.param((2, 5, 64), (64, 9), id="3d-2d"),
    pytest.param((5, 64), (3, 64, 9), id="2d-3d"),
    pytest.param((3, 5, 64), (3, 64, 9), id="3d-3d"),
    pytest.param((2, 1, 5, 64), (1, 3, 64, 9), id="4d-broadcast"),
    pytest.param((64,), (2, 64, 9), id="1d-3d"),
    pytest.param((2, 5, 64), (64,), id="3d-1d"),
    pytest.param((2, 3, 5, 64), (3, 64, 9), id="4d-3d"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("a_shape,b_shape", MATMUL_RANKS)
def test_matmul_every_rank_combination(
    a_shape: tuple[int, ...], b_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> None:
    a, b = rand(*a_shape, dtype=dtype, device=device), rand(*b_shape, dtype=dtype, device=device)
    out = bta.matmul(a, b)
    assert out.dtype == dtype
    assert_accurate(out, torch.matmul(a.double(), b.double()), dtype)


@dtypes
@pytest.mark.parametrize("x_shape", [(64,), (7, 64), (2, 3, 64)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_linear_matches_float64(
    x_shape: tuple[int, ...], with_bias: bool, dtype: torch.dtype, device: torch.device
) -> None:
    x, w = rand(*x_shape, dtype=dtype, device=device), rand(37, 64, dtype=dtype, device=device)
    bias = rand(37, dtype=dtype, device=device) if with_bias else None
    ref = torch.nn.functional.linear(
        x.double(), w.double(), None if bias is None else bias.double()
    )
    assert_accurate(bta.linear(x, w, bias), ref, dtype)


# --------------------------------------------------------------------- invariance
@dtypes
@pytest.mark.parametrize("n,k", SHAPES)
def test_linear_row_alone_equals_row_in_any_batch(
    n: int, k: int, dtype: torch.dtype, device: torch.device
) -> None:
    w = rand(n, k, dtype=dtype, device=device)
    bias = rand(n, dtype=dtype, device=device)
    probe = rand(1, k, dtype=dtype, device=device)
    alone = bta.linear(probe, w, bias)
    for m in batches():
        out = bta.linear(with_probe(probe, m), w, bias)
        for p in probe_positions(m):
            assert torch.equal(out[p], alone[0]), f"M={m}, row {p}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=lambda d: DTYPE_IDS[d])
def test_mm_transposed_weight_invariant(dtype: torch.dtype, device: torch.device) -> None:
    # b given as a transposed (column-major) view, a as a strided slice of a wider buffer.
    b = rand(48, 200, dtype=dtype, device=device).t()
    probe = rand(1, 200, dtype=dtype, device=device)
    alone = bta.mm(probe, b)
    for m in (1, 3, 17, 33, 65):
        wide = torch.zeros(m, 400, dtype=dtype, device=device)
        wide[:, ::2] = with_probe(probe, m)
        out = bta.mm(wide[:, ::2], b)
        for p in probe_positions(m):
            assert torch.equal(out[p], alone[0]), f"M={m}, row {p}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=lambda d: DTYPE_IDS[d])
def test_bmm_entry_alone_equals_entry_in_any_batch(
    dtype: torch.dtype, device: torch.device
) -> None:
    probe_a = rand(1, 5, 200, dtype=dtype, device=device)
    probe_b = rand(1, 200, 37, dtype=dtype, device=device)
    alone = bta.bmm(probe_a, probe_b)
    for count in (1, 2, 3, 7):
        a = with_probe(probe_a, count)
        b = with_probe(probe_b, count)
        out = bta.bmm(a, b)
        for p in probe_positions(count):
            assert torch.equal(out[p], alone[0]), f"B={count}, entry {p}"
    # Rows within an entry: the first 5 rows of a taller entry equal the 5-row product.
    tall = torch.cat([probe_a, rand(1, 60, 200, dtype=dtype, device=device)], dim=1)
    assert torch.equal(bta.bmm(tall, probe_b)[:, :5], alone)


def test_matmul_folded_and_broadcast_paths_agree_with_mm(device: torch.device) -> None:
    w = rand(64, 37, dtype=torch.bfloat16, device=device)
    x = rand(2, 3, 5, 64, dtype=torch.bfloat16, device=device)
    by_rows = bta.mm(x.reshape(-1, 64), w).reshape(2, 3, 5, 37)
    assert torch.equal(bta.matmul(x, w), by_rows)  # folded into M
    assert torch.equal(bta.matmul(x.transpose(0, 1), w), by_rows.transpose(0, 1))  # batched
    assert torch.equal(bta.matmul(x, w.expand(3, 64, 37)), by_rows)  # broadcast weight


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=lambda d: DTYPE_IDS[d])
def test_kernel_and_tiles_do_not_change_bits(dtype: torch.dtype, device: torch.device) -> None:
    # Same M, different kernels/tiles: split-K kernel vs persistent, several BLOCK_M/BLOCK_N.
    a, b = rand(40, 250, dtype=dtype, device=device), rand(250, 37, dtype=dtype, device=device)
    assert chain_for(37, 250, dtype).num_segs > 1
    outs = []
    for tiles in (Tiles(True, 16, 32, 4, 1), Tiles(True, 64, 16, 4, 1),
                  Tiles(False, 32, 32, 4, 1), Tiles(False, 64, 64, 4, 1)):  # fmt: skip
        with force_tiles(tiles):
            outs.append(bta.mm(a, b))
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


@pytest.mark.parametrize("segmented", [True, False], ids=["segments", "one-segment"])
def test_tile_order_covers_every_tile_and_keeps_bits(segmented: bool, device: torch.device) -> None:
    # group_m only reorders the tiles (grouped: row tiles first within a column block). Odd
    # tile counts (M = 50 -> 4 row tiles of 16, N = 70 or 37 -> 3 column tiles of 32, a partial
    # last group) catch a mapping that skips or repeats a tile; a batch of 2 crosses batches.
    n, k = (37, 250) if segmented else (70, 64)
    a = rand(2, 50, k, dtype=torch.bfloat16, device=device)
    b = rand(2, k, n, dtype=torch.bfloat16, device=device)
    assert (chain_for(n, k, torch.bfloat16).num_segs > 1) == segmented
    want = torch.bmm(a.double(), b.double())
    outs = []
    for split, group in ((True, 1), (True, 3), (True, 8), (False, 1), (False, 3)):
        with force_tiles(Tiles(split, 16, 32, 4, 1, group_m=group)):
            outs.append(bta.bmm(a, b))
    for out in outs:
        assert torch.equal(out, outs[0])
    assert ((outs[0].double() - want).abs() / (want.abs() + 1)).max().item() < 1e-2  # bf16 out


def test_cuda_table_orders_split_tiles_by_output_width() -> None:
    # Grouped order (8) where the weights outgrow L2, row-major (1) for narrow outputs; the
    # persistent kernel keeps its grouping. Orders never change bits (test above), only speed.
    def tiles(m: int, n: int, k: int) -> Tiles:
        return tiles_for("sm90", m, n, chain_for(n, k, torch.bfloat16), torch.bfloat16, 132)

    assert tiles(128, 1024, 2048).split and tiles(128, 1024, 2048).group_m == 1
    assert tiles(512, 1024, 3072).split and tiles(512, 1024, 3072).group_m == 1
    assert tiles(128, 4096, 12288).split and tiles(128, 4096, 12288).group_m == 8
    assert not tiles(8192, 1024, 2048).split and tiles(8192, 1024, 2048).group_m == 8


def test_twenty_calls_are_identical(device: torch.device) -> None:
    a, b = (
        rand(33, 200, dtype=torch.bfloat16, device=device),
        rand(200, 48, dtype=torch.bfloat16, device=device),
    )
    first = bta.mm(a, b)
    for _ in range(19):
        assert torch.equal(bta.mm(a, b), first)


# --------------------------------------------------------------------- edges
@pytest.mark.parametrize(
    "m,k,n", [(0, 64, 8), (5, 0, 8), (5, 64, 0), (0, 0, 0)], ids=["M0", "K0", "N0", "all0"]
)
def test_empty_inputs(m: int, k: int, n: int, device: torch.device) -> None:
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    assert torch.equal(bta.mm(a, b), torch.zeros(m, n, device=device))
    bias = torch.randn(n, device=device)
    torch.testing.assert_close(bta.addmm(bias, a, b, beta=2.0), (2 * bias).expand(m, n))
    assert bta.bmm(a[None], b[None]).shape == (1, m, n)
    assert bta.bmm(
        torch.empty(0, m, k, device=device), torch.empty(0, k, n, device=device)
    ).shape == (0, m, n)
    assert bta.linear(torch.randn(2, m, k, device=device), b.t()).shape == (2, m, n)


def test_bad_arguments_raise(device: torch.device) -> None:
    a = torch.randn(4, 8, device=device)
    with pytest.raises(ValueError, match="mm: a's last dimension"):
        bta.mm(a, torch.randn(7, 3, device=device))
    with pytest.raises(TypeError, match="must have the dtype of a"):
        bta.mm(a, torch.randn(8, 3, device=device, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"bf16|bfloat16"):
        bta.mm(a.to(torch.int32), torch.randn(8, 3, device=device).to(torch.int32))
    with pytest.raises(ValueError, match="bmm: a and b must have the same batch size"):
        bta.bmm(torch.randn(2, 4, 8, device=device), torch.randn(3, 8, 3, device=device))
    with pytest.raises(ValueError, match="linear: weight must be 2-D"):
        bta.linear(a, torch.randn(8, device=device))
    with pytest.raises(ValueError, match="addmm: bias must broadcast"):
        bta.addmm(torch.randn(5, device=device), a, torch.randn(8, 3, device=device))


# --------------------------------------------------------------------- fp32 output, N-free chain
def test_fp32_output_is_the_unrounded_accumulator(device: torch.device) -> None:
    from bi_triton_ascend.ops.gemm import batched_gemm

    a = rand(3, 5, 256, dtype=torch.bfloat16, device=device)
    b = rand(3, 256, 48, dtype=torch.bfloat16, device=device)
    wide = batched_gemm(a, b, out_dtype=torch.float32)
    assert wide.dtype == torch.float32
    assert not torch.equal(wide, wide.to(torch.bfloat16).float())  # really not rounded
    exact = a.double() @ b.double()
    torch.testing.assert_close(wide.double(), exact, rtol=1e-5, atol=1e-4)
    for row in (0, 4):  # batch-invariant like the default output: a row alone, same bits
        alone = batched_gemm(a[:, row : row + 1], b, out_dtype=torch.float32)
        assert torch.equal(alone, wide[:, row : row + 1])
    with pytest.raises(ValueError, match="out_dtype"):
        batched_gemm(a, b, out_dtype=torch.float16)


def test_n_independent_chain_switch() -> None:
    from bi_triton_ascend.ops import gemm_config

    assert chain_for(256, 4096, torch.bfloat16).num_segs == 4  # default: N-dependent
    gemm_config.set_n_independent_chain(True)
    try:
        assert gemm_config.n_independent_chain()
        for n in (32, 256, 512, 4096):
            assert chain_for(n, 4096, torch.bfloat16) == chain_for(8192, 4096, torch.bfloat16)
    finally:
        gemm_config.set_n_independent_chain(False)
    assert chain_for(256, 4096, torch.bfloat16).num_segs == 4
    with pytest.raises(TypeError, match="on must be a bool"):
        gemm_config.set_n_independent_chain(1)  # type: ignore[arg-type]


def test_column_split_keeps_bits_with_n_independent_chain(device: torch.device) -> None:
    """A column-parallel shard (half of N) keeps the full product's bits on the K-only chain.

    Compared on the fp32 accumulator, where the default (N-dependent) chain visibly differs.
    """
    from bi_triton_ascend.ops import gemm_config
    from bi_triton_ascend.ops.gemm import batched_gemm

    x = rand(1, 4, 2048, dtype=torch.bfloat16, device=device)
    w = rand(1, 2048, 256, dtype=torch.bfloat16, device=device)

    def full_and_halves() -> tuple[torch.Tensor, torch.Tensor]:
        full = batched_gemm(x, w, out_dtype=torch.float32)
        parts = [batched_gemm(x, w[..., h : h + 128], out_dtype=torch.float32) for h in (0, 128)]
        return full, torch.cat(parts, dim=-1)

    assert chain_for(256, 2048, torch.bfloat16) != chain_for(128, 2048, torch.bfloat16)
    assert not torch.equal(*full_and_halves())
    gemm_config.set_n_independent_chain(True)
    try:
        assert torch.equal(*full_and_halves())
    finally:
        gemm_config.set_n_independent_chain(False)


# --------------------------------------------------------------------- linear's launch plans
def _fresh_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``linear`` through its full path (argument folding, tile selection), no stored plan:
    plans are skipped under ``force_tiles``, and tiles never change the bits."""
    from bi_triton_ascend import _platform
    from bi_triton_ascend.ops.gemm_config import select_tiles

    m = x.shape[-2] if x.dim() > 1 else 1
    chain = chain_for(w.shape[0], w.shape[1], x.dtype)
    tiles = select_tiles(
        _platform.arch(x.device), m, w.shape[0], chain, x.dtype, _platform.num_programs(x.device)
    )
    with force_tiles(tiles):
        return bta.linear(x, w, bias)


def test_linear_plan_replays_the_launch_with_new_pointers(device: torch.device) -> None:
    """A stored plan serves later calls of the same shapes: same bits as the full path for new
    data, offset views (other pointers, same strides) and a bias; copies are never planned."""
    from bi_triton_ascend.ops import _plans as plans

    plans.clear()
    big = rand(9, 200, dtype=torch.bfloat16, device=device)
    w = rand(48, 200, dtype=torch.bfloat16, device=device)
    bias = rand(48, dtype=torch.bfloat16, device=device)
    for args in [(big[0:3], w, None), (big[0:3], w, bias), (big[0], w, None)]:
        first = bta.linear(*args)
        assert torch.equal(first, _fresh_linear(*args))
    assert plans.planned() == 3
    for args in [(big[5:8], w, None), (big[4:7], w, bias), (big[7], w, None)]:
        assert torch.equal(bta.linear(*args), _fresh_linear(*args))
    assert plans.planned() == 3  # all served by the stored plans
    # Leading dimensions that no view can fold: the input is copied, so no plan is stored.
    x4 = rand(3, 2, 4, 200, dtype=torch.bfloat16, device=device).permute(1, 0, 2, 3)
    for _ in range(2):
        assert torch.equal(bta.linear(x4, w), _fresh_linear(x4, w, None))
    assert plans.planned() == 3


@pytest.mark.parametrize(
    "a_shape,b_shape,transpose_b,planned",
    [
        ((2, 3, 1, 24), (2, 3, 40, 24), True, True),  # attention scores q @ k^T (decode)
        ((2, 3, 5, 40), (2, 3, 40, 24), False, True),  # probabilities @ v
        ((4, 1, 24), (24,), False, True),  # matrix @ vector
        ((24,), (3, 24, 8), False, True),  # vector @ batch of matrices (broadcast view)
        ((3, 1, 5, 24), (1, 2, 24, 8), False, False),  # broadcast on both sides: copies
    ],
)
def test_matmul_plan_replays_with_new_data(
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    transpose_b: bool,
    planned: bool,
    device: torch.device,
) -> None:
    """``matmul``'s stored plans give the full path's bits for new data of the same shapes."""
    from bi_triton_ascend.ops import _plans as plans

    plans.clear()

    def operands(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        a = torch.randn(a_shape, device=device).to(torch.bfloat16)
        b = torch.randn(b_shape, device=device).to(torch.bfloat16)
        return a, (b.transpose(-1, -2) if transpose_b else b)  # k^T: a strided view

    with force_tiles(Tiles(True, 16, 32, 4, 1)):  # the full path (plans are skipped here)
        expected = [bta.matmul(*operands(seed)) for seed in range(3)]
    got = [bta.matmul(*operands(seed)) for seed in range(3)]
    for want, have in zip(expected, got, strict=True):
        assert want.shape == have.shape and torch.equal(want, have)
    assert plans.planned() == int(planned)


def test_mm_addmm_bmm_plans_replay_with_new_data(device: torch.device) -> None:
    """``mm``, ``addmm`` (scalars in the key) and ``bmm`` replay their plans bit for bit."""
    from bi_triton_ascend.ops import _plans as plans

    plans.clear()

    def calls(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        a = torch.randn(5, 200, device=device).to(torch.bfloat16)
        w = torch.randn(48, 200, device=device).to(torch.bfloat16)
        bias = torch.randn(48, device=device).to(torch.bfloat16)
        a3 = torch.randn(3, 5, 200, device=device).to(torch.bfloat16)
        return [
            bta.mm(a, w.t()),
            bta.addmm(bias, a, w.t()),
            bta.addmm(bias, a, w.t(), beta=0.5, alpha=2.0),
            bta.addmm(bias, a, w.t(), beta=0.0),
            bta.bmm(a3, w.t().expand(3, 200, 48)),
        ]

    with force_tiles(Tiles(True, 16, 32, 4, 1)):  # the full path (plans are skipped here)
        expected = [calls(seed) for seed in range(3)]
    got = [calls(seed) for seed in range(3)]
    assert plans.planned() == 5
    for want_row, got_row in zip(expected, got, strict=True):
        for want, have in zip(want_row, got_row, strict=True):
            assert want.shape == have.shape and torch.equal(want, have)
