"""Registers this package's kernels as providers of ``mm_encoder_attention`` with ir-dispatch.

| provider       | platforms | priority | batch-invariant | host lengths |
|----------------|-----------|----------|-----------------|--------------|
| ``npu``        | NPU       | 30       | not claimed     | yes (kernel argument) |
| ``varlen``     | CUDA      | 20       | yes             | ``max_seqlen`` only |
| ``per_sequence`` | all     | 10       | yes, by construction | yes (slice bounds) |
| ``native``     | all       | 0        | no (one masked SDPA) | no |

Every provider gets host lengths from :mod:`mm_encoder_ascend._seqlens`, so no layer reads
``cu_seqlens`` back on its own. In batch-invariant mode an NPU runs ``per_sequence``: the unpad
kernel has never run on an NPU here, so its invariance is not claimed.
"""

from __future__ import annotations

import torch

from ir_dispatch import PlatformKind

from . import _platform
from ._seqlens import HostSeqLens, host_seq_lens
from .ops.mm_encoder_attention import attend_per_sequence, check_args, mm_encoder_attention
from .ops.mm_encoder_attention_npu import attend_npu_unpad
from .ops.mm_encoder_attention_varlen import attend_varlen

NPU = "npu"
VARLEN = "varlen"
PER_SEQUENCE = "per_sequence"
HALF_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_SIZE = 256


def _lens(query: torch.Tensor, key: torch.Tensor, cu_seqlens: torch.Tensor | None) -> HostSeqLens:
    """Host lengths of the packed tokens (uniform rows when ``cu_seqlens`` is ``None``)."""
    if cu_seqlens is None:
        return HostSeqLens.uniform(query.shape[0], query.shape[1])
    return host_seq_lens(cu_seqlens)


def _same_length_kv(query: torch.Tensor, key: torch.Tensor) -> bool | str:
    if key.shape[1] != query.shape[1]:
        return (
            f"packed kernels need key/value as long as query ({key.shape[1]} vs {query.shape[1]})"
        )
    return True


def npu_supports(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
) -> bool | str:
    """fp16/bf16 with key/value as long as query, on a host where ``torch_npu`` imports."""
    available = _platform.npu_available()
    if available is not True:
        return available
    if query.dtype not in HALF_DTYPES:
        return f"_npu_flash_attention_unpad takes fp16/bf16, got {query.dtype}"
    return _same_length_kv(query, key)


def varlen_supports(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
) -> bool | str:
    """fp16/bf16, head size a multiple of 8 up to 256, on an sm80+ GPU."""
    for check in (_platform.varlen_attention_available(), _platform.flash_capable(query.device)):
        if check is not True:
            return check
    if query.dtype not in HALF_DTYPES:
        return f"flash attention takes fp16/bf16, got {query.dtype}"
    d = query.shape[3]
    if d % 8 or d > FLASH_MAX_HEAD_SIZE:
        return f"flash attention takes head sizes that are multiples of 8 up to 256, got {d}"
    return _same_length_kv(query, key)


@mm_encoder_attention.register_impl(
    NPU,
    batch_invariant=False,
    platforms=[PlatformKind.NPU],
    supports_args=npu_supports,
    priority=30,
    note="one unpad launch for all images; invariance unverified (never run on an NPU)",
)
def mm_encoder_attention_npu(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    check_args(query, key, value, cu_seqlens)
    return attend_npu_unpad(query, key, value, _lens(query, key, cu_seqlens), scale)


@mm_encoder_attention.register_impl(
    VARLEN,
    batch_invariant=True,
    platforms=[PlatformKind.CUDA],
    supports_args=varlen_supports,
    priority=20,
    note="flash attention: one thread block per (image, head, query block), no split-KV",
)
def mm_encoder_attention_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    check_args(query, key, value, cu_seqlens)
    return attend_varlen(query, key, value, cu_seqlens, _lens(query, key, cu_seqlens), scale)


@mm_encoder_attention.register_impl(
    PER_SEQUENCE,
    batch_invariant=True,
    priority=10,
    note="one SDPA call per image on exactly that image's slice",
)
def mm_encoder_attention_per_sequence(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    check_args(query, key, value, cu_seqlens)
    lens = None if cu_seqlens is None else host_seq_lens(cu_seqlens)
    return attend_per_sequence(query, key, value, lens, scale)


__all__ = [
    "NPU",
    "PER_SEQUENCE",
    "VARLEN",
    "mm_encoder_attention_npu",
    "mm_encoder_attention_per_sequence",
    "mm_encoder_attention_varlen",
    "npu_supports",
    "varlen_supports",
]
