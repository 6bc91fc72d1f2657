"""Native references of the row reductions (softmax family, token logprobs and mean)."""

from __future__ import annotations

import torch

from ..platform import PlatformKind
from ..registry import register_op

REDUCTION_VARIANT_ON = {
    PlatformKind.CUDA: "the reduction's block layout and split are chosen from the whole shape",
    PlatformKind.ROCM: "the reduction's block layout and split are chosen from the whole shape",
    PlatformKind.NPU: "vector-core tiling is chosen from the whole shape",
    PlatformKind.XPU: "the reduction's work split is chosen from the whole shape",
    PlatformKind.CPU: "ATen splits one long row across threads but many rows by row",
}


@register_op(has_reduction=True, native_variant_on=REDUCTION_VARIANT_ON)
def softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``softmax`` along ``dim``, computed in and returned as ``dtype`` if given."""
    return torch.softmax(x, dim, dtype=dtype)


@register_op(has_reduction=True, native_variant_on=REDUCTION_VARIANT_ON)
def log_softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``log_softmax`` along ``dim``, computed in and returned as ``dtype`` if given."""
    return torch.log_softmax(x, dim, dtype=dtype)


@register_op(has_reduction=True, native_variant_on=REDUCTION_VARIANT_ON)
def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """fp32 ``log_softmax`` of each ``[rows, vocab]`` logits row at its ``[rows, n]`` token ids.

    Bitwise ``log_softmax(logits, -1, torch.float32).gather(-1, token_ids)`` of the serving
    provider's ``log_softmax`` (a trainer differentiates through that pair), without writing the
    fp32 rows a sampler only reads ``n`` entries of.
    """
    return torch.log_softmax(logits, -1, dtype=torch.float32).gather(-1, token_ids.long())


@register_op(has_reduction=True, native_variant_on=REDUCTION_VARIANT_ON)
def mean(
    x: torch.Tensor,
    dim: list[int] | None = None,
    keepdim: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean over ``dim`` (all dims if ``None``), like ``torch.mean``."""
    return torch.mean(x, dim=dim, keepdim=keepdim, dtype=dtype)
