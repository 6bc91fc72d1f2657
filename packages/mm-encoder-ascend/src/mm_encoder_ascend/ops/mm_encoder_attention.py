"""The ``mm_encoder_attention`` op: its native reference and the per-sequence SDPA kernel.

Semantics (what every provider matches): bidirectional attention of each sequence over itself
only. ``query [B, S, Hq, D]``, ``key``/``value [B, S_kv, Hkv, D]`` with ``Hq % Hkv == 0``
(GQA/MQA share each key/value head among ``Hq / Hkv`` query heads). With ``cu_seqlens`` the
``B * S`` tokens are packed and sequence ``i`` is tokens ``cu[i]:cu[i+1]`` (``S_kv == S``);
tokens after ``cu[-1]`` are padding and get zeros. Without it every batch row is one sequence.
The output has ``query``'s shape.

The native reference masks one big SDPA block-diagonally. Its softmax rows span all ``B * S``
keys (masked ones contribute exact zeros, but the blocking of the reduction follows the total
length), so it is not bitwise batch-invariant; :func:`attend_per_sequence` is, by construction:
each sequence is one SDPA call on exactly its own slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ir_dispatch import PlatformKind, register_op

from .._seqlens import HostSeqLens

_NATIVE_WHY = "one masked SDPA over all images: reduction blocking follows the total length"
NATIVE_VARIANT_ON = {kind: _NATIVE_WHY for kind in PlatformKind}

# Dtypes the op accepts; kernels narrow this in their ``supports_args`` (flash: fp16/bf16).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_args(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor | None
) -> None:
    """Raise ``ValueError`` unless the arguments have the op's shapes and dtypes."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, S, H, D], got shape {tuple(t.shape)}")
    b, s, hq, d = query.shape
    if key.shape != value.shape:
        raise ValueError(
            f"key and value must have the same shape, got {tuple(key.shape)} and "
            f"{tuple(value.shape)}"
        )
    if key.shape[0] != b or key.shape[3] != d:
        raise ValueError(
            f"key must be [{b}, S_kv, Hkv, {d}] to match query {tuple(query.shape)}, got "
            f"{tuple(key.shape)}"
        )
    hkv = key.shape[2]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    if not (query.dtype == key.dtype == value.dtype) or query.dtype not in FLOAT_DTYPES:
        raise ValueError(
            "query, key and value must share one floating dtype, got "
            f"{query.dtype}, {key.dtype}, {value.dtype}"
        )
    if not (query.device == key.device == value.device):
        raise ValueError(
            f"query, key and value must be on one device, got {query.device}, {key.device}, "
            f"{value.device}"
        )
    if cu_seqlens is not None:
        if key.shape[1] != s:
            raise ValueError(
                f"with cu_seqlens, key/value must have query's {s} tokens per row, got "
                f"{key.shape[1]}"
            )
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                "cu_seqlens must be a 1-D int32/int64 tensor, got shape "
                f"{tuple(cu_seqlens.shape)} {cu_seqlens.dtype}"
            )


def check_lengths(lens: HostSeqLens, tokens: int) -> None:
    """Raise ``ValueError`` if ``lens`` covers more tokens than the packed batch has."""
    if lens.total > tokens:
        raise ValueError(
            f"cu_seqlens ends at {lens.total} but query has only {tokens} tokens (B * S)"
        )


@register_op(has_reduction=True, native_variant_on=NATIVE_VARIANT_ON)
def mm_encoder_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Varlen bidirectional attention of a multimodal encoder (see the module docstring).

    Reference: a block-diagonal boolean mask over one SDPA call, built on the device from
    ``cu_seqlens`` (no host read). Memory grows as ``(B * S)**2``: a reference, not a kernel.
    """
    check_args(query, key, value, cu_seqlens)
    b, s, hq, d = query.shape
    gqa = bool(hq != key.shape[2])
    if cu_seqlens is None:
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            scale=scale,
            enable_gqa=gqa,
        )
        return out.transpose(1, 2).contiguous()
    tokens = b * s
    cu = cu_seqlens.to(torch.int64)
    # Sequence id of every token; padding after cu[-1] gets id len(cu) and is zeroed below.
    ids = torch.searchsorted(cu, torch.arange(tokens, device=cu.device), right=True)
    mask = ids[:, None] == ids[None, :]
    q, k, v = (t.reshape(1, tokens, t.shape[2], d).transpose(1, 2) for t in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    out = out.transpose(1, 2).reshape(tokens, hq, d)
    valid = (ids < cu.numel()).to(query.device)[:, None, None]
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device)).reshape(
        b, s, hq, d
    )


def _aligned(t: torch.Tensor) -> torch.Tensor:
    # Vectorised kernels want 16-byte-aligned rows; a slice at an odd offset is copied so that
    # it takes the same kernel path as the same image encoded alone.
    return t if t.data_ptr() % 16 == 0 else t.contiguous()


def _sdpa_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA of one sequence: ``[L, Hq, D]`` x ``[L_kv, Hkv, D]`` -> ``[L, Hq, D]``."""
    q4, k4, v4 = (_aligned(t).transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        q4, k4, v4, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.squeeze(0).transpose(0, 1)


def attend_per_sequence(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lens: HostSeqLens | None,
    scale: float,
) -> torch.Tensor:
    """One SDPA call per sequence, on exactly that sequence's slice.

    Batch-invariant by construction on every device: the call that computes an image sees
    that image's tokens and nothing else, so it runs the same kernel on the same values
    whether the image came alone or with others.

    Args:
        query: ``[B, S, Hq, D]``.
        key: ``[B, S_kv, Hkv, D]``.
        value: ``[B, S_kv, Hkv, D]``.
        lens: host lengths of the packed ``B * S`` tokens, or ``None`` for one sequence per
            batch row.
        scale: softmax scale.

    Returns:
        ``[B, S, Hq, D]``, contiguous.
    """
    b, s, hq, d = query.shape
    if lens is None:
        rows = [_sdpa_one(query[i], key[i], value[i], scale) for i in range(b)]
        return torch.stack(rows) if rows else query.new_empty(query.shape)
    tokens = b * s
    check_lengths(lens, tokens)
    q, k, v = (t.reshape(tokens, t.shape[2], d) for t in (query, key, value))
    pieces = [_sdpa_one(q[a:e], k[a:e], v[a:e], scale) for a, e in lens.spans]
    if lens.total < tokens:
        pieces.append(query.new_zeros(tokens - lens.total, hq, d))
    if not pieces:
        return query.new_empty(query.shape)
    return torch.cat(pieces).reshape(b, s, hq, d)


__all__ = [
    "NATIVE_VARIANT_ON",
    "attend_per_sequence",
    "check_args",
    "check_lengths",
    "mm_encoder_attention",
]
