"""The CUTLASS kernel on an SM90 GPU: bitwise batch invariance, accuracy, determinism.

Every test here is marked ``cuda`` and skips without an SM90 GPU (with the reason); on an SM90
GPU the kernel is built first, and a build failure fails the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from fp8_testing import (
    GENERIC_SHAPES,
    GPU_BATCHES,
    QWEN3_8B,
    magnitude,
    random_fp8,
    reference,
    small_int_fp8,
    weight_t,
)

import bi_cutlass_fp8
import ir_dispatch as ird
from bi_cutlass_fp8 import SM90_CONFIGS, scaled_mm
from bi_cutlass_fp8.ops import scaled_mm_with_config

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("cutlass_module")]

CUDA = "cuda"
SHAPES = {**GENERIC_SHAPES, **QWEN3_8B}
# FP8 fast accumulation keeps >= 13 significant bits per wgmma k-block (DeepSeek-V3 measured
# about 14 on H800), so the sum's error scales with (|a| @ |b|); the output rounding is half an
# ulp of out_dtype (doubled for margin).
TOLERANCES = {
    torch.bfloat16: {"out_rtol": 2.0**-8, "sum_rtol": 2.0**-9},
    torch.float16: {"out_rtol": 2.0**-10, "sum_rtol": 2.0**-9},
}


def _scales(m: int, n: int, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if per_row:
        return torch.rand(m, 1, device=CUDA) + 0.5, torch.rand(1, n, device=CUDA) * 0.01 + 0.005
    return torch.tensor([0.8], device=CUDA), torch.tensor(0.01, device=CUDA)


@pytest.mark.parametrize("per_row", [True, False], ids=["per-token-channel", "per-tensor"])
@pytest.mark.parametrize(("n", "k"), list(SHAPES.values()), ids=list(SHAPES))
def test_needle_bitwise_invariant(n: int, k: int, per_row: bool) -> None:
    """One token alone vs at the front, middle and back of batches straddling the tiles."""
    b = weight_t(n, k, CUDA)
    _, sb = _scales(1, n, per_row)
    bias = torch.randn(n, device=CUDA).to(torch.bfloat16) if per_row else None
    needle = random_fp8(1, k, device=CUDA)
    needle_scale = torch.tensor([[0.9]], device=CUDA)
    alone = scaled_mm(
        needle, b, needle_scale if per_row else needle_scale[0], sb, torch.bfloat16, bias
    )
    pool = random_fp8(max(GPU_BATCHES), k, device=CUDA)
    pool_scale = torch.rand(max(GPU_BATCHES), 1, device=CUDA) + 0.5
    failures = []
    for m in GPU_BATCHES:
        for pos in sorted({0, m // 2, m - 1}):
            batch = pool[:m].clone()
            batch[pos] = needle[0]
            if per_row:
                sa = pool_scale[:m].clone()
                sa[pos] = needle_scale[0]
            else:
                sa = needle_scale[0]
            out = scaled_mm(batch, b, sa, sb, torch.bfloat16, bias)
            if not torch.equal(out[pos], alone[0]):
                diff = (out[pos].float() - alone[0].float()).abs().max().item()
                failures.append(f"M={m} pos={pos} max|diff|={diff:.3g}")
    assert not failures, failures


@pytest.mark.parametrize("cfg", SM90_CONFIGS, ids=lambda c: c.name)
def test_every_built_config_is_invariant_and_exact(cfg: bi_cutlass_fp8.TileConfig) -> None:
    """Each built config (candidates too) on small integers, where every step is exact."""
    n, k = 2048, 512
    b = small_int_fp8(n, k, device=CUDA).t()  # column-major [K, N]
    sb = torch.full((1, n), 0.25, device=CUDA)
    needle = small_int_fp8(1, k, device=CUDA)
    alone = scaled_mm_with_config(
        needle, b, torch.ones(1, 1, device=CUDA), sb, torch.bfloat16, None, cfg.name
    )
    for m in (1, 16, 17, 64, 65, 257):
        batch = small_int_fp8(m, k, device=CUDA)
        batch[m - 1] = needle[0]
        sa = torch.full((m, 1), 2.0, device=CUDA)
        sa[m - 1] = 1.0
        out = scaled_mm_with_config(batch, b, sa, sb, torch.bfloat16, None, cfg.name)
        assert torch.equal(out[m - 1], alone[0]), m
        assert torch.equal(out, reference(batch, b, sa, sb).to(torch.bfloat16)), m


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("per_row", [True, False], ids=["per-token-channel", "per-tensor"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("m", [1, 7, 64, 129])
def test_exact_on_small_integers(m: int, bias: bool, per_row: bool, out_dtype: torch.dtype) -> None:
    """Integer operands, power-of-two scales, integer bias: the result is exact, so any layout,
    scale or bias mix-up shows as a mismatch."""
    n, k = 1280 if m % 2 else 4096, 512
    a = small_int_fp8(m, k, device=CUDA)
    b = small_int_fp8(n, k, device=CUDA).t()
    if per_row:
        sa = 2.0 ** torch.randint(-2, 3, (m, 1), device=CUDA).float()
        sb = 2.0 ** torch.randint(-2, 3, (1, n), device=CUDA).float()
    else:
        sa, sb = torch.tensor([0.5], device=CUDA), torch.tensor([[4.0]], device=CUDA)
    bb = torch.randint(-8, 9, (n,), device=CUDA).to(out_dtype) if bias else None
    out = scaled_mm(a, b, sa, sb, out_dtype, bb)
    assert out.dtype == out_dtype and out.shape == (m, n) and out.is_contiguous()
    assert torch.equal(out, reference(a, b, sa, sb, bb).to(out_dtype))


def test_vllm_scale_layouts_give_the_same_bits() -> None:
    """``scale_b`` as ``[N, 1]``/``[N]`` (vLLM's channel scales) equals ``[1, N]``; ``[M]`` too."""
    m, n, k = 37, 4608, 4096
    a = random_fp8(m, k, device=CUDA)
    b = weight_t(n, k, CUDA)
    sa, sb = _scales(m, n, per_row=True)
    base = scaled_mm(a, b, sa, sb)
    assert torch.equal(scaled_mm(a, b, sa, sb.reshape(n, 1)), base)
    assert torch.equal(scaled_mm(a, b, sa.reshape(m), sb.reshape(n)), base)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(("n", "k"), list(QWEN3_8B.values()), ids=list(QWEN3_8B))
def test_accuracy_vs_float64(n: int, k: int, out_dtype: torch.dtype) -> None:
    m = 33
    a = random_fp8(m, k, device=CUDA)
    b = weight_t(n, k, CUDA)
    sa, sb = _scales(m, n, per_row=True)
    bias = torch.randn(n, device=CUDA).to(out_dtype)
    out = scaled_mm(a, b, sa, sb, out_dtype, bias)
    ref = reference(a, b, sa, sb, bias)
    tol = TOLERANCES[out_dtype]
    err = (out.double() - ref).abs()
    bound = tol["out_rtol"] * ref.abs() + tol["sum_rtol"] * magnitude(a, b, sa, sb)
    worst = float((err / bound).max())
    assert worst <= 1.0, f"error reaches {worst:.3g} of the bound"


def test_run_to_run_determinism() -> None:
    n, k = QWEN3_8B["qwen3_8b_down"]
    a = random_fp8(300, k, device=CUDA)
    b = weight_t(n, k, CUDA)
    sa, sb = _scales(300, n, per_row=True)
    first = scaled_mm(a, b, sa, sb)
    for _ in range(5):
        assert torch.equal(scaled_mm(a, b, sa, sb), first)


def test_m_zero_and_strided_a() -> None:
    n, k = 1024, 2048
    b = weight_t(n, k, CUDA)
    sb = torch.ones(1, n, device=CUDA)
    empty = scaled_mm(random_fp8(0, k, device=CUDA), b, torch.ones(1, device=CUDA), sb)
    assert empty.shape == (0, n)
    wide = random_fp8(5, 2 * k, device=CUDA)
    strided = wide[:, :k]  # lda = 2K
    assert torch.equal(
        scaled_mm(strided, b, torch.ones(1, device=CUDA), sb),
        scaled_mm(strided.contiguous(), b, torch.ones(1, device=CUDA), sb),
    )


def test_dispatch_through_ir_dispatch_and_custom_op() -> None:
    n, k = 4096, 4096
    a_t = random_fp8(k, 9, device=CUDA).t()  # non-contiguous a: the provider copies it
    b = weight_t(n, k, CUDA)
    sa, sb = _scales(9, n, per_row=True)
    direct = scaled_mm(a_t.contiguous(), b, sa, sb, torch.bfloat16)
    with ird.batch_invariant(), ird.recording() as rec:
        eager = ird.ops.scaled_mm.call_selected(a_t, b, sa, sb, torch.bfloat16)
        custom = ird.ops.scaled_mm(a_t, b, sa, sb, torch.bfloat16)
    assert rec.providers() == {"scaled_mm": ["cutlass_fp8"]}
    assert torch.equal(eager, direct) and torch.equal(custom, direct)


def test_cuda_graph_capture_and_replay() -> None:
    n, k = 6144, 4096
    b = weight_t(n, k, CUDA)
    a = random_fp8(17, k, device=CUDA)
    sa, sb = _scales(17, n, per_row=True)
    expected = scaled_mm(a, b, sa, sb)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = scaled_mm(a, b, sa, sb)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, expected)


def test_close_to_torch_scaled_mm() -> None:
    """Same math as cuBLASLt's FP8 GEMM up to accumulation rounding."""
    n, k = QWEN3_8B["qwen3_8b_o"]
    a = random_fp8(64, k, device=CUDA)
    b = weight_t(n, k, CUDA)
    sa, sb = torch.tensor(0.5, device=CUDA), torch.tensor(0.02, device=CUDA)
    ours = scaled_mm(a, b, sa, sb).float()
    theirs = torch._scaled_mm(a, b, sa, sb, out_dtype=torch.bfloat16).float()
    scale = float(magnitude(a, b, sa, sb).max())
    assert float((ours - theirs).abs().max()) <= 2.0**-7 * scale


def test_row_major_weight_goes_to_the_fallback_in_batch_invariant_mode() -> None:
    n, k = 1024, 2048
    a = random_fp8(4, k, device=CUDA)
    b_row_major = random_fp8(k, n, device=CUDA)
    args = (a, b_row_major, torch.ones(1, device=CUDA), torch.ones(1, device=CUDA), torch.bfloat16)
    with pytest.raises(ValueError, match="b must be column-major"):
        scaled_mm(*args)
    with ird.batch_invariant():
        verdicts = {i.provider: r for i, r in ird.ops.scaled_mm.evaluate(*args)}
    assert "b must be column-major" in str(verdicts["cutlass_fp8"])
    assert verdicts["dequant_bf16"] is None


@pytest.mark.parametrize(("n", "k"), list(QWEN3_8B.values()), ids=list(QWEN3_8B))
def test_built_configs_give_the_same_bits(
    n: int, k: int, record_property: Callable[[str, object], None]
) -> None:
    """Every built config gives the same bits: the premise of picking the tile from M.

    Every config accumulates the k-blocks of an output element in order into one fast
    accumulator; ``select_config`` picks among them by batch size, which stays batch-invariant
    only if the bits never depend on the tile. Also checks that each config alone gives the
    last row's bits again. Records the groups of bitwise-equal configs (``--junitxml`` keeps
    them as a property); on an H200 (2026-11-26) all five formed one group on every shape.
    """
    torch.manual_seed(n + k)
    b = weight_t(n, k, CUDA, scale=0.05)
    a = random_fp8(257, k, device=CUDA)
    sa, sb = _scales(257, n, per_row=True)
    outs = {
        cfg.name: scaled_mm_with_config(a, b, sa, sb, torch.bfloat16, None, cfg.name)
        for cfg in SM90_CONFIGS
    }
    groups: list[list[str]] = []
    for name, out in outs.items():
        group = next((g for g in groups if torch.equal(outs[g[0]], out)), None)
        if group is None:
            groups.append([name])
        else:
            group.append(name)
        # The last row alone must give the row's bits again (the config is invariant itself).
        alone = scaled_mm_with_config(a[-1:], b, sa[-1:], sb, torch.bfloat16, None, name)
        assert torch.equal(alone[0], out[-1]), name
    record_property("bitwise_equal_config_groups", groups)
    print(f"N={n} K={k}: bitwise-equal config groups {groups}")
    assert len(groups) == 1, f"configs disagree, so the tile must not follow M: {groups}"
