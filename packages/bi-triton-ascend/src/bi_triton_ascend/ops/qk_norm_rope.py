# mypy: disable-error-code="no-untyped-def"
# (Triton kernels are DSL functions: their parameters are untyped by design.)
"""Qwen3's per-head q/k RMSNorm and neox RoPE in one launch, bit for bit the two-step result.

vLLM's Qwen3 attention normalizes every head of q and of k (``q_norm``/``k_norm``, rows of
``head_dim``) and then rotates them; default vLLM's Inductor fuses the two, while in
batch-invariant mode the norms are the kit's kernel (opaque to Inductor), so each layer paid
three launches and two extra round trips of q and k through memory. This kernel does both in
one launch and returns what the two steps return:

* the norm is :mod:`.rms_norm`'s short-row path: the same ``[ROWS, BLOCK]`` tile as two
  halves, loaded and reduced by the same helpers with the same warp count, so each head's
  ``rstd`` has the same bits; ``(x * rstd).to(dtype)``, then the weight in fp32, rounded to
  the dtype;
* the rotation is vLLM's GPU arithmetic: ``x1*cos - x2*sin`` and ``x2*cos + x1*sin`` in fp32
  from dtype values, rounded once. Products of two bf16/fp16 values are exact in fp32, so
  whether the compiler contracts them into FMAs does not change a bit.

Both kernels hold a row as its two halves, so the rotation pairs registers that are already
there and no layout has to change between the norm and the rotation (the sm90 compile gives
both kernels one blocked layout and the same two row reductions). Batch-invariant like the
norm: a head's result depends on that head, its position and the table, never on the number of
tokens. On the Triton interpreter fp32 -> bf16 truncates (its software conversion); devices
round to nearest even, like torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _platform
from .._checks import check_tensor
from .._launch_cache import launch_kernel
from .rms_norm import MULTI_ROW_MAX, TILE_ELEMENTS, _halves_rstd, _load_row_tile, _scaled

#: Warps per program: :mod:`.rms_norm`'s for short rows (the reduction tree depends on it).
NUM_WARPS = 4


@triton.jit
def _norm_rope_tile(
    x_ptr, w_ptr, out_ptr, pos_ptr, cache_ptr, tile, M, heads, H,
    stride_xt, stride_xh, stride_xd, stride_cache, eps,
    BLOCK: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    """Normalize and rotate rows ``tile * ROWS ...`` of one ``[T, heads, H]`` tensor."""
    in_ty = x_ptr.dtype.element_ty
    lo = tl.arange(0, BLOCK // 2)
    hi = BLOCK // 2 + lo
    w_lo = tl.load(w_ptr + lo).to(tl.float32)
    w_hi = tl.load(w_ptr + hi).to(tl.float32)
    rows = tile * ROWS + tl.arange(0, ROWS)
    row_mask = rows < M
    m_lo = row_mask[:, None] & (lo < H)[None, :]
    m_hi = row_mask[:, None] & (hi < H)[None, :]
    x_lo = _load_row_tile(x_ptr, rows, lo, m_lo, heads, stride_xt, stride_xh, stride_xd)
    x_hi = _load_row_tile(x_ptr, rows, hi, m_hi, heads, stride_xt, stride_xh, stride_xd)
    rstd = _halves_rstd(x_lo, x_hi, H, eps)
    y_lo = _scaled(x_lo, rstd, w_lo, in_ty, True).to(in_ty).to(tl.float32)
    y_hi = _scaled(x_hi, rstd, w_hi, in_ty, True).to(in_ty).to(tl.float32)
    rows64 = tl.cast(rows, tl.int64)
    pos = tl.load(pos_ptr + rows64 // heads, mask=row_mask, other=0)
    table = cache_ptr + tl.cast(pos, tl.int64)[:, None] * stride_cache
    cos = tl.load(table + lo[None, :], mask=m_lo, other=0.0).to(tl.float32)
    sin = tl.load(table + hi[None, :], mask=m_lo, other=0.0).to(tl.float32)
    o_row = out_ptr + rows64[:, None] * H
    tl.store(o_row + lo[None, :], (y_lo * cos - y_hi * sin).to(in_ty), mask=m_lo)
    tl.store(o_row + hi[None, :], (y_hi * cos + y_lo * sin).to(in_ty), mask=m_hi)


@triton.jit
def _qk_norm_rope_kernel(
    q_ptr, k_ptr, qw_ptr, kw_ptr, q_out_ptr, k_out_ptr, pos_ptr, cache_ptr,
    T, HQ, HK, H, stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd,
    stride_cache, eps, num_programs,
    BLOCK: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    """Grid ``min(tiles, programs)``; tiles of q's rows first, then k's, strided by program."""
    pid = tl.program_id(0)
    q_tiles = tl.cdiv(T * HQ, ROWS)
    k_tiles = tl.cdiv(T * HK, ROWS)
    for tile in range(pid, q_tiles + k_tiles, num_programs):
        if tile < q_tiles:
            _norm_rope_tile(
                q_ptr, qw_ptr, q_out_ptr, pos_ptr, cache_ptr, tile, T * HQ, HQ, H,
                stride_qt, stride_qh, stride_qd, stride_cache, eps, BLOCK, ROWS,
            )  # fmt: skip
        else:
            _norm_rope_tile(
                k_ptr, kw_ptr, k_out_ptr, pos_ptr, cache_ptr, tile - q_tiles, T * HK, HK, H,
                stride_kt, stride_kh, stride_kd, stride_cache, eps, BLOCK, ROWS,
            )  # fmt: skip


def head_dim_problem(d: int) -> str | None:
    """Why this kernel cannot take heads of ``d`` elements (``None``: it can).

    The row is held as two halves of a power-of-two tile, normalized on :mod:`.rms_norm`'s
    short-row path.
    """
    if d < 16 or d > MULTI_ROW_MAX or d & (d - 1):
        return f"head_dim must be a power of two in [16, {MULTI_ROW_MAX}]; got {d}"
    return None


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    epsilon: float,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> None:
    op = "qk_norm_rope"
    for name, t in (("q", q), ("k", k), ("q_weight", q_weight), ("k_weight", k_weight),
                    ("positions", positions), ("cos_sin_cache", cos_sin_cache)):  # fmt: skip
        check_tensor(op, name, t)
    if q.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"{op}: q must be bf16 or fp16; got {q.dtype}")
    for name, t in (("k", k), ("q_weight", q_weight), ("k_weight", k_weight),
                    ("cos_sin_cache", cos_sin_cache)):  # fmt: skip
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name} must have q's dtype {q.dtype}; got {t.dtype}")
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(
            f"{op}: q and k must be [T, heads, head_dim]; got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    tokens, _, d = q.shape
    if k.shape[0] != tokens or k.shape[2] != d:
        raise ValueError(
            f"{op}: k must be [{tokens}, heads, {d}] like q {tuple(q.shape)}; got {tuple(k.shape)}"
        )
    problem = head_dim_problem(d)
    if problem is not None:
        raise ValueError(f"{op}: {problem}")
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.shape != (d,):
            raise ValueError(f"{op}: {name} must have shape [{d}]; got {tuple(w.shape)}")
    if positions.shape != (tokens,) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"{op}: positions must be an int32/int64 [{tokens}] tensor; got {positions.dtype} "
            f"{tuple(positions.shape)}"
        )
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != d:
        raise ValueError(
            f"{op}: cos_sin_cache must be [max_position, {d}] (cat(cos, sin)); got "
            f"{tuple(cos_sin_cache.shape)}"
        )
    devices = {x.device for x in (q, k, q_weight, k_weight, positions, cos_sin_cache)}
    if len(devices) != 1:
        raise ValueError(
            f"{op}: all tensors must be on one device; got {sorted(map(str, devices))}"
        )
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool):
        raise TypeError(f"{op}: epsilon must be a float; got {type(epsilon).__name__}")


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    epsilon: float,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of q and k, then neox RoPE over the whole head, in one launch.

    Args:
        q: ``[T, Hq, D]`` bf16/fp16, any strides (a view of a QKV output is read in place).
        k: ``[T, Hk, D]``, q's dtype.
        q_weight: ``[D]`` norm weight of q, q's dtype.
        k_weight: ``[D]`` norm weight of k, q's dtype.
        epsilon: added to the mean square.
        positions: ``[T]`` int32/int64 rows of the table (not bounds-checked on the device).
        cos_sin_cache: ``[max_position, D]``, ``cat(cos, sin)`` per position, q's dtype.

    Returns:
        New contiguous ``(q', k')`` of q's and k's shapes, bitwise equal to
        :func:`~bi_triton_ascend.ops.rms_norm` of each followed by fp32 neox RoPE rounded once.
    """
    _check(q, k, q_weight, k_weight, epsilon, positions, cos_sin_cache)
    t, hq, d = q.shape
    hk = k.shape[1]
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if t == 0:
        return q_out, k_out
    rows = TILE_ELEMENTS // d
    tiles = triton.cdiv(t * hq, rows) + triton.cdiv(t * hk, rows)
    programs = min(tiles, _platform.row_programs(q.device, tiles))
    w_q, w_k = q_weight.contiguous(), k_weight.contiguous()
    table = cos_sin_cache if cos_sin_cache.stride(1) == 1 else cos_sin_cache.contiguous()
    launch_kernel(
        _qk_norm_rope_kernel, (programs,),
        q, k, w_q, w_k, q_out, k_out, positions, table,
        t, hq, hk, d, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
        k.stride(2), table.stride(0), float(epsilon), programs,
        BLOCK=d, ROWS=rows, num_warps=NUM_WARPS,
    )  # fmt: skip
    return q_out, k_out
