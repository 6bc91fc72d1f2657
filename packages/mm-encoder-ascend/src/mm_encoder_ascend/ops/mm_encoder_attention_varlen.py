"""``mm_encoder_attention`` on NVIDIA GPUs: torch's varlen flash attention, one launch per layer.

The kernel reads ``cu_seqlens`` on the device; only ``max_seqlen`` (a launch-grid bound) must
be a host integer, and it comes from the shared host lengths, so no layer synchronises.
"""

from __future__ import annotations

import torch

from .. import _platform
from .._seqlens import HostSeqLens
from .mm_encoder_attention import check_lengths


def attend_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    lens: HostSeqLens,
    scale: float,
) -> torch.Tensor:
    """Varlen flash attention over the packed tokens.

    Batch-invariant as run here: flash attention gives every (sequence, head, query block) its
    own thread block, which walks only that sequence's keys in a fixed order, and
    ``num_splits=1`` (where torch accepts it) forbids split-KV partial softmaxes.

    Args:
        query: ``[B, S, Hq, D]``, fp16 or bf16, CUDA.
        key: ``[B, S, Hkv, D]``.
        value: ``[B, S, Hkv, D]``.
        cu_seqlens: device offsets of the packed tokens, or ``None`` for one sequence per row.
        lens: the same offsets on the host.
        scale: softmax scale.

    Returns:
        ``[B, S, Hq, D]``.
    """
    b, s, hq, d = query.shape
    tokens = b * s
    check_lengths(lens, tokens)
    if cu_seqlens is None:
        cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=query.device)
    elif cu_seqlens.dtype != torch.int32 or cu_seqlens.device != query.device:
        cu = cu_seqlens.to(device=query.device, dtype=torch.int32, non_blocking=True)
    else:
        cu = cu_seqlens
    n = lens.total
    if n == 0:
        return query.new_zeros(query.shape)
    q, k, v = (t.reshape(tokens, t.shape[2], d)[:n] for t in (query, key, value))
    out = _platform.varlen_attention(q, k, v, cu, lens.max_len, scale)
    if n < tokens:
        out = torch.cat([out, query.new_zeros(tokens - n, hq, d)])
    return out.reshape(b, s, hq, d)


__all__ = ["attend_varlen"]
