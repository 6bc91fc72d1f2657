"""Registers the Triton fixed-chunk attention as the ``triton`` provider of ``paged_attention``.

Call :func:`register` once per process (it is idempotent: registering again replaces).
"""

from __future__ import annotations

import torch

from .. import _platform
from .config import MAX_HEAD_SIZE, SUPPORTED_DTYPES
from .op import paged_attention as paged_attention_op

PROVIDER = "triton"
supported: bool = _platform.triton_available()
NOTE = (
    "fixed KV chunks on the absolute position grid, each an online softmax in fixed tiles, "
    "partials folded in chunk order: decode, prefill and varlen rows are bitwise equal"
)


def supports_args(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    causal: bool = True,
    max_seq_len: int | None = None,
) -> bool | str:
    """``True`` when the kernel can run the call; otherwise why not.

    Needs Triton, a device it runs on (CUDA, Ascend, or CPU under ``TRITON_INTERPRET=1``),
    bf16/fp16/fp32 tensors of one dtype and head sizes up to :data:`MAX_HEAD_SIZE`.
    """
    if not supported:
        return 'triton is not installed (pip install "bi-triton-ascend[nvidia]")'
    if query.dtype not in SUPPORTED_DTYPES or key_cache.dtype != query.dtype:
        return f"dtypes {query.dtype}/{key_cache.dtype}: needs one of bf16, fp16, fp32"
    if query.dim() != 3 or query.shape[-1] > MAX_HEAD_SIZE:
        return f"query shape {tuple(query.shape)}: needs [T, H, D] with D <= {MAX_HEAD_SIZE}"
    return _platform.device_supported(query)


def register() -> None:
    """Register the ``triton`` provider of ``paged_attention`` (batch-invariant)."""
    from .api import paged_attention

    paged_attention_op.register_impl(
        PROVIDER,
        batch_invariant=True,
        platforms=_platform.supported_platforms(),
        supports_args=supports_args,
        note=NOTE,
    )(paged_attention)
