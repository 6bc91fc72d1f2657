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


@register_op(has_reduction=True, native_variant_on=REDUCTION_VARIANT_ON)
def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    epsilon: float,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3's per-head q/k RMSNorm, then neox RoPE over the whole head, as one op.

    ``q [T, Hq, D]`` and ``k [T, Hk, D]`` are normalized per head (:func:`rms_norm`, rounded to
    their dtype), then rotated with ``cos_sin_cache[positions]`` (``[P, D]``: ``cat(cos, sin)``
    in the same dtype) in fp32 and rounded once - what vLLM's RoPE computes on GPUs (its CUDA
    kernel and Inductor's lowering alike). Returns new contiguous ``(q', k')``.
    """
    cos, sin = rope_table(positions, cos_sin_cache)
    return (
        neox_rope(rms_norm.native(q, q_weight, epsilon), cos, sin),
        neox_rope(rms_norm.native(k, k_weight, epsilon), cos, sin),
    )


def rope_table(
    positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos``/``sin`` of ``positions`` from a ``cat(cos, sin)`` table, fp32, ``[T, 1, D/2]``."""
    cos, sin = cos_sin_cache.index_select(0, positions).float().chunk(2, dim=-1)
    return cos.unsqueeze(-2), sin.unsqueeze(-2)


def neox_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox RoPE of ``x [T, H, D]`` over the whole head: fp32, rounded once to ``x``'s dtype.

    vLLM's GPU arithmetic; ``cos``/``sin`` come from :func:`rope_table`.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
