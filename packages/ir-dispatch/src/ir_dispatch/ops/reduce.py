"""Native references of the row reductions: softmax family, token logprobs, means."""

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


@register_op(has_reduction=True, native_variant_on=REDUCTION_VARIANT_ON)
def mean_of_squares(
    x: torch.Tensor, dim: list[int] | None = None, keepdim: bool = False
) -> torch.Tensor:
    """``x.float().pow(2).mean(dim, keepdim)``: the statistic of an RMSNorm written in torch.

    An op of its own so that a kernel can read ``x`` once, where the pattern writes the fp32
    squares and reads them back; ir-dispatch's lowering pass puts it in compiled graphs in
    place of that pattern (:mod:`ir_dispatch.lowering`). Implementations give the pattern's
    bits: each square rounded to fp32, then summed as their ``mean`` sums.
    """
    return x.float().pow(2).mean(dim=dim, keepdim=keepdim)
