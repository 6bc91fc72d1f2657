"""The batch-invariant fallback: exact dequantization to bf16, then the bf16 batch-invariant mm.

For GPUs without the CUTLASS kernel (not SM90, no nvcc) and other platforms. Numerics, chosen
so that every step is either exact or a single, documented rounding:

1. ``a`` and ``b`` are converted to bf16 **without their scales**. Every float8_e4m3fn value
   (4 significant bits, exponents 2^-9..2^8, NaN) is a bf16 value (8 significant bits,
   exponents down to 2^-133), so this step is exact. Multiplying by the scale before the GEMM
   (``fp8 -> fp32 * scale -> bf16``) would round every element - that is what this avoids.
2. ``C = mm(a_bf16, b_bf16)`` through ``ir_dispatch.ops.mm.call_selected``, so in
   batch-invariant mode the batch-invariant bf16 GEMM runs (bi-triton-ascend's ``triton``
   provider on GPU and NPU). Each product of two e4m3 values has at most 8 significant bits,
   so it is exact in fp32; the kernel's fp32 accumulation then rounds like any GEMM's, and
   its result is rounded once to bf16.
3. ``out = (C * scale_a) * scale_b (+ bias)`` in fp32, elementwise, rounded once to
   ``out_dtype``.

So the result differs from the CUTLASS kernel's (which keeps the fp32 accumulator through the
epilogue) by the extra bf16 rounding of step 2: at most half a bf16 ulp of the unscaled sum
(relative 2^-9) before the final rounding. Every step works row by row, so the whole path is
batch-invariant exactly when the selected ``mm`` is.
"""

from __future__ import annotations

import torch

from ir_dispatch import ops as ir_ops

from .._checks import check_args


def scaled_mm_dequant(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(a @ b) * scale_a * scale_b (+ bias)`` via exact bf16 dequantization and ``mm``.

    Args:
        a: ``[M, K]`` float8_e4m3fn (any strides).
        b: ``[K, N]`` float8_e4m3fn (any strides).
        scale_a: float32 ``[]``/``[1]``/``[1, 1]`` or ``[M, 1]`` (or ``[M]``).
        scale_b: float32 ``[]``/``[1]``/``[1, 1]`` or ``[1, N]`` (or ``[N, 1]``/``[N]``).
        out_dtype: ``torch.bfloat16`` or ``torch.float16``.
        bias: optional ``[N]`` in ``out_dtype``.

    Returns:
        ``[M, N]`` in ``out_dtype``.

    Raises:
        TypeError, ValueError: bad arguments.
        ir_dispatch.NoBatchInvariantImplError: batch-invariant mode is on and no
            batch-invariant bf16 ``mm`` is registered for the tensors' platform.
    """
    shape = check_args(a, b, scale_a, scale_b, out_dtype, bias)
    a16 = a.to(torch.bfloat16)  # exact: e4m3 is a subset of bf16
    b16 = b.to(torch.bfloat16)
    acc = ir_ops.mm.call_selected(a16, b16).to(torch.float32)
    sa = scale_a.reshape(shape.m, 1) if shape.scale_a_per_token else scale_a.reshape(())
    sb = scale_b.reshape(1, shape.n) if shape.scale_b_per_channel else scale_b.reshape(())
    out = acc * sa
    out = out * sb
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(out_dtype)
