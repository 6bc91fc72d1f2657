"""Packed varlen attention with a backward pass, and its ``transformers`` attention function.

Forward: the ir-dispatch op ``varlen_attention``; in batch-invariant mode that is the Triton
fixed-chunk kernel (``bi_triton_ascend.attention.varlen_attention``), which walks keys in the same
chunks as the paged decode kernel, so a scored row equals the rollout's decoded row bitwise.

Backward: ``bi_triton_ascend.attention.varlen_attention_backward``, a flash-style recomputation
with fixed loop orders and no atomics (deterministic run to run, fp32 accumulation, the gradient
of exact attention rather than of the forward kernel's exact bits), wherever Triton kernels run
(CUDA, NPU, the CPU interpreter). Elsewhere, or for head sizes it does not take, the backward
differentiates a torch reference in fp32 (one sequence at a time, materialised ``[H, L, L]``
scores): deterministic too, but ``O(L^2)`` memory per sequence and about 4x slower on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _ops

#: The name :func:`register_transformers_attention` registers with ``AttentionInterface``.
ATTN_IMPLEMENTATION = "bi_varlen"


class _VarlenAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_seqlens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        out = _ops.varlen_attention.call_selected(q, k, v, cu_seqlens, scale, True)
        ctx.save_for_backward(q, k, v, cu_seqlens, out)
        ctx.scale = scale
        return out  # type: ignore[no-any-return]

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, cu, out = ctx.saved_tensors
        kernel = _backward_kernel(q)
        if kernel is not None:
            gq, gk, gv = kernel(q, k, v, out, grad_out.to(q.dtype), cu, scale=ctx.scale)
            return gq, gk, gv, None, None
        with torch.enable_grad():
            qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
            out = _ops.reference_varlen_attention(qf, kf, vf, cu, ctx.scale, True)
            gq, gk, gv = torch.autograd.grad(out, (qf, kf, vf), grad_out.float())
        return gq.to(q.dtype), gk.to(k.dtype), gv.to(v.dtype), None, None


def _backward_kernel(q: torch.Tensor) -> Any | None:
    """bi-triton-ascend's varlen backward if it runs on ``q`` here, else ``None`` (reference)."""
    try:
        from bi_triton_ascend import _platform
        from bi_triton_ascend.attention import config, varlen_attention_backward
    except ImportError:
        return None
    if q.dtype not in config.SUPPORTED_DTYPES or q.shape[-1] > config.MAX_HEAD_SIZE:
        return None
    return varlen_attention_backward if _platform.device_supported(q) is True else None


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention of packed sequences (padding removed), differentiable.

    Args:
        q: ``[T, H, D]`` queries of every sequence, back to back.
        k: ``[T, Hkv, D]`` keys (GQA: ``H`` a multiple of ``Hkv``).
        v: like ``k``.
        cu_seqlens: ``[num_seqs + 1]`` int32 offsets, ``cu_seqlens[-1] == T``.
        scale: softmax scale (default ``D ** -0.5``).

    Returns:
        ``[T, H, D]`` in ``q``'s dtype.
    """
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape:
        raise ValueError(
            f"q must be [T, H, D] and k, v [T, Hkv, D]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"cu_seqlens must be a 1-D int32/int64 tensor, got {cu_seqlens.dtype} "
            f"{tuple(cu_seqlens.shape)}"
        )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _VarlenAttention.apply(q, k, v, cu_seqlens.to(torch.int32), scale)  # type: ignore[no-any-return]


def cu_seqlens_from_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(flat indices of the kept tokens, cu_seqlens)`` of a ``[B, S]`` padding mask.

    Each row is one sequence; its kept tokens (left or right padding, or both) are packed in
    order.
    """
    keep = mask.bool()
    lengths = keep.sum(-1)
    cu = torch.zeros(keep.shape[0] + 1, dtype=torch.int32, device=mask.device)
    cu[1:] = torch.cumsum(lengths, 0)
    return keep.flatten().nonzero().squeeze(-1), cu


def hf_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A ``transformers`` attention function (``AttentionInterface``) over :func:`varlen_attention`.

    Layouts, in the order they are checked:

    * ``cu_seq_lens_q`` in ``kwargs`` (``transformers``' packed-sequence kwargs) with batch 1;
    * a 2-D padding mask ``attention_mask [B, S]``: padding removed, packed, put back (zeros);
    * ``position_ids [1, T]`` in ``kwargs`` restarting at 0 for each packed sequence;
    * otherwise every row is one full-length sequence.

    Args:
        module: the attention module (unused; part of the interface).
        query: ``[B, H, S, D]``.
        key: ``[B, Hkv, S, D]``.
        value: like ``key``.
        attention_mask: ``None`` or a ``[B, S]`` padding mask (from the ``bi_varlen`` mask).
        scaling: softmax scale.
        dropout: must be 0 (training-time attention dropout is not supported).
        sliding_window: must be ``None``.
        **kwargs: ``cu_seq_lens_q``/``cu_seq_lens_k`` or ``position_ids`` (others ignored).

    Returns:
        ``([B, S, H, D], None)`` (no attention weights).
    """
    del module
    if dropout:
        raise ValueError(f"bi_varlen attention needs dropout=0.0, got {dropout}")
    if sliding_window is not None:
        raise ValueError(f"bi_varlen attention has no sliding window yet, got {sliding_window}")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            "bi_varlen attention takes a [B, S] padding mask (register its mask function); "
            f"got shape {tuple(attention_mask.shape)}"
        )
    b, h, s, d = query.shape
    q = query.transpose(1, 2).reshape(b * s, h, d)
    k = key.transpose(1, 2).reshape(b * s, key.shape[1], d)
    v = value.transpose(1, 2).reshape(b * s, value.shape[1], d)
    cu = kwargs.get("cu_seq_lens_q")
    keep: torch.Tensor | None = None
    if cu is not None:
        if b != 1:
            raise ValueError(f"cu_seq_lens_q needs packed inputs with batch size 1, got {b}")
        k_cu = kwargs.get("cu_seq_lens_k")
        if k_cu is not None and not torch.equal(k_cu, cu):
            raise ValueError("bi_varlen attention is self-attention: cu_seq_lens_k must equal _q")
    elif attention_mask is not None:
        keep, cu = cu_seqlens_from_mask(attention_mask[:, -s:])
        q, k, v = q[keep], k[keep], v[keep]
    elif kwargs.get("position_ids") is not None and b == 1:
        cu = cu_seqlens_from_positions(kwargs["position_ids"][0])
    else:
        cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=query.device)
    out = varlen_attention(q, k, v, cu, scaling)
    if keep is not None:
        out = out.new_zeros(b * s, h, d).index_copy(0, keep, out)
    return out.reshape(b, s, h, d), None


def cu_seqlens_from_positions(positions: torch.Tensor) -> torch.Tensor:
    """``cu_seqlens`` of packed sequences whose ``positions [T]`` restart at 0.

    Raises:
        ValueError: a sequence does not count ``0, 1, 2, ...`` (the packed layout needs it).
    """
    t = positions.shape[0]
    starts = (positions == 0).nonzero().squeeze(-1)
    if t and (starts.numel() == 0 or int(starts[0]) != 0):
        raise ValueError("position_ids of packed sequences must start at 0")
    cu = torch.cat([starts, starts.new_tensor([t])]).to(torch.int32)
    lengths = (cu[1:] - cu[:-1]).long()
    expected = torch.arange(t, device=positions.device) - torch.repeat_interleave(
        cu[:-1].long(), lengths
    )
    if not torch.equal(positions.long(), expected):
        raise ValueError("position_ids must count 0, 1, 2, ... within each packed sequence")
    return cu


def register_transformers_attention() -> str:
    """Register :func:`hf_attention` (and a padding-mask builder) as ``"bi_varlen"``.

    After this, ``model.set_attn_implementation("bi_varlen")`` (or
    ``attn_implementation="bi_varlen"`` at load) makes any ``transformers`` model whose
    attention goes through ``AttentionInterface`` use the batch-invariant kernel.
    Idempotent.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, hf_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, flash_attention_mask)
    return ATTN_IMPLEMENTATION
