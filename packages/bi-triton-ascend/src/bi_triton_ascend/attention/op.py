"""The ir-dispatch op ``paged_attention`` and its native reference.

Declared here, next to its only provider so far, because ``ir-dispatch`` does not ship an
attention op; the schema is vLLM's paged layout (see :func:`paged_attention`). The native
implementation is a per-sequence PyTorch loop in fp32: readable, slow, and batch-variant across
query counts (the matmul and softmax kernels it calls are chosen from the sequence's shape, so a
decoded row and the same row prefilled may differ), which is why batch-invariant mode needs the
``triton`` provider.
"""

from __future__ import annotations

import torch

from ir_dispatch.ops.linalg import GEMM_VARIANT_ON
from ir_dispatch.registry import register_op


def reference_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    causal: bool = True,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Paged attention one sequence at a time in ``compute_dtype`` (fp32 native, fp64 tests).

    Args:
        query: ``[total_q, num_heads, head_size]``.
        key_cache: ``[num_blocks, block_size, num_kv_heads, head_size]``.
        value_cache: like ``key_cache``.
        block_table: ``[num_seqs, max_blocks]`` block ids.
        seq_lens: ``[num_seqs]`` KV lengths.
        query_start_loc: ``[num_seqs + 1]`` query offsets; queries are each sequence's last.
        scale: softmax scale.
        sliding_window: keys a query sees, itself included (``None``: all).
        causal: queries see keys up to their own position only.
        compute_dtype: the dtype of every intermediate.
        out_dtype: the result's dtype (default ``query.dtype``).

    Returns:
        ``[total_q, num_heads, head_size]`` in ``out_dtype``.
    """
    out_dtype = query.dtype if out_dtype is None else out_dtype
    out = torch.zeros(query.shape, dtype=out_dtype, device=query.device)
    block_size = key_cache.shape[1]
    group = query.shape[1] // key_cache.shape[2]
    starts = query_start_loc.tolist()
    for i, kv_len in enumerate(seq_lens.tolist()):
        q_beg, q_end = starts[i], starts[i + 1]
        if q_end == q_beg:
            continue
        blocks = block_table[i, : -(-kv_len // block_size)].long()
        k = key_cache[blocks].flatten(0, 1)[:kv_len].to(compute_dtype)
        v = value_cache[blocks].flatten(0, 1)[:kv_len].to(compute_dtype)
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        q = query[q_beg:q_end].to(compute_dtype)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        pos = torch.arange(kv_len - (q_end - q_beg), kv_len, device=query.device)[:, None]
        key = torch.arange(kv_len, device=query.device)[None, :]
        visible = key <= pos if causal else torch.ones_like(key <= pos)
        if sliding_window is not None:
            visible = visible & (key > pos - sliding_window)
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q_beg:q_end] = torch.einsum("hqk,khd->qhd", probs, v).to(out_dtype)
    return out


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return t.device.type == "meta" or is_fake(t)


@register_op(has_reduction=True, native_variant_on=GEMM_VARIANT_ON)
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
) -> torch.Tensor:
    """Varlen queries over vLLM's paged KV cache (decode, prefill, chunked prefill).

    Sequence ``i`` has ``seq_lens[i]`` keys; its queries ``query[query_start_loc[i]:
    query_start_loc[i+1]]`` are its last positions. ``query [total_q, num_heads, head_size]``,
    caches ``[num_blocks, block_size, num_kv_heads, head_size]``, ``block_table [num_seqs,
    max_blocks]``; GQA when ``num_heads`` is a multiple of ``num_kv_heads``. ``sliding_window``
    counts the keys a query sees, itself included; ``max_seq_len`` is an optional upper bound of
    ``seq_lens`` that providers may use to size grids without a sync.
    """
    if _is_fake(query):  # shape propagation (torch.compile, meta): no data to loop over
        return query.new_empty(query.shape)
    del max_seq_len
    return reference_attention(
        query, key_cache, value_cache, block_table, seq_lens, query_start_loc, scale,
        sliding_window, causal,
    )  # fmt: skip
