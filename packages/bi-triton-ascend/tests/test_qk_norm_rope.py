"""qk_norm_rope: the two-step bits (rms_norm, then fp32 RoPE rounded once), accuracy, invariance."""

from __future__ import annotations

import pytest
import torch
from bi_testutils import probe_positions, rand

import bi_triton_ascend as bta
from bi_triton_ascend import _platform
from ir_dispatch import ops as ir_ops

HEADS, KV_HEADS = 4, 2
EPS = 1e-6


def _round(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 -> dtype as the kernel rounds: to nearest even on devices; the Triton interpreter
    truncates fp32 -> bf16 (its software conversion), so emulate that there."""
    if _platform.interpreting() and dtype == torch.bfloat16:
        return (x.float().view(torch.int32) & ~0xFFFF).view(torch.float32).to(dtype)
    return x.to(dtype)


def _table(d: int, positions: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """vLLM's default RoPE table: ``cat(cos, sin)`` of ``pos * inv_freq``, cast to the dtype."""
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, d, 2, dtype=torch.float) / d))
    freqs = torch.outer(torch.arange(positions, dtype=torch.float), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype).to(device)


def _two_steps(
    x: torch.Tensor, w: torch.Tensor, pos: torch.Tensor, table: torch.Tensor
) -> torch.Tensor:
    """What the plugin ran before: the kit's rms_norm, then vLLM's GPU RoPE arithmetic."""
    normed = bta.rms_norm(x, w, EPS)
    cos, sin = table.index_select(0, pos).float().chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    x1, x2 = normed.float().chunk(2, dim=-1)
    return _round(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1), x.dtype)


def _qkv(t: int, d: int, dtype: torch.dtype, device: torch.device):  # type: ignore[no-untyped-def]
    """q, k as ``view(T, heads, d)`` of one QKV output (strided, read in place)."""
    qkv = rand(t, (HEADS + 2 * KV_HEADS) * d, dtype=dtype, device=device, scale=3.0)
    q = qkv[:, : HEADS * d].view(t, HEADS, d)
    k = qkv[:, HEADS * d : (HEADS + KV_HEADS) * d].view(t, KV_HEADS, d)
    return q, k


def _small_case(t: int, d: int, device: torch.device):  # type: ignore[no-untyped-def]
    """q, k (strided views), one bf16 weight for both, a table of 8 positions, positions 0..t-1."""
    q, k = _qkv(t, d, torch.bfloat16, device)
    w = rand(d, dtype=torch.bfloat16, device=device)
    return q, k, w, _table(d, 8, torch.bfloat16, device), torch.arange(t, device=device)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", [64, 128])
def test_equals_rms_norm_then_rope_bitwise(
    d: int, dtype: torch.dtype, device: torch.device
) -> None:
    q, k = _qkv(37, d, dtype, device)
    wq, wk = rand(d, dtype=dtype, device=device), rand(d, dtype=dtype, device=device)
    table = _table(d, 600, dtype, device)
    pos = torch.randint(0, 600, (37,), device=device)
    got_q, got_k = bta.qk_norm_rope(q, k, wq, wk, EPS, pos, table)
    assert got_q.shape == q.shape and got_k.shape == k.shape and got_q.is_contiguous()
    assert torch.equal(got_q, _two_steps(q, wq, pos, table))
    assert torch.equal(got_k, _two_steps(k, wk, pos, table))


def test_matches_float64_reference(device: torch.device) -> None:
    d = 128
    q, k = _qkv(11, d, torch.bfloat16, device)
    wq, wk = (rand(d, dtype=torch.bfloat16, device=device) for _ in range(2))
    table = _table(d, 64, torch.bfloat16, device)
    pos = torch.arange(11, device=device) * 5
    got_q, got_k = bta.qk_norm_rope(q, k, wq, wk, EPS, pos, table)
    for got, x, w in ((got_q, q, wq), (got_k, k, wk)):
        xd = x.double()
        normed = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + EPS) * w.double()
        cos, sin = table.index_select(0, pos).double().chunk(2, dim=-1)
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        x1, x2 = normed.chunk(2, dim=-1)
        ref = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        # Two bf16 roundings (normed, weighted) before the rotation: a few bf16 ulps.
        torch.testing.assert_close(got.double(), ref, atol=0.08, rtol=0.03)
    # and the op's native reference (rms_norm's native, fp32 RoPE): a few bf16 roundings apart
    nq, nk = ir_ops.qk_norm_rope.native(q, k, wq, wk, EPS, pos, table)
    torch.testing.assert_close(got_q.double(), nq.double(), atol=0.06, rtol=0.02)
    torch.testing.assert_close(got_k.double(), nk.double(), atol=0.06, rtol=0.02)


def test_token_alone_equals_token_in_any_batch(device: torch.device) -> None:
    """A token's heads do not depend on how many tokens share the launch (tile edges at
    ROWS = 32 heads of 128: 8 tokens of 4 q heads, 16 of 2 k heads)."""
    d = 128
    table = _table(d, 300, torch.bfloat16, device)
    wq, wk = (rand(d, dtype=torch.bfloat16, device=device) for _ in range(2))
    probe_q, probe_k = _qkv(1, d, torch.bfloat16, device)
    alone_q, alone_k = bta.qk_norm_rope(
        probe_q, probe_k, wq, wk, EPS, torch.tensor([123], device=device), table
    )
    for t in (1, 2, 3, 7, 8, 9, 15, 16, 17, 33, 65):
        q, k = _qkv(t, d, torch.bfloat16, device)
        pos = torch.randint(0, 300, (t,), device=device)
        for p in probe_positions(t):
            q[p], k[p], pos[p] = probe_q[0], probe_k[0], 123
            got_q, got_k = bta.qk_norm_rope(q, k, wq, wk, EPS, pos, table)
            assert torch.equal(got_q[p], alone_q[0]), f"T={t}, token {p}"
            assert torch.equal(got_k[p], alone_k[0]), f"T={t}, token {p}"


def test_empty_and_contiguous_inputs(device: torch.device) -> None:
    d = 64
    q, k, w, table, pos = _small_case(5, d, device)
    strided = bta.qk_norm_rope(q, k, w, w, EPS, pos, table)
    dense = bta.qk_norm_rope(q.contiguous(), k.contiguous(), w, w, EPS, pos, table)
    assert torch.equal(strided[0], dense[0]) and torch.equal(strided[1], dense[1])
    eq, ek = bta.qk_norm_rope(q[:0], k[:0], w, w, EPS, pos[:0], table)
    assert eq.shape == (0, HEADS, d) and ek.shape == (0, KV_HEADS, d)


def test_bad_arguments_are_named(device: torch.device) -> None:
    q, k, w, table, pos = _small_case(3, 64, device)
    with pytest.raises(TypeError, match="q must be bf16 or fp16"):
        bta.qk_norm_rope(q.float(), k.float(), w.float(), w.float(), EPS, pos, table.float())
    with pytest.raises(TypeError, match="k_weight must have q's dtype"):
        bta.qk_norm_rope(q, k, w, w.float(), EPS, pos, table)
    with pytest.raises(ValueError, match=r"q and k must be \[T, heads, head_dim\]"):
        bta.qk_norm_rope(q.flatten(1), k, w, w, EPS, pos, table)
    with pytest.raises(ValueError, match="head_dim must be a power of two"):
        bta.qk_norm_rope(q[..., :48], k[..., :48], w[:48], w[:48], EPS, pos, table[:, :48])
    with pytest.raises(ValueError, match="positions must be an int32/int64"):
        bta.qk_norm_rope(q, k, w, w, EPS, pos.float(), table)
    with pytest.raises(ValueError, match="cos_sin_cache must be"):
        bta.qk_norm_rope(q, k, w, w, EPS, pos, table[:, :32])
    with pytest.raises(ValueError, match="k must be"):
        bta.qk_norm_rope(q, k[:2], w, w, EPS, pos, table)
    with pytest.raises(TypeError, match="epsilon must be a float"):
        bta.qk_norm_rope(q, k, w, w, "1e-6", pos, table)  # type: ignore[arg-type]


def test_registered_as_the_batch_invariant_provider(device: torch.device) -> None:
    import ir_dispatch

    q, k, w, table, pos = _small_case(4, 128, device)
    with ir_dispatch.batch_invariant():
        impl = ir_ops.qk_norm_rope.select(q, k, w, w, EPS, pos, table)
        assert impl.provider == "triton" and impl.batch_invariant
        got = ir_ops.qk_norm_rope(q, k, w, w, EPS, pos, table)
    want = bta.qk_norm_rope(q, k, w, w, EPS, pos, table)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_provider_declines_what_the_kernel_refuses(device: torch.device) -> None:
    """The provider's check is the kernel's own head-size rule: a head of 48 is declined with
    the reason, one of 64 accepted."""
    import ir_dispatch
    from bi_triton_ascend import providers

    q, k, w, table, pos = _small_case(3, 64, device)
    with ir_dispatch.batch_invariant():
        assert providers._qk_norm_rope_accepts(q, k, w, w, EPS, pos, table) is True
        why = providers._qk_norm_rope_accepts(
            q[..., :48], k[..., :48], w[:48], w[:48], EPS, pos, table[:, :48]
        )
    assert isinstance(why, str) and "head_dim must be a power of two" in why and "got 48" in why
