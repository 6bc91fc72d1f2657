"""rms_norm / fused_add_rms_norm: vLLM's arithmetic order, accuracy, invariance, strides."""

from __future__ import annotations

import importlib

import pytest
import torch
from bi_testutils import DTYPES, assert_accurate, batches, probe_positions, rand, with_probe

import bi_triton_ascend as bta
from ir_dispatch.ops import norm

rms_module = importlib.import_module("bi_triton_ascend.ops.rms_norm")

DTYPE_IDS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
HIDDEN = [
    pytest.param(7, id="H7-odd"),
    pytest.param(256, id="H256"),
    pytest.param(1000, id="H1000"),
]


def _ref(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    """float64 reference of vLLM's order: normalize, round to x's dtype, then multiply weight."""
    xd = x.double()
    y = (xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype).double()
    return y * w.double() if w is not None else y


@dtypes
@pytest.mark.parametrize("h", HIDDEN)
@pytest.mark.parametrize("with_weight", [True, False], ids=["weight", "no-weight"])
def test_rms_norm_matches_reference(
    h: int, with_weight: bool, dtype: torch.dtype, device: torch.device
) -> None:
    x = rand(5, h, dtype=dtype, device=device, scale=3.0)
    w = rand(h, dtype=dtype, device=device) if with_weight else None
    out = bta.rms_norm(x, w, 1e-6)
    assert out.dtype == dtype
    assert_accurate(out, _ref(x, w, 1e-6), dtype)
    # Same result as the ir-dispatch native reference (vLLM's order) within one rounding.
    assert_accurate(out, norm.rms_norm.native(x, w, 1e-6).double(), dtype)


def test_weight_dtype_promotes_like_torch(device: torch.device) -> None:
    x = rand(4, 64, dtype=torch.bfloat16, device=device)
    w = rand(64, dtype=torch.float32, device=device)
    out = bta.rms_norm(x, w, 1e-5)
    assert out.dtype == torch.float32  # bf16 * fp32 -> fp32, as in `out * weight`
    # The normalized value is rounded to bf16 before the weight (vLLM's order): bf16 tolerance.
    assert_accurate(out, _ref(x, w, 1e-5), torch.bfloat16)


@dtypes
@pytest.mark.parametrize("h", HIDDEN)
def test_fused_add_rms_norm_matches_reference(
    h: int, dtype: torch.dtype, device: torch.device
) -> None:
    x, r = rand(6, h, dtype=dtype, device=device), rand(6, h, dtype=dtype, device=device)
    w = rand(h, dtype=dtype, device=device)
    out, new_r = bta.fused_add_rms_norm(x, r, w, 1e-6)
    summed = x.double() + r.double()
    assert_accurate(new_r, summed, dtype)
    ref = (summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-6)).to(
        dtype
    ).double() * w.double()
    assert_accurate(out, ref, dtype)
    assert new_r.data_ptr() not in (x.data_ptr(), r.data_ptr())  # nothing aliased or mutated


@dtypes
def test_rows_alone_equal_rows_in_any_batch(dtype: torch.dtype, device: torch.device) -> None:
    h = 300
    w = rand(h, dtype=dtype, device=device)
    probe, probe_r = rand(1, h, dtype=dtype, device=device), rand(1, h, dtype=dtype, device=device)
    alone = bta.rms_norm(probe, w, 1e-6)
    alone_f = bta.fused_add_rms_norm(probe, probe_r, w, 1e-6)
    for m in batches():
        out = bta.rms_norm(with_probe(probe, m), w, 1e-6)
        fused, resid = bta.fused_add_rms_norm(with_probe(probe, m), with_probe(probe_r, m), w, 1e-6)
        for p in probe_positions(m):
            assert torch.equal(out[p], alone[0]), f"M={m}, row {p}"
            assert torch.equal(fused[p], alone_f[0][0]) and torch.equal(resid[p], alone_f[1][0])


def test_two_pass_path_for_long_rows(monkeypatch: pytest.MonkeyPatch, device: torch.device) -> None:
    # Rows longer than ONE_PASS_MAX are normalized in two passes; force it on small rows.
    monkeypatch.setattr(rms_module, "ONE_PASS_MAX", 64)
    monkeypatch.setattr(rms_module, "TWO_PASS_BLOCK", 64)
    x, r, w = (rand(9, 300, dtype=torch.float32, device=device) for _ in range(3))
    w = w[0]
    assert_accurate(bta.rms_norm(x, w, 1e-6), _ref(x, w, 1e-6), torch.float32)
    out, _ = bta.fused_add_rms_norm(x, r, w, 1e-6)
    assert_accurate(out, _ref(x.double() + r.double(), w, 1e-6), torch.float32)
    alone = bta.rms_norm(x[4:5], w, 1e-6)
    assert torch.equal(bta.rms_norm(x, w, 1e-6)[4], alone[0])


def test_strided_and_3d_inputs(device: torch.device) -> None:
    base = rand(4, 3, 128, dtype=torch.bfloat16, device=device)
    x = base.transpose(0, 1)  # [3, 4, 128], rows not evenly strided: copied
    w = rand(64, dtype=torch.bfloat16, device=device)
    assert torch.equal(bta.rms_norm(x, None, 1e-6), bta.rms_norm(x.contiguous(), None, 1e-6))
    sliced = base[..., ::2]  # element stride 2
    assert torch.equal(bta.rms_norm(sliced, w, 1e-6), bta.rms_norm(sliced.contiguous(), w, 1e-6))


def test_empty_and_bad_inputs(device: torch.device) -> None:
    x = torch.empty(0, 64, device=device)
    assert bta.rms_norm(x, None, 1e-6).shape == (0, 64)
    out, r = bta.fused_add_rms_norm(x, x, None, 1e-6)
    assert out.shape == r.shape == (0, 64)
    with pytest.raises(ValueError, match="weight must have shape"):
        bta.rms_norm(torch.randn(2, 8, device=device), torch.randn(7, device=device), 1e-6)
    with pytest.raises(ValueError, match="residual must match"):
        bta.fused_add_rms_norm(
            torch.randn(2, 8, device=device), torch.randn(2, 7, device=device), None, 1e-6
        )
    with pytest.raises(TypeError, match="epsilon must be a float"):
        bta.rms_norm(torch.randn(2, 8, device=device), None, "1e-6")  # type: ignore[arg-type]


@pytest.mark.parametrize("h", [64, 128, 200])
def test_short_rows_tile_invariance_across_tile_edges(h: int, device: torch.device) -> None:
    """Short rows go ``ROWS`` per tile: a row alone equals it at any place in a batch whose size
    straddles the tile (ROWS - 1, ROWS, ROWS + 1, ...)."""
    block, _, _, rows = rms_module._block_and_warps(h)
    assert rows > 1 and rows * block == rms_module.TILE_ELEMENTS
    w = rand(h, dtype=torch.bfloat16, device=device)
    probe = rand(1, h, dtype=torch.bfloat16, device=device, scale=2.0)
    probe_r = rand(1, h, dtype=torch.bfloat16, device=device)
    alone = bta.rms_norm(probe, w, 1e-6)
    alone_f = bta.fused_add_rms_norm(probe, probe_r, w, 1e-6)
    for m in sorted({1, 2, rows - 1, rows, rows + 1, 2 * rows + 1, 3 * rows}):
        x, r = with_probe(probe, m), with_probe(probe_r, m)
        out = bta.rms_norm(x, w, 1e-6)
        fused, resid = bta.fused_add_rms_norm(x, r, w, 1e-6)
        assert_accurate(out, _ref(x, w, 1e-6), torch.bfloat16)
        for p in probe_positions(m):
            assert torch.equal(out[p], alone[0]), f"M={m}, row {p}"
            assert torch.equal(fused[p], alone_f[0][0]) and torch.equal(resid[p], alone_f[1][0])


def test_head_views_of_a_qkv_output_are_read_in_place(device: torch.device) -> None:
    """``q.view(T, heads, d)`` of a QKV output: rows are not evenly strided, yet no copy is made,
    and the result equals the contiguous input's, for every token count."""
    heads, kv_heads, d = 4, 2, 64
    width = (heads + 2 * kv_heads) * d
    w = rand(d, dtype=torch.bfloat16, device=device)
    qkv = rand(9, width, dtype=torch.bfloat16, device=device, scale=2.0)
    q = qkv[:, : heads * d].view(9, heads, d)
    k = qkv[:, heads * d : (heads + kv_heads) * d].view(9, kv_heads, d)
    layout = rms_module._row_layout(q)
    assert layout.tensor.data_ptr() == qkv.data_ptr() and layout.b == heads  # no copy
    for view in (q, k):
        got = bta.rms_norm(view, w, 1e-6)
        assert got.shape == view.shape and got.is_contiguous()
        assert torch.equal(got, bta.rms_norm(view.contiguous(), w, 1e-6))
    alone = bta.rms_norm(q[4:5], w, 1e-6)  # one token's heads alone vs inside 9 tokens
    assert torch.equal(bta.rms_norm(q, w, 1e-6)[4], alone[0])
    r = rand(9, heads, d, dtype=torch.bfloat16, device=device)
    out, resid = bta.fused_add_rms_norm(q, r, w, 1e-6)
    ref_out, ref_resid = bta.fused_add_rms_norm(q.contiguous(), r, w, 1e-6)
    assert torch.equal(out, ref_out) and torch.equal(resid, ref_resid)


@pytest.mark.parametrize("fused", [False, True], ids=["rms_norm", "fused_add"])
@pytest.mark.parametrize(
    "shape,view,weighted,planned",
    [
        ((3, 96), None, True, True),
        ((2, 5, 96), None, False, True),
        ((4, 3 * 96), lambda t: t[:, 96:192].unflatten(-1, (1, 96)), True, True),  # q of a QKV
        ((6, 96), lambda t: t.t().contiguous().t()[::2], True, True),  # strided rows
        ((2, 3, 4, 96), lambda t: t.transpose(0, 1), True, False),  # no view: copied
    ],
    ids=["2-D", "3-D", "qkv-slice", "strided", "copied"],
)
def test_plans_replay_with_new_data(
    fused: bool, shape, view, weighted: bool, planned: bool, device: torch.device
) -> None:
    """A stored launch serves later calls of the same layout with the full path's bits; inputs
    the kernel could only read as a copy are never planned."""
    plans = importlib.import_module("bi_triton_ascend.ops.rms_norm")._plans
    plans.clear()
    g = torch.Generator().manual_seed(0)

    def make() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        base = torch.randn(shape, generator=g).to(device=device, dtype=torch.bfloat16)
        x = view(base) if view else base
        residual = torch.randn(x.shape, generator=g).to(device=device, dtype=torch.bfloat16)
        w = torch.randn(x.shape[-1], generator=g).to(device=device, dtype=torch.bfloat16)
        return x, residual, (w if weighted else None)

    def call(x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor | None):
        if fused:
            return bta.fused_add_rms_norm(x, residual, w, 1e-6)
        return (bta.rms_norm(x, w, 1e-6),)

    call(*make())
    assert len(plans) == int(planned)
    for _ in range(2):
        args = make()
        got = call(*args)  # replayed when planned
        stored = dict(plans)
        plans.clear()
        want = call(*args)  # the full path
        plans.update(stored)
        for g_t, w_t in zip(got, want, strict=True):
            assert g_t.shape == w_t.shape and torch.equal(g_t, w_t)
