# mypy: disable-error-code="no-untyped-def"
# (Triton kernels are DSL functions: their parameters are untyped by design.)
"""RMSNorm and fused residual-add RMSNorm in vLLM's arithmetic order.

``y = (x_f32 * rsqrt(mean(x_f32**2) + eps)).to(x.dtype) * weight``: fp32 math, cast to the input
dtype, then the weight multiply (in fp32, rounded once to the promoted output dtype, like torch's
``out * weight``). Batch-invariant: one program owns a whole row, and the row's sum of squares
uses a block size and warp count chosen from the hidden size only, so its reduction tree never
depends on the number of rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _platform
from .._checks import check_float, check_tensor

# Rows up to this long are held in registers (one read); longer rows take two passes.
ONE_PASS_MAX = 16384
TWO_PASS_BLOCK = 4096


@triton.jit
def _rms_norm_kernel(
    x_ptr, r_ptr, w_ptr, out_ptr, r_out_ptr,
    M, H, stride_xm, stride_xh, stride_rm, stride_rh, stride_w, stride_om, stride_rom,
    eps, num_programs,
    FUSED_ADD: tl.constexpr, HAS_WEIGHT: tl.constexpr, ONE_PASS: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Grid ``min(M, programs)``; each program normalizes rows ``pid, pid + programs, ...``."""
    pid = tl.program_id(0)
    in_ty = x_ptr.dtype.element_ty
    offs = tl.arange(0, BLOCK)
    for row in range(pid, M, num_programs):
        row64 = tl.cast(row, tl.int64)
        x_row = x_ptr + row64 * stride_xm
        r_row = r_ptr + row64 * stride_rm
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
                x = tl.load(x_row + (h0 + offs) * stride_xh, mask=mask, other=0.0).to(tl.float32)
                if FUSED_ADD:
                    x += tl.load(r_row + (h0 + offs) * stride_rh, mask=mask, other=0.0).to(
                        tl.float32
                    )
                    tl.store(ro_row + h0 + offs, x.to(in_ty), mask=mask)
                acc += x * x
            rstd = tl.rsqrt(tl.sum(acc, axis=0) / H + eps)
            for h0 in range(0, H, BLOCK):
                mask = h0 + offs < H
                x = tl.load(x_row + (h0 + offs) * stride_xh, mask=mask, other=0.0).to(tl.float32)
                if FUSED_ADD:
                    x += tl.load(r_row + (h0 + offs) * stride_rh, mask=mask, other=0.0).to(
                        tl.float32
                    )
                y = (x * rstd).to(in_ty)
                if HAS_WEIGHT:
                    w = tl.load(w_ptr + (h0 + offs) * stride_w, mask=mask, other=0.0)
                    y = y.to(tl.float32) * w.to(tl.float32)
                tl.store(o_row + h0 + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _block_and_warps(h: int) -> tuple[int, int, bool]:
    """(BLOCK, num_warps, one_pass) from the hidden size alone (never from the row count)."""
    if h <= ONE_PASS_MAX:
        block = max(16, triton.next_power_of_2(h))
        return block, min(16, max(1, block // 512)), True
    return TWO_PASS_BLOCK, 8, False


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t [..., H]`` as ``[M, H]``: a view when strides allow, else a copy."""
    h = t.shape[-1]
    rows = t.numel() // h if h else 0
    try:
        return t.view(rows, h)
    except RuntimeError:
        return t.reshape(rows, h)


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


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    epsilon: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    out_dtype = x.dtype if weight is None else torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    r_out = (
        torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else None
    )
    h = x.shape[-1]
    if x.numel() == 0:
        return out, r_out
    x2 = _rows(x)
    r2 = _rows(residual) if residual is not None else x2
    out2 = out.view(-1, h)
    ro2 = r_out.view(-1, h) if r_out is not None else out2
    m = x2.shape[0]
    block, warps, one_pass = _block_and_warps(h)
    programs = min(m, _platform.row_programs(x.device, m))
    _rms_norm_kernel[(programs,)](
        x2, r2, weight if weight is not None else x2, out2, ro2,
        m, h, *x2.stride(), *r2.stride(), weight.stride(0) if weight is not None else 0,
        out2.stride(0), ro2.stride(0), float(epsilon), programs,
        FUSED_ADD=residual is not None, HAS_WEIGHT=weight is not None, ONE_PASS=one_pass,
        BLOCK=block, num_warps=warps,
    )  # fmt: skip
    return out, r_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float) -> torch.Tensor:
    """RMSNorm over the last dimension.

    Args:
        x: ``[..., H]``, bf16/fp16/fp32, any strides.
        weight: ``[H]`` or ``None``.
        epsilon: added to the mean square.

    Returns:
        ``[..., H]`` in ``promote_types(x.dtype, weight.dtype)`` (``x.dtype`` without weight).
    """
    _check("rms_norm", x, weight, epsilon)
    return _launch(x, None, weight, epsilon)[0]


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
    _check("fused_add_rms_norm", x, weight, epsilon)
    check_tensor("fused_add_rms_norm", "residual", residual)
    check_float("fused_add_rms_norm", "residual", residual)
    if residual.shape != x.shape or residual.device != x.device:
        raise ValueError(
            f"fused_add_rms_norm: residual must match x's shape {tuple(x.shape)} on {x.device}; "
            f"got {tuple(residual.shape)} on {residual.device}"
        )
    out, r_out = _launch(x, residual, weight, epsilon)
    if r_out is None:  # unreachable: residual was given
        raise RuntimeError("fused_add_rms_norm: residual output missing")
    return out, r_out
