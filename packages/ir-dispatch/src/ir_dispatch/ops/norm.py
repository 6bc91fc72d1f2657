"""Native RMSNorm references, in vLLM's arithmetic order (fp32 math, cast, then weight)."""

from __future__ import annotations

import torch

from ..registry import register_op
from .reduce import REDUCTION_VARIANT_ON


@register_op(has_reduction=True, native_variant_on=REDUCTION_VARIANT_ON)
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float) -> torch.Tensor:
    """``x / sqrt(mean(x**2, -1) + epsilon) * weight`` over the last dimension."""
    orig_dtype = x.dtype
    xf = x.to(torch.float32)
    variance = xf.pow(2).mean(dim=-1, keepdim=True)
    out = (xf * torch.rsqrt(variance + epsilon)).to(orig_dtype)
    return out * weight if weight is not None else out


@register_op(has_reduction=True, native_variant_on=REDUCTION_VARIANT_ON)
def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual' = x + residual``; returns ``(rms_norm(residual'), residual')``."""
    orig_dtype = x.dtype
    summed = x.to(torch.float32) + residual.to(torch.float32)
    new_residual = summed.to(orig_dtype)
    variance = summed.pow(2).mean(dim=-1, keepdim=True)
    out = (summed * torch.rsqrt(variance + epsilon)).to(orig_dtype)
    return (out * weight if weight is not None else out), new_residual
