"""``mm_encoder_attention`` on Ascend: one ``_npu_flash_attention_unpad`` launch per layer.

The kernel takes the packed ``[T, H, D]`` tokens and the per-sequence lengths *on the host*
(int32 CPU tensor). Those lengths come from :mod:`mm_encoder_ascend._seqlens`, which reads
``cu_seqlens`` back at most once per encoder forward (never, when vLLM hands the host copy
over), and the CPU tensor passed here is built once per forward and shared by all layers.

Never run on an NPU: tested only against a fake ``torch_npu`` that checks the arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _platform
from .._seqlens import HostSeqLens
from .mm_encoder_attention import check_lengths


def attend_npu_unpad(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lens: HostSeqLens,
    scale: float,
) -> torch.Tensor:
    """Varlen attention through ``torch_npu._npu_flash_attention_unpad``.

    Head sizes strictly between 64 and 128 are zero-padded to 128 for the kernel (the padded
    columns of ``q . k`` add zero, those of the output are cut off); ``scale`` is the caller's,
    from the unpadded head size. Tokens after ``lens.total`` are padding and get zeros.

    Args:
        query: ``[B, S, Hq, D]``, fp16 or bf16.
        key: ``[B, S, Hkv, D]``.
        value: ``[B, S, Hkv, D]``.
        lens: host lengths of the ``B * S`` packed tokens.
        scale: softmax scale.

    Returns:
        ``[B, S, Hq, D]``.
    """
    b, s, hq, d = query.shape
    hkv = key.shape[2]
    tokens = b * s
    check_lengths(lens, tokens)
    n = lens.total
    kd = _platform.npu_kernel_head_size(d)
    q, k, v = (t.reshape(tokens, t.shape[2], d)[:n] for t in (query, key, value))
    if kd != d:
        q, k, v = (F.pad(t, (0, kd - d)) for t in (q, k, v))
    else:
        q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty((n, hq, kd), dtype=query.dtype, device=query.device)
    if n:
        _platform.npu_flash_attention_unpad(q, k, v, lens.npu_seq_len, scale, hq, hkv, out)
    result = out[..., :d].contiguous() if kd != d else out
    if n < tokens:
        result = torch.cat([result, query.new_zeros(tokens - n, hq, d)])
    return result.reshape(b, s, hq, d)


__all__ = ["attend_npu_unpad"]
