"""Native references of the matrix products. All reduce over K, so all can be batch-variant."""

from __future__ import annotations

import torch

from ..platform import PlatformKind
from ..registry import register_op

# Why the vendor GEMMs are batch-variant: they choose tiles, split-K and kernels from M.
GEMM_VARIANT_ON = {
    PlatformKind.CUDA: "cuBLAS picks tiles and split-K from M (H100: row 0 differs at M=1 vs M=16)",
    PlatformKind.ROCM: "hipBLASLt picks kernels from M",
    PlatformKind.NPU: "aclnn matmul tiles depend on M",
    PlatformKind.XPU: "oneDNN picks kernels from M",
    PlatformKind.CPU: "oneDNN/MKL block by M (row 0 of a[:m] @ b differs for m=1, 3)",
}


@register_op(has_reduction=True, native_variant_on=GEMM_VARIANT_ON)
def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for ``a [M, K]``, ``b [K, N]``."""
    return torch.mm(a, b)


@register_op(has_reduction=True, native_variant_on=GEMM_VARIANT_ON)
def addmm(
    bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float = 1.0, alpha: float = 1.0
) -> torch.Tensor:
    """``beta * bias + alpha * (a @ b)``; ``bias`` broadcasts to ``[M, N]``."""
    return torch.addmm(bias, a, b, beta=beta, alpha=alpha)


@register_op(has_reduction=True, native_variant_on=GEMM_VARIANT_ON)
def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched ``a [B, M, K] @ b [B, K, N]``."""
    return torch.bmm(a, b)


@register_op(has_reduction=True, native_variant_on=GEMM_VARIANT_ON)
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul`` semantics: any ranks, 1-D operands, broadcast batch dimensions."""
    return torch.matmul(a, b)


@register_op(has_reduction=True, native_variant_on=GEMM_VARIANT_ON)
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``x [..., K]``, ``weight [N, K]``, ``bias [N]``."""
    return torch.nn.functional.linear(x, weight, bias)


@register_op(has_reduction=True, native_variant_on=GEMM_VARIANT_ON)
def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """FP8 GEMM ``(a @ b) * scale_a * scale_b (+ bias)`` in ``out_dtype``.

    Args:
        a: ``[M, K]`` float8_e4m3fn activations.
        b: ``[K, N]`` float8_e4m3fn weights.
        scale_a: ``[1]``/``[]`` (per tensor) or ``[M, 1]`` (per token), float32.
        scale_b: ``[1]``/``[]`` (per tensor) or ``[1, N]`` (per channel), float32.
        out_dtype: ``torch.bfloat16`` or ``torch.float16``.
        bias: optional ``[N]`` in ``out_dtype``.
    """
    acc = torch.mm(a.to(torch.float32), b.to(torch.float32))
    acc = (
        acc * scale_a.to(torch.float32).reshape(-1, 1)
        if scale_a.numel() > 1
        else acc * scale_a.float().reshape(())
    )
    acc = (
        acc * scale_b.to(torch.float32).reshape(1, -1)
        if scale_b.numel() > 1
        else acc * scale_b.float().reshape(())
    )
    if bias is not None:
        acc = acc + bias.to(torch.float32)
    return acc.to(out_dtype)
