# mypy: disable-error-code="no-untyped-def"
# (Triton kernels are DSL functions: their parameters are untyped by design.)
"""RMSNorm and fused residual-add RMSNorm in vLLM's arithmetic order.

``y = (x_f32 * rsqrt(mean(x_f32**2) + eps)).to(x.dtype) * weight``: fp32 math, cast to the input
dtype, then the weight multiply (in fp32, rounded once to the promoted output dtype, like torch's
``out * weight``). Batch-invariant: one program owns whole rows, and a row's sum of squares uses
a block size, a rows-per-tile count and a warp count chosen from the hidden size only, so its
reduction tree never depends on the number of rows.

Short rows (``H <= MULTI_ROW_MAX``: the per-head q/k norms of attention, ``H = head_dim``) are
normalized ``ROWS`` at a time, one ``[ROWS, BLOCK]`` tile per step, held as its two halves: the
sum of squares is ``sum(lo**2) + sum(hi**2)``, which :mod:`.qk_norm_rope` reproduces while it
rotates one half against the other. One row per program left those launches latency-bound
(0.6B prefill on an H200: 33.8 ms of 381 ms of device time). Such inputs are usually views of
a wider tensor (``q.view(T, heads, head_dim)`` of a QKV output), which ``[A, B, H]`` addressing
reads in place instead of copying them first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from ir_dispatch.layout import layout_key

from .. import _platform
from .._checks import check_float, check_tensor
from .._launch_cache import launch_kernel
from ._plans import OneLaunchPlan, PlanTable

# Rows up to this long are held in registers (one read); longer rows take two passes.
ONE_PASS_MAX = 16384
TWO_PASS_BLOCK = 4096
# Rows up to this long go ROWS at a time, ROWS = TILE_ELEMENTS // BLOCK.
MULTI_ROW_MAX = 512
TILE_ELEMENTS = 4096


@triton.jit
def _row_offsets(rows, B, stride_a, stride_b):
    """Offset of each row of an ``[A, B, H]`` view (``B = 1``: a plain ``[M, H]`` matrix)."""
    rows64 = tl.cast(rows, tl.int64)
    return (rows64 // B) * stride_a + (rows64 % B) * stride_b


@triton.jit
def _load_row_tile(x_ptr, rows, offs, mask, B, stride_a, stride_b, stride_h):
    """A ``[ROWS, len(offs)]`` tile of an ``[A, B, H]`` view, in fp32."""
    x_off = _row_offsets(rows, B, stride_a, stride_b)
    return tl.load(x_ptr + x_off[:, None] + offs[None, :] * stride_h, mask=mask, other=0.0).to(
        tl.float32
    )


@triton.jit
def _halves_rstd(lo, hi, H, eps):
    """``rsqrt(mean(x**2) + eps)`` per row, from a row's two halves (``[ROWS, BLOCK / 2]``).

    Short rows are held as two halves so that the fused q/k norm + RoPE kernel, which rotates
    one half against the other, holds exactly these tensors and reduces them in this order.
    """
    return tl.rsqrt((tl.sum(lo * lo, axis=1) + tl.sum(hi * hi, axis=1)) / H + eps)


@triton.jit
def _scaled(x, rstd, w, in_ty, HAS_WEIGHT: tl.constexpr):
    """``(x * rstd).to(in_ty) * w`` in fp32 (rounded by the caller's store)."""
    y = (x * rstd[:, None]).to(in_ty).to(tl.float32)  # exact round trip without a weight
    if HAS_WEIGHT:
        y = y * w[None, :]
    return y


@triton.jit
def _rms_norm_kernel(
    x_ptr, r_ptr, w_ptr, out_ptr, r_out_ptr,
    M, H, B_x, stride_xa, stride_xb, stride_xh, B_r, stride_ra, stride_rb, stride_rh,
    stride_w, stride_om, stride_rom, eps, num_programs,
    FUSED_ADD: tl.constexpr, HAS_WEIGHT: tl.constexpr, ONE_PASS: tl.constexpr,
    BLOCK: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    """Grid ``min(tiles, programs)``; each program normalizes tiles ``pid, pid + programs, ...``.

    A tile is ``ROWS`` consecutive rows (``ROWS == 1``: one row, 1-D code).
    """
    pid = tl.program_id(0)
    in_ty = x_ptr.dtype.element_ty
    offs = tl.arange(0, BLOCK)
    if ROWS > 1:  # short rows, one pass: a [ROWS, BLOCK] tile per step, as two halves
        lo = tl.arange(0, BLOCK // 2)
        hi = BLOCK // 2 + lo
        w_lo = tl.load(w_ptr + lo * stride_w, mask=lo < H, other=0.0).to(tl.float32)
        w_hi = tl.load(w_ptr + hi * stride_w, mask=hi < H, other=0.0).to(tl.float32)
        for tile in range(pid, tl.cdiv(M, ROWS), num_programs):
            rows = tile * ROWS + tl.arange(0, ROWS)
            rows64 = tl.cast(rows, tl.int64)
            m_lo = (rows < M)[:, None] & (lo < H)[None, :]
            m_hi = (rows < M)[:, None] & (hi < H)[None, :]
            x_lo = _load_row_tile(x_ptr, rows, lo, m_lo, B_x, stride_xa, stride_xb, stride_xh)
            x_hi = _load_row_tile(x_ptr, rows, hi, m_hi, B_x, stride_xa, stride_xb, stride_xh)
            if FUSED_ADD:
                x_lo += _load_row_tile(r_ptr, rows, lo, m_lo, B_r, stride_ra, stride_rb, stride_rh)
                x_hi += _load_row_tile(r_ptr, rows, hi, m_hi, B_r, stride_ra, stride_rb, stride_rh)
                r_row = r_out_ptr + rows64[:, None] * stride_rom
                tl.store(r_row + lo[None, :], x_lo.to(in_ty), mask=m_lo)
                tl.store(r_row + hi[None, :], x_hi.to(in_ty), mask=m_hi)
            rstd = _halves_rstd(x_lo, x_hi, H, eps)
            out_ty = out_ptr.dtype.element_ty
            o_row = out_ptr + rows64[:, None] * stride_om
            tl.store(o_row + lo[None, :], _scaled(x_lo, rstd, w_lo, in_ty, HAS_WEIGHT).to(out_ty),
                     mask=m_lo)  # fmt: skip
            tl.store(o_row + hi[None, :], _scaled(x_hi, rstd, w_hi, in_ty, HAS_WEIGHT).to(out_ty),
                     mask=m_hi)  # fmt: skip
    else:
        for row in range(pid, M, num_programs):
            row64 = tl.cast(row, tl.int64)
            x_row = x_ptr + _row_offsets(row, B_x, stride_xa, stride_xb)
            r_row = r_ptr + _row_offsets(row, B_r, stride_ra, stride_rb)
            o_row = out_ptr + row64 * stride_om
            ro_row = r_out_ptr + row64 * stride_rom
            if ONE_PASS:
                mask = offs < H
                x = tl.load(x_row + offs * stride_xh, mask=mask, other=0.0).to(tl.float32)
                if FUSED_ADD:
                    x += tl.load(r_row + offs * stride_rh, mask=mask, other=0.0).to(tl.float32)
                    tl.store(ro_row + offs, x.to(in_ty), mask=mask)
                rstd = tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
                y = (x * rstd).to(in_ty)
                if HAS_WEIGHT:
                    w = tl.load(w_ptr + offs * stride_w, mask=mask, other=0.0).to(tl.float32)
                    y = y.to(tl.float32) * w
                tl.store(o_row + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
            else:
                acc = tl.zeros((BLOCK,), dtype=tl.float32)
                for h0 in range(0, H, BLOCK):
                    mask = h0 + offs < H
                    x = tl.load(x_row + (h0 + offs) * stride_xh, mask=mask, other=0.0).to(
                        tl.float32
                    )
                    if FUSED_ADD:
                        x += tl.load(r_row + (h0 + offs) * stride_rh, mask=mask, other=0.0).to(
                            tl.float32
                        )
                        tl.store(ro_row + h0 + offs, x.to(in_ty), mask=mask)
                    acc += x * x
                rstd = tl.rsqrt(tl.sum(acc, axis=0) / H + eps)
                for h0 in range(0, H, BLOCK):
                    mask = h0 + offs < H
                    x = tl.load(x_row + (h0 + offs) * stride_xh, mask=mask, other=0.0).to(
                        tl.float32
                    )
                    if FUSED_ADD:
                        x += tl.load(r_row + (h0 + offs) * stride_rh, mask=mask, other=0.0).to(
                            tl.float32
                        )
                    y = (x * rstd).to(in_ty)
                    if HAS_WEIGHT:
                        w = tl.load(w_ptr + (h0 + offs) * stride_w, mask=mask, other=0.0)
                        y = y.to(tl.float32) * w.to(tl.float32)
                    tl.store(o_row + h0 + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _block_and_warps(h: int) -> tuple[int, int, bool, int]:
    """(BLOCK, num_warps, one_pass, ROWS) from the hidden size alone (never from the row count)."""
    if h <= MULTI_ROW_MAX:
        block = max(16, triton.next_power_of_2(h))
        return block, 4, True, TILE_ELEMENTS // block
    if h <= ONE_PASS_MAX:
        block = max(16, triton.next_power_of_2(h))
        return block, min(16, max(1, block // 512)), True, 1
    return TWO_PASS_BLOCK, 8, False, 1


class _RowLayout(NamedTuple):
    """``t [..., H]`` addressed as ``[A, B, H]`` rows without a copy where strides allow."""

    tensor: torch.Tensor
    rows: int
    b: int
    stride_a: int
    stride_b: int
    stride_h: int


def _row_layout(t: torch.Tensor) -> _RowLayout:
    """How to read ``t``'s rows in place: a plain ``[M, H]`` view, else ``[A, B, H]``.

    The second covers e.g. ``q.view(T, heads, d)`` of a QKV output, whose rows are not evenly
    strided; anything else is copied.
    """
    h = t.shape[-1]
    rows = t.numel() // h if h else 0
    try:
        m2 = t.view(rows, h)
        return _RowLayout(m2, rows, 1, m2.stride(0), 0, m2.stride(1))
    except RuntimeError:
        pass
    if t.dim() >= 3:
        try:
            m3 = t.view(-1, t.shape[-2], h)
            return _RowLayout(m3, rows, m3.shape[1], m3.stride(0), m3.stride(1), m3.stride(2))
        except RuntimeError:
            pass
    m2 = t.reshape(rows, h)
    return _RowLayout(m2, rows, 1, m2.stride(0), 0, m2.stride(1))


def _check(op: str, x: torch.Tensor, weight: torch.Tensor | None, epsilon: float) -> None:
    check_tensor(op, "x", x)
    check_float(op, "x", x)
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least 1 dimension; got a 0-D tensor")
    if weight is not None:
        check_tensor(op, "weight", weight)
        check_float(op, "weight", weight)
        if weight.shape != (x.shape[-1],) or weight.device != x.device:
            raise ValueError(
                f"{op}: weight must have shape [{x.shape[-1]}] on {x.device}; got "
                f"{tuple(weight.shape)} on {weight.device}"
            )
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool):
        raise TypeError(f"{op}: epsilon must be a float; got {type(epsilon).__name__}")


@dataclass(frozen=True)
class _NormPlan(OneLaunchPlan):
    """One RMSNorm launch for one argument layout: replayed with a new call's pointers."""

    kernel = _rms_norm_kernel

    out_dtype: torch.dtype


# Launches by argument layout (shapes, strides, dtypes, devices, epsilon), kept when the kernel
# read x and the residual in place: outside CUDA graphs (prefill steps above the captured sizes,
# the trainer) the argument handling costs more host time than a decode-size kernel. Bounded.
_plans: PlanTable[_NormPlan] = PlanTable(1024)


def _replay(
    plan: _NormPlan,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = torch.empty(x.shape, dtype=plan.out_dtype, device=x.device)
    r_out = (
        torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else None
    )
    plan.launch(
        x, residual if residual is not None else x, weight if weight is not None else x,
        out, r_out if r_out is not None else out,
    )  # fmt: skip
    return out, r_out


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
    key: tuple[Any, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    out_dtype = x.dtype if weight is None else torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    r_out = (
        torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else None
    )
    h = x.shape[-1]
    if x.numel() == 0:
        return out, r_out
    xl = _row_layout(x)
    rl = _row_layout(residual) if residual is not None else xl
    out2 = out.view(-1, h)
    ro2 = r_out.view(-1, h) if r_out is not None else out2
    m = xl.rows
    block, warps, one_pass, rows_per_tile = _block_and_warps(h)
    tiles = triton.cdiv(m, rows_per_tile)
    programs = min(tiles, _platform.row_programs(x.device, tiles))
    grid = (programs,)
    ints = (
        m, h, xl.b, xl.stride_a, xl.stride_b, xl.stride_h,
        rl.b, rl.stride_a, rl.stride_b, rl.stride_h,
        weight.stride(0) if weight is not None else 0,
        out2.stride(0), ro2.stride(0), float(epsilon), programs,
    )  # fmt: skip
    options = {
        "FUSED_ADD": residual is not None, "HAS_WEIGHT": weight is not None,
        "ONE_PASS": one_pass, "BLOCK": block, "ROWS": rows_per_tile, "num_warps": warps,
    }  # fmt: skip
    launch_kernel(
        _rms_norm_kernel, grid,
        xl.tensor, rl.tensor, weight if weight is not None else xl.tensor, out2, ro2,
        *ints, **options,
    )  # fmt: skip
    in_place = xl.tensor.data_ptr() == x.data_ptr() and (
        residual is None or rl.tensor.data_ptr() == residual.data_ptr()
    )
    if in_place:
        _plans.keep(key, _NormPlan(grid, ints, options, out_dtype))
    return out, r_out


def prepare_rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, epsilon: float
) -> Callable[..., torch.Tensor] | None:
    """ir-dispatch's ``prepare`` hook: the launch plan of this layout, if one was stored."""
    plan = _plans.find(layout_key("rms_norm", x, None, weight, epsilon))
    if plan is None:
        return None
    return lambda x, weight, epsilon: _replay(plan, x, None, weight)[0]


def prepare_fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, epsilon: float
) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]] | None:
    """ir-dispatch's ``prepare`` hook: the launch plan of this layout, if one was stored."""
    plan = _plans.find(layout_key("fused_add_rms_norm", x, residual, weight, epsilon))
    if plan is None:
        return None
    return lambda x, residual, weight, epsilon: _replay(plan, x, residual, weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float) -> torch.Tensor:
    """RMSNorm over the last dimension.

    Args:
        x: ``[..., H]``, bf16/fp16/fp32, any strides.
        weight: ``[H]`` or ``None``.
        epsilon: added to the mean square.

    Returns:
        ``[..., H]`` in ``promote_types(x.dtype, weight.dtype)`` (``x.dtype`` without weight).
    """
    key = layout_key("rms_norm", x, None, weight, epsilon)
    plan = _plans.find(key)
    if plan is not None:
        return _replay(plan, x, None, weight)[0]
    _check("rms_norm", x, weight, epsilon)
    return _launch(x, None, weight, epsilon, key)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual' = x + residual`` (fp32, stored in ``x.dtype``); RMSNorm of the fp32 sum.

    Args:
        x: ``[..., H]``.
        residual: same shape as ``x``, any float dtype.
        weight: ``[H]`` or ``None``.
        epsilon: added to the mean square.

    Returns:
        ``(normalized, residual')``; neither aliases an input.
    """
    key = layout_key("fused_add_rms_norm", x, residual, weight, epsilon)
    plan = _plans.find(key)
    if plan is not None:
        out, r_out = _replay(plan, x, residual, weight)
        assert r_out is not None
        return out, r_out
    _check("fused_add_rms_norm", x, weight, epsilon)
    check_tensor("fused_add_rms_norm", "residual", residual)
    check_float("fused_add_rms_norm", "residual", residual)
    if residual.shape != x.shape or residual.device != x.device:
        raise ValueError(
            f"fused_add_rms_norm: residual must match x's shape {tuple(x.shape)} on {x.device}; "
            f"got {tuple(residual.shape)} on {residual.device}"
        )
    out, r_out = _launch(x, residual, weight, epsilon, key)
    if r_out is None:  # unreachable: residual was given
        raise RuntimeError("fused_add_rms_norm: residual output missing")
    return out, r_out
