"""Public attention functions: paged (decode, prefill, chunked prefill) and packed varlen.

All three run the same kernel with the same chunk grid (:mod:`.config`), so a query row gets the
same bits from :func:`paged_decode`, from :func:`paged_attention` with any prompt chunking or
prefix caching, and from the trainer's :func:`varlen_attention` over the packed sequence, alone
or in any batch.
"""

from __future__ import annotations

import torch

from . import _checks
from ._launch import launch

_PAGED = "paged_attention"
_VARLEN = "varlen_attention"


def paged_attention(
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
    *,
    mode: str = "auto",
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Attention of varlen queries over vLLM's paged KV cache, batch-invariant.

    Sequence ``i`` has ``seq_lens[i]`` keys (cached prefix plus this step's tokens) and its
    queries are the last ``q_len = query_start_loc[i+1] - query_start_loc[i]`` of them, so query
    ``j`` sits at position ``seq_lens[i] - q_len + j``: decode is ``q_len = 1``, prefill
    ``q_len = seq_lens[i]``, chunked prefill or a prefix-cache hit anything in between.

    Batch-invariant: the keys ``[0, p]`` of a query at position ``p`` (or its window) are walked
    in fixed chunks on the absolute position grid, each chunk an online softmax in fixed tiles,
    the chunk partials folded in chunk order. Nothing depends on the other sequences, on
    ``q_len`` or on ``mode``; so a row is bitwise the same decoded or prefilled, chunked or not,
    alone or in any batch.

    Args:
        query: ``[total_q, num_heads, head_size]`` bf16/fp16/fp32, any strides.
        key_cache: ``[num_blocks, block_size, num_kv_heads, head_size]``, query's dtype.
        value_cache: like ``key_cache``.
        block_table: ``[num_seqs, max_blocks]`` int32 block ids of each sequence.
        seq_lens: ``[num_seqs]`` int32 KV lengths (each ``>= q_len`` of the sequence, or 0
            for a padding request).
        query_start_loc: ``[num_seqs + 1]`` int32 offsets of each sequence's queries.
        scale: softmax scale applied to ``q . k``.
        sliding_window: keys a query sees, itself included (``None``: all); needs ``causal``.
        causal: queries see keys up to their own position only (else all ``seq_lens[i]``).
        max_seq_len: an upper bound of ``seq_lens``; lets a split launch skip a device sync
            (required for ``mode="split"`` under CUDA graph capture, where it must bound every
            ``seq_lens`` the graph will replay, e.g. the model's max length; a split launch
            writes NaN rows for a sequence past it). Any larger bound gives the same bits. A
            graph's warm-up launch should pass the same bound, so that the capture needs no
            new kernel variant.
        mode: ``"auto"`` (split KV when the device would otherwise idle), ``"split"`` or
            ``"fused"``. Speed only: all three give the same bits.
        out_dtype: the output dtype (default ``query.dtype``); fp32 keeps the accumulator's
            bits, which tests use to compare before the final rounding.

    Returns:
        ``[total_q, num_heads, head_size]`` in ``out_dtype`` (rows past
        ``query_start_loc[-1]`` are left unwritten; a sequence with queries and no keys, as in
        CUDA-graph padding, gets zero rows and its block-table row is never read).
    """
    _checks.tensor(_PAGED, "query", query, 3)
    _checks.tensor(_PAGED, "key_cache", key_cache, 4)
    _checks.tensor(_PAGED, "value_cache", value_cache, 4)
    _checks.tensor(_PAGED, "block_table", block_table, 2)
    _checks.tensor(_PAGED, "seq_lens", seq_lens, 1)
    _checks.tensor(_PAGED, "query_start_loc", query_start_loc, 1)
    _checks.float_like(_PAGED, "query", query, "query", query)
    _checks.float_like(_PAGED, "key_cache", key_cache, "query", query)
    _checks.float_like(_PAGED, "value_cache", value_cache, "query", query)
    if value_cache.shape != key_cache.shape:
        raise ValueError(
            f"{_PAGED}: value_cache must have key_cache's shape {tuple(key_cache.shape)}; "
            f"got {tuple(value_cache.shape)}"
        )
    num_seqs = seq_lens.shape[0]
    _checks.index(_PAGED, "seq_lens", seq_lens, None, query.device)
    _checks.index(_PAGED, "query_start_loc", query_start_loc, num_seqs + 1, query.device)
    _checks.index(_PAGED, "block_table", block_table, num_seqs, query.device)
    _checks.heads(_PAGED, query.shape[1], key_cache.shape[2], query.shape[2], key_cache.shape[3])
    _checks.options(_PAGED, scale, sliding_window, causal, max_seq_len, mode)
    _checks.out_dtype(_PAGED, out_dtype)
    return launch(
        query, key_cache, value_cache, block_table, seq_lens, query_start_loc, None,
        scale=float(scale), sliding_window=sliding_window, causal=causal,
        max_seq_len=max_seq_len, mode=mode, out_dtype=out_dtype,
    )  # fmt: skip


def paged_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    max_seq_len: int | None = None,
    *,
    mode: str = "auto",
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One new token per sequence: :func:`paged_attention` with ``query_start_loc = arange``.

    Args:
        query: ``[num_seqs, num_heads, head_size]``, the token at position ``seq_lens[i] - 1``.
        key_cache: see :func:`paged_attention`.
        value_cache: see :func:`paged_attention`.
        block_table: see :func:`paged_attention`.
        seq_lens: see :func:`paged_attention`.
        scale: see :func:`paged_attention`.
        sliding_window: see :func:`paged_attention`.
        max_seq_len: see :func:`paged_attention`.
        mode: see :func:`paged_attention`.
        out_dtype: see :func:`paged_attention`.
    """
    _checks.tensor("paged_decode", "query", query, 3)
    _checks.tensor("paged_decode", "seq_lens", seq_lens, 1)
    if query.shape[0] != seq_lens.shape[0]:
        raise ValueError(
            f"paged_decode: query must have one row per sequence ({seq_lens.shape[0]}); "
            f"got {query.shape[0]}"
        )
    starts = torch.arange(seq_lens.shape[0] + 1, dtype=torch.int32, device=query.device)
    return paged_attention(
        query, key_cache, value_cache, block_table, seq_lens, starts, scale,
        sliding_window, True, max_seq_len, mode=mode, out_dtype=out_dtype,
    )  # fmt: skip


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
    sliding_window: int | None = None,
    max_seqlen_k: int | None = None,
    mode: str = "auto",
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Attention over packed sequences without a cache (the trainer's prefill), batch-invariant.

    Walks keys in the same chunks and tiles and folds them in the same order as
    :func:`paged_attention`, so the trainer's row for position ``p`` equals the rollout's decode
    (or prefill) row for ``p`` bitwise. Like flash-attn's varlen call, the queries of a sequence
    are its last ``q_len`` positions (``q_len == k_len`` for self-attention).

    Args:
        q: ``[total_q, num_heads, head_size]`` bf16/fp16/fp32, any strides.
        k: ``[total_k, num_kv_heads, head_size]``, q's dtype.
        v: like ``k``.
        cu_seqlens_q: ``[num_seqs + 1]`` int32 offsets of each sequence's queries.
        cu_seqlens_k: ``[num_seqs + 1]`` offsets of each sequence's keys (default: the query's).
        causal: queries see keys up to their own position only.
        scale: softmax scale (default ``head_size ** -0.5``).
        sliding_window: keys a query sees, itself included (``None``: all); needs ``causal``.
        max_seqlen_k: an upper bound of the key lengths (saves a sync on split launches).
        mode: ``"auto"``, ``"split"`` or ``"fused"`` (speed only; same bits).
        out_dtype: the output dtype (default ``q.dtype``).

    Returns:
        ``[total_q, num_heads, head_size]`` in ``out_dtype``.
    """
    _checks.tensor(_VARLEN, "q", q, 3)
    _checks.tensor(_VARLEN, "k", k, 3)
    _checks.tensor(_VARLEN, "v", v, 3)
    _checks.tensor(_VARLEN, "cu_seqlens_q", cu_seqlens_q, 1)
    _checks.float_like(_VARLEN, "q", q, "q", q)
    _checks.float_like(_VARLEN, "k", k, "q", q)
    _checks.float_like(_VARLEN, "v", v, "q", q)
    if v.shape != k.shape:
        raise ValueError(f"{_VARLEN}: v must have k's shape {tuple(k.shape)}; got {tuple(v.shape)}")
    _checks.index(_VARLEN, "cu_seqlens_q", cu_seqlens_q, None, q.device)
    if cu_seqlens_q.shape[0] < 1:
        raise ValueError(f"{_VARLEN}: cu_seqlens_q needs num_seqs + 1 >= 1 entries; got 0")
    cu_k = cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k
    _checks.tensor(_VARLEN, "cu_seqlens_k", cu_k, 1)
    _checks.index(_VARLEN, "cu_seqlens_k", cu_k, cu_seqlens_q.shape[0], q.device)
    _checks.heads(_VARLEN, q.shape[1], k.shape[1], q.shape[2], k.shape[2])
    scale = q.shape[2] ** -0.5 if scale is None else scale
    _checks.options(_VARLEN, scale, sliding_window, causal, max_seqlen_k, mode)
    _checks.out_dtype(_VARLEN, out_dtype)
    seq_lens = (cu_k[1:] - cu_k[:-1]).to(torch.int32)
    return launch(
        q, k, v, None, seq_lens, cu_seqlens_q, cu_k,
        scale=float(scale), sliding_window=sliding_window, causal=causal,
        max_seq_len=max_seqlen_k, mode=mode, out_dtype=out_dtype,
    )  # fmt: skip


_VARLEN_BWD = "varlen_attention_backward"


def varlen_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    grad_out: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    scale: float | None = None,
    max_seqlen: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of causal :func:`varlen_attention` (self-attention), deterministic run to run.

    Flash-style recomputation without atomics (:mod:`._backward`): every gradient element is
    summed by one program in a fixed order, so two runs give the same bits. The gradients are
    those of exact attention (not of the forward's exact bits), accumulated in fp32.

    Args:
        q: ``[T, num_heads, head_size]`` queries of the packed sequences (bf16/fp16/fp32).
        k: ``[T, num_kv_heads, head_size]`` keys (GQA: ``num_heads`` a multiple).
        v: like ``k``.
        out: ``[T, num_heads, head_size]``, the forward's output.
        grad_out: like ``out``, the gradient of the loss w.r.t. it.
        cu_seqlens: ``[num_seqs + 1]`` int32 offsets of the sequences, ``cu_seqlens[-1] == T``.
        scale: softmax scale (default ``head_size ** -0.5``).
        max_seqlen: the longest sequence (default: read from ``cu_seqlens``, one device sync).

    Returns:
        ``(dq, dk, dv)`` in the dtypes and shapes of ``q``, ``k``, ``v``.
    """
    from ._backward import launch_backward

    for name, t in (("q", q), ("k", k), ("v", v), ("out", out), ("grad_out", grad_out)):
        _checks.tensor(_VARLEN_BWD, name, t, 3)
        _checks.float_like(_VARLEN_BWD, name, t, "q", q)
    _checks.tensor(_VARLEN_BWD, "cu_seqlens", cu_seqlens, 1)
    if v.shape != k.shape:
        raise ValueError(
            f"{_VARLEN_BWD}: v must have k's shape {tuple(k.shape)}; got {tuple(v.shape)}"
        )
    for name, t in (("out", out), ("grad_out", grad_out)):
        if t.shape != q.shape:
            raise ValueError(
                f"{_VARLEN_BWD}: {name} must have q's shape {tuple(q.shape)}; got {tuple(t.shape)}"
            )
    if k.shape[0] != q.shape[0]:
        raise ValueError(
            f"{_VARLEN_BWD}: self-attention needs as many key rows as query rows; got "
            f"{k.shape[0]} and {q.shape[0]}"
        )
    _checks.index(_VARLEN_BWD, "cu_seqlens", cu_seqlens, None, q.device)
    if cu_seqlens.shape[0] < 1:
        raise ValueError(f"{_VARLEN_BWD}: cu_seqlens needs num_seqs + 1 >= 1 entries; got 0")
    _checks.heads(_VARLEN_BWD, q.shape[1], k.shape[1], q.shape[2], k.shape[2])
    scale = q.shape[2] ** -0.5 if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"{_VARLEN_BWD}: scale must be positive, got {scale}")
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
    elif max_seqlen < 0:
        raise ValueError(f"{_VARLEN_BWD}: max_seqlen must be >= 0, got {max_seqlen}")
    return launch_backward(q, k, v, out, grad_out, cu_seqlens, scale, max_seqlen)
